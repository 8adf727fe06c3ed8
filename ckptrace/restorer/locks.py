"""File locks back in each restored process (TASK_LOCKS), by injected fcntl/flock through the
image's fd, non-blocking: a lock someone else holds now (the original, dumped without --kill and
still running?) fails the restore with a clear message rather than hanging it."""

from __future__ import annotations

import errno
import os
import struct

from ..errors import CkptError, KernelError
from ..image.render import listed
from ..image.records import LOCK_FLOCK, LOCK_KINDS, LOCK_OFD, LOCK_POSIX
from ..kernel import procfs
from ..kernel.ptrace import Injector
from ..kernel.sysno import SYS_fcntl, SYS_flock

F_SETLK, F_OFD_SETLK = 6, 37
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
FLOCK = struct.Struct("<hh4xqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid
SEEK_SET = 0


def apply(inj: Injector, pid: int, locks: list[dict], host: int | None = None) -> None:
    """Take `locks` again in process `pid` (its host pid `host`, through which a failure names the
    file: the image's lock records carry fd numbers only)."""
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
            what = f"pid {pid} fd {fd}{_file(host, fd)}: {LOCK_KINDS.get(kind, kind)} lock"
            if -ret in (errno.EAGAIN, errno.EACCES):
                what += f" is held by {_holders(host, fd)}"
            raise KernelError(what, -ret)


def _file(host: int | None, fd: int) -> str:
    """ " (/the/file)": the file fd `fd` of `host` is open on, as its /proc link says."""
    if host is None:
        return ""
    try:
        return f" ({os.readlink(f'/proc/{host}/fd/{fd}')})"
    except OSError:
        return ""


def _holders(host: int | None, fd: int) -> str:
    """Who /proc/locks says holds a lock on that file (host pids), as far as it says: an OFD
    lock names no process (pid -1), and a flock the pid that took it, which may have gone
    since, leaving it to a child that inherited the file."""
    pids = []
    if host is not None:
        try:
            st = os.stat(f"/proc/{host}/fd/{fd}")
            pids = [p for p in procfs.lock_holders(st.st_dev, st.st_ino) if p != host]
        except (OSError, CkptError):
            pass
    if not pids:
        return "another process now (is the dumped original still running?)"
    return f"host pid {listed(pids)} now"
