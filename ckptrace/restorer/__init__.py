"""The pieces of `ckptrace restore`, one module per concern.

files   - every open file description of the image, created once in the controller
net     - the new network namespace, for an image whose init had its own
tree    - the process tree: clone3 with set_tid, run as Python in the new tasks before they stop
memory  - rebuilding an address space by syscall injection and process_vm_writev
threads - extra threads of a process, cloned inside it by injection
creds   - credentials, signal handlers, masks and pending signals
"""
