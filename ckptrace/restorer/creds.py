"""Credentials and signal state of restored tasks.

Signal handlers are installed from inside the new process (raw rt_sigaction: a handler address is
just a number there, its code arrives with the memory later). Masks, pending signals and
credentials are applied by the controller at the end, credentials last of all because the
injected clone3(set_tid) of threads needs the task's root capabilities.
"""

from __future__ import annotations

import ctypes
import os
import struct

from ..errors import KernelError
from ..kernel.ptrace import Injector, Tracee
from ..kernel.sys import libc

SYS_rt_sigaction = 13
SYS_setgroups = 116
SYS_setresuid = 117
SYS_setresgid = 119
SYS_tgkill = 234
SYS_prctl = 157
PR_SET_DUMPABLE = 4
SIGKILL, SIGSTOP = 9, 19


class _KSigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("restorer", ctypes.c_uint64), ("mask", ctypes.c_uint64)]


def install_sigactions(entries: list[dict]) -> None:
    """Install the image's kernel sigactions (entry i is signal i+1) in the calling process."""
    for i, e in enumerate(entries):
        sig = i + 1
        if sig in (SIGKILL, SIGSTOP):
            continue
        act = _KSigaction(e["handler"], e["flags"], e["restorer"], e["mask"])
        ctypes.set_errno(0)
        if libc.syscall(ctypes.c_long(SYS_rt_sigaction), ctypes.c_long(sig), ctypes.byref(act),
                        ctypes.c_void_p(0), ctypes.c_long(8)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"rt_sigaction({sig}): {os.strerror(err)}")


def _check(ret: int, what: str) -> int:
    if -4096 < ret < 0:
        raise KernelError(what, -ret)
    return ret


def apply_creds(inj: Injector, creds: dict, groups: list[int]) -> None:
    """setgroups, setresgid, setresuid inside the task, when they differ from ours (root's).

    Capabilities then follow the kernel's uid rules (dropping to non-root clears them); an
    image whose capability sets differ from what those rules give is restored with the rules'.
    """
    if (creds["uid"], creds["euid"], creds["suid"], creds["gid"], creds["egid"], creds["sgid"]) == \
            (os.getuid(), os.geteuid(), os.getuid(), os.getgid(), os.getegid(), os.getgid()) \
            and sorted(groups) == sorted(os.getgroups()):
        return
    tid = inj.t.tid
    with inj.scratch(4 * max(1, len(groups))) as (addr, mem):
        mem.seek(addr)
        mem.write(struct.pack(f"<{len(groups)}I", *groups))
        _check(inj.syscall(SYS_setgroups, len(groups), addr), f"setgroups in {tid}")
    _check(inj.syscall(SYS_setresgid, creds["gid"], creds["egid"], creds["sgid"]), f"setresgid in {tid}")
    _check(inj.syscall(SYS_setresuid, creds["uid"], creds["euid"], creds["suid"]), f"setresuid in {tid}")


def set_dumpable(inj: Injector, dumpable: int) -> None:
    """PR_SET_DUMPABLE after the credentials: a uid change resets it (commit_creds). Only 0 and 1
    can be set; 2 (suid_dumpable's "root only") stays what the kernel gives."""
    if dumpable in (0, 1):
        _check(inj.syscall(SYS_prctl, PR_SET_DUMPABLE, dumpable), f"prctl(PR_SET_DUMPABLE) in {inj.t.tid}")


def raise_pending(host_tgid: int, host_tid: int, thread_pending: int, shared_pending: int | None) -> None:
    """Queue the image's pending signals again (standard signals only hold one instance anyway)."""
    for sig in range(1, 65):
        bit = 1 << (sig - 1)
        if sig in (SIGKILL, SIGSTOP):
            continue
        if thread_pending & bit:
            _check(-ctypes.get_errno() if libc.syscall(ctypes.c_long(SYS_tgkill), ctypes.c_long(host_tgid),
                                                       ctypes.c_long(host_tid), ctypes.c_long(sig)) < 0 else 0,
                   f"tgkill({host_tid}, {sig})")
        if shared_pending is not None and shared_pending & bit:
            os.kill(host_tgid, sig)


def set_mask(t: Tracee, blocked: int) -> None:
    t.set_sigmask(blocked & ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1))))
