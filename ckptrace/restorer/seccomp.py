"""Seccomp state back in each restored thread: no_new_privs, then its filters, oldest first.

Installed by injected calls once the process's threads exist (a thread cloned after its leader
got filters would inherit them and end up with the chain twice) and before its credentials are
lowered (installing a filter without no_new_privs needs CAP_SYS_ADMIN). The controller holds every
task with PTRACE_O_SUSPEND_SECCOMP, so the calls it injects afterwards do not meet the filters;
they apply from the moment the tasks are let go.
"""

from __future__ import annotations

import struct

from ..errors import Unsupported
from ..image.records import PAGE_SIZE
from ..kernel.prctl import PR_SET_NO_NEW_PRIVS
from ..kernel.ptrace import Injector
from .memory import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, check
from ..kernel.sysno import SYS_mmap, SYS_munmap, SYS_prctl, SYS_seccomp

SECCOMP_SET_MODE_FILTER = 1
SOCK_FPROG = struct.Struct("<H6xQ")  # struct sock_fprog {unsigned short len; struct sock_filter *filter}


def apply(inj: Injector, task) -> None:
    sc = task.seccomp
    if sc is None:
        return
    tid = inj.t.tid
    if sc["no_new_privs"]:
        check(inj.syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), f"prctl(PR_SET_NO_NEW_PRIVS) in {tid}")
    if not task.seccomp_filters:
        return
    if not inj.t.seccomp_suspended:
        raise Unsupported(f"thread {task.tid} has seccomp filters, and this kernel would not suspend "
                          "them for ptrace (PTRACE_O_SUSPEND_SECCOMP): the restore's own calls could trip them")
    # A filter may be 32 KiB: a mapping of its own rather than the task's stack.
    size = -(-(SOCK_FPROG.size + max(len(insns) for _, insns in task.seccomp_filters)) // PAGE_SIZE) * PAGE_SIZE
    addr = check(inj.syscall(SYS_mmap, 0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                 f"mmap for seccomp filters in {tid}")
    try:
        with open(f"/proc/{tid}/mem", "r+b", buffering=0) as mem:
            for flags, insns in task.seccomp_filters:
                mem.seek(addr)
                mem.write(SOCK_FPROG.pack(len(insns) // 8, addr + SOCK_FPROG.size) + insns)
                check(inj.syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, addr),
                      f"seccomp(SECCOMP_SET_MODE_FILTER) in {tid}")
    finally:
        inj.syscall(SYS_munmap, addr, size)
