"""Terminals: FILE_TTY {index, is_master, session, foreground group, and a pty's state}.

index is the pts number (for a /dev/ptmx master, fdinfo's tty-index); session and foreground
process group are asked of the tty itself and given as pids inside the namespace (0 when the
tty is nobody's controlling terminal or they live outside the namespace). The kernel answers
TIOCGSID/TIOCGPGRP through a slave only to a member of the session it controls, which the dumper
is not, but through the master to anyone: a master's record has them, a slave's mostly 0.

A pty's state (flags, termios, window size) is the slave's: termios and window size read through
the master are the slave's, lock and packet mode live in the master, exclusive mode in the slave
(read through a slave fd some task of the namespace holds). Bytes queued in either direction
cannot be read without consuming them (a tty has no peek): only their counts are recorded; a
dump says so, and `--kill` refuses (check_kill), since the namespace would lose them for good.

Every record also names the terminal: its device number and its node's ctime (a devpts node's is
set when the pty is made, and a later pty given the same number has another: restore tells a
terminal of the outside world from its successor by it). An fd opened as /dev/tty (5:0) is asked
which terminal it stands for (TIOCGDEV): the record says DEVTTY, with that terminal's index and
device number, so that restore gives it the same terminal rather than whatever /dev/tty would
name for the restorer. A hung-up file (a pty slave whose master was closed, whose node is gone:
"/dev/pts/N (deleted)"; or any terminal file after a vhangup) answers every ioctl with EIO and
has no state: its record says HUNGUP, and restore makes a hung-up file again.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..image.records import (TTY_DEVTTY, TTY_EXCLUSIVE, TTY_HUNGUP, TTY_LOCKED, TTY_PACKET, TTY_STATE,
                             RecType)
from ..kernel.sys import ioctl_int
from ..kernel.ttyio import (PTS_MAJORS, TCGETS2, TERMIOS2, TIOCGDEV, TIOCGEXCL, TIOCGPGRP, TIOCGPKT, TIOCGPTLCK,
                           TIOCGPTPEER, TIOCGSID, TIOCGWINSZ, TIOCINQ, WINSIZE, decode_dev, encode_dev, is_devtty,
                           is_master, is_pts, pts_index, termios_fields, winsize_fields)
from .context import WITHOUT_KILL, DumpContext, kill_refused


def _hung_up(fd: int) -> bool:
    """Whether a terminal file was hung up: every ioctl but TIOCSPGRP then fails with EIO (a
    live terminal answers TIOCGWINSZ, a pty master too)."""
    try:
        fcntl.ioctl(fd, TIOCGWINSZ, bytes(WINSIZE.size))
    except OSError as exc:
        return exc.errno == errno.EIO
    return False


def _devpts_ctime(index: int, dev: int) -> int:
    """st_ctime_ns of /dev/pts/`index` when that node is the terminal `dev`, else 0 (a terminal of
    another devpts instance, or gone)."""
    try:
        st = os.stat(f"/dev/pts/{index}")
    except OSError:
        return 0
    return st.st_ctime_ns if encode_dev(os.major(st.st_rdev), os.minor(st.st_rdev)) == dev else 0


def _ioctl_int(fd: int, req: int) -> int | None:
    try:
        return ioctl_int(fd, req)
    except OSError:
        return None


def _ioctl_pid(fd: int, req: int) -> int:
    return _ioctl_int(fd, req) or 0


def note_slave(ctx: DumpContext, pid: int, fd: int, st: os.stat_result) -> None:
    """Remember a task of the namespace holding a pty slave (check_fds meets every fd first): the
    master's record reads the slave's exclusive mode and input queue through it."""
    if is_pts(st):
        ctx.pty_slaves.setdefault((st.st_dev, st.st_rdev), (pid, fd))


def _slave_key(master: int) -> tuple[int, int] | None:
    """(st_dev, st_rdev) of a master's slave, found without opening it (an O_PATH open of the
    peer does not run the tty's open: nothing changes for the pty)."""
    try:
        peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_PATH | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(peer)
        return st.st_dev, st.st_rdev
    finally:
        os.close(peer)


