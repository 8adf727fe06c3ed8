"""Extra threads of a restored process, cloned inside it by an injected clone3.

The leader is seized with PTRACE_O_TRACECLONE, so each new thread starts traced and stopped in
a ptrace event-stop before it runs a single instruction; the controller then gives it the
image's registers. set_tid makes the thread id the image's.
"""

from __future__ import annotations

import errno
import os
import struct

from ..errors import KernelError
from ..kernel import procfs
from ..kernel.ptrace import PTRACE_EVENT_STOP, Injector, Tracee
from .memory import check
from ..kernel.sysno import SYS_clone3

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM = 0x10000, 0x40000
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
CLONE_ARGS = struct.Struct("<11Q")


def clone_thread(inj: Injector, host_tgid: int, tid: int, known: dict[int, int] | None = None) -> Tracee:
    """Create thread `tid` (in-namespace) in the stopped process; return it seized and stopped.
    `known`: the process's threads already looked at (see host_tid_of), kept across the calls for
    one process."""
    with inj.scratch(CLONE_ARGS.size + 8) as (addr, mem):
        mem.seek(addr)
        # stack 0: the thread starts on the caller's stack pointer, but never runs on it: its
        # registers are replaced while it sits in its first stop.
        mem.write(CLONE_ARGS.pack(THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, addr + CLONE_ARGS.size, 1, 0))
        mem.write(struct.pack("<q", tid))
        got = check(inj.syscall(SYS_clone3, addr, CLONE_ARGS.size), f"clone3 thread {tid} in {host_tgid}")
    if got != tid:
        raise KernelError(f"clone3 in {host_tgid} made thread {got}, wanted {tid}", errno.EEXIST)
    host_tid = host_tid_of(host_tgid, tid, known=known)
    t = Tracee(host_tid)
    while True:
        status = t.wait()
        if os.WIFSTOPPED(status) and status >> 16 == PTRACE_EVENT_STOP:
            break
    t.stopped = True
    return t


def host_tid_of(host_tgid: int, tid: int, proc: str = "/proc", known: dict[int, int] | None = None) -> int:
    """The host tid of in-namespace thread `tid` of the process (NSpid's last field). `known`
    (host tid -> tid) keeps what earlier calls read: a process's threads made one after another
    read one status each, not all of them each time (2 500 threads took 3 million status reads,
    minutes)."""
    seen = {} if known is None else known
    for host, nspid in seen.items():
        if nspid == tid:
            return host
    for host in map(int, os.listdir(f"{proc}/{host_tgid}/task")):
        if host in seen:
            continue
        nspid = seen[host] = procfs.status(host_tgid, host, proc).nspid[-1]
        if nspid == tid:
            return host
    raise KernelError(f"thread {tid} of {host_tgid} did not appear", errno.ESRCH)
