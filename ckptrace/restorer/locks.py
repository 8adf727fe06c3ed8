"""File locks back in each restored process (TASK_LOCKS), by injected fcntl/flock through the
image's fd, non-blocking: a lock someone else holds now (the original, dumped without --kill and
still running?) fails the restore with a clear message rather than hanging it."""

from __future__ import annotations

import errno
import struct

from ..errors import KernelError
from ..image.records import LOCK_FLOCK, LOCK_KINDS, LOCK_OFD, LOCK_POSIX
from ..kernel.ptrace import Injector
from ..kernel.sysno import SYS_fcntl, SYS_flock

F_SETLK, F_OFD_SETLK = 6, 37
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
FLOCK = struct.Struct("<hh4xqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid
SEEK_SET = 0


def apply(inj: Injector, pid: int, locks: list[dict]) -> None:
    for lk in locks:
        kind, fd = lk["kind"], lk["fd"]
        if kind == LOCK_FLOCK:
            ret = inj.syscall(SYS_flock, fd, (LOCK_EX if lk["type"] else LOCK_SH) | LOCK_NB)
        elif kind in (LOCK_POSIX, LOCK_OFD):
            with inj.scratch(FLOCK.size) as (addr, mem):
                mem.seek(addr)
                mem.write(FLOCK.pack(lk["type"], SEEK_SET, lk["start"], lk["length"], 0))
                ret = inj.syscall(SYS_fcntl, fd, F_SETLK if kind == LOCK_POSIX else F_OFD_SETLK, addr)
        else:
            raise KernelError(f"pid {pid} fd {fd}: lock kind {kind} is not one ckptrace knows", errno.EINVAL)
        if -4096 < ret < 0:
            what = f"pid {pid} fd {fd}: {LOCK_KINDS.get(kind, kind)} lock"
            if -ret in (errno.EAGAIN, errno.EACCES):
                what += " is held by another process now (is the dumped original still running?)"
            raise KernelError(what, -ret)