def _state(fd: int, master: bool) -> dict:
    """The pty's termios, window size, lock and packet mode, and the queued bytes on `fd`'s side."""
    out: dict = {}
    try:
        t = fcntl.ioctl(fd, TCGETS2, bytes(TERMIOS2.size))
        ws = fcntl.ioctl(fd, TIOCGWINSZ, bytes(WINSIZE.size))
    except OSError:
        return out  # (not a terminal we can ask: no state)
    out.update(termios_fields(t), **winsize_fields(ws))
    flags = TTY_STATE
    if master:
        flags |= TTY_LOCKED if _ioctl_int(fd, TIOCGPTLCK) else 0
        flags |= TTY_PACKET if _ioctl_int(fd, TIOCGPKT) else 0
        out["outq"] = _ioctl_int(fd, TIOCINQ) or 0
    else:
        flags |= TTY_EXCLUSIVE if _ioctl_int(fd, TIOCGEXCL) else 0
        out["inq"] = _ioctl_int(fd, TIOCINQ) or 0
    out["flags"] = flags
    return out


def dump(ctx: DumpContext, ref: int, o) -> None:
    from .files import _ns_pgid, grab, write_file_head

    rdev = o.st.st_rdev
    master = is_master(o.st)
    if master:
        index = int(o.info.extra.get("tty-index", "0"))
    elif is_pts(o.st):
        index = pts_index(os.major(rdev), os.minor(rdev))
    else:
        index = os.minor(rdev)
    state: dict = {}
    dev, ctime = encode_dev(os.major(rdev), os.minor(rdev)), o.st.st_ctime_ns
    with grab(o.pid, o.fd) as fd:
        sid, pgrp = _ioctl_pid(fd, TIOCGSID), _ioctl_pid(fd, TIOCGPGRP)
        if not master and _hung_up(fd):
            # (nothing to ask it: a hung-up file has no terminal behind it any more)
            state = dict(flags=TTY_HUNGUP)
        elif is_devtty(o.st):
            real = _ioctl_int(fd, TIOCGDEV)
            if real is not None:  # (None: an older kernel; kept as a plain device node)
                dev, (major, minor) = real & 0xffffffff, decode_dev(real & 0xffffffff)
                index = pts_index(major, minor) if major in PTS_MAJORS else minor
                ctime = _devpts_ctime(index, dev) if major in PTS_MAJORS else 0
                state = _state(fd, False) if major in PTS_MAJORS else {}
                state["flags"] = state.get("flags", 0) | TTY_DEVTTY
        elif master:
            state = _state(fd, True)
            key = _slave_key(fd)
            holder = ctx.pty_slaves.get(key) if key else None
            if holder is not None and state:
                with grab(*holder) as sfd:
                    slave = _state(sfd, False)
                state["flags"] |= slave.get("flags", 0) & TTY_EXCLUSIVE
                state["inq"] = slave.get("inq", 0)
        elif is_pts(o.st):
            state = _state(fd, False)
    fields = dict(index=index, is_master=int(master), sid=ctx.ns_pid.get(sid, 0),
                  pgrp=(ctx.ns_pid.get(pgrp) or _ns_pgid(ctx, pgrp)) if pgrp else 0, dev=dev, ctime_ns=ctime,
                  **state)
    write_file_head(ctx, ref, o.kind, o.info.flags, 0, ctx.path(o.target))
    ctx.w.record(RecType.FILE_TTY, fields)
    if master and (state.get("inq") or state.get("outq")):
        from .files import _where

        what = []
        if state.get("outq"):
            what.append(f"{state['outq']} bytes of output its master's readers had not read")
        if state.get("inq"):
            what.append(f"{state['inq']} bytes of input its slave's readers had not read")
        ctx.pty_queued.append(f"{_where(ctx, o.pid)} fd {o.fd}: pty {index} (/dev/pts/{index}) held "
                              f"{' and '.join(what)}, which the image does not keep (a terminal's queues "
                              "cannot be read without taking them)")


def check_kill(ctx: DumpContext, ns: int) -> None:
    """Refuse `--kill` when a pty held bytes nobody had read: a restore would come back without them."""
    if ctx.pty_queued:
        raise kill_refused(ns, "; ".join(ctx.pty_queued), f"dump again once they are read ({WITHOUT_KILL})",
                           transient=True)
