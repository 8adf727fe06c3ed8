"""Pseudo-terminals whose master the image holds: made again with the same index and state.

A pty's pair is made by opening /dev/ptmx, which takes the lowest free index of its devpts: the
controller opens it until TIOCGPTN gives the image's index, keeping the lower ones open meanwhile
(so that they are not handed out again) and closing them after. An index above the wanted one
means someone else holds it: it is tried again for up to 3 s (through a pipe, the original is
killed only once restore has read the image, and its pty goes with it), then refused by name.

The slave fds of such a pair are opened from the master (TIOCGPTPEER), not by path, so they are
the new pair's whatever devpts the path would lead to. The controller keeps one more slave fd
per pair (FileSet.extra, so every restored process holds it until its memory is rebuilt): the
session leader whose controlling terminal the pty was makes it so with it (TIOCSCTTY, in
tree._become right after its setsid, before it forks the rest of its session, which inherits the
terminal), and the foreground group is set through it once every group exists (set_foreground,
injected into the leader: only a member of the session may).

An fd that was opened as /dev/tty (DEVTTY) gets the terminal it stood for, not the restorer's:
a slave of its pair when the image holds that pty, else that terminal's node (/dev/pts/N), checked
like any terminal of the outside world; only a terminal with no such node (a console, a serial
line) is reopened as /dev/tty, which must then be the controller's controlling terminal. A
terminal of the outside world is reopened by path, once its node is found to be the terminal the
dump saw: a devpts node's ctime is set when its pty is made, so a later pty that was given the
same number has another (outside_problem). A hung-up file (HUNGUP) is made again as one: a slave
of a new pair, with the same index when it is free, whose master is then closed (hung_up_slave).
"""

from __future__ import annotations

import fcntl
import os
import re
import time

from ..errors import Unsupported
from ..image.reader import File, Image
from ..image.render import shown_path
from ..image.records import (TTY_DEVTTY, TTY_EXCLUSIVE, TTY_HUNGUP, TTY_LOCKED, TTY_PACKET, TTY_STATE,
                             FileType, RecType)
from ..kernel import procfs
from ..kernel.sys import int_arg, ioctl_int
from ..kernel.sysno import SYS_ioctl
from ..kernel.ttyio import (PTS_MAJORS, TCSETS2, TIOCEXCL, TIOCGDEV, TIOCGPTN, TIOCGPTPEER, TIOCPKT,
                           TIOCSCTTY, TIOCSPGRP, TIOCSPTLCK, TIOCSWINSZ, decode_dev, termios_raw, winsize_raw)

INDEX_WAIT_S = 3.0  # how long an index held by someone else is waited for
_PTS_PATH = re.compile(r".*/pts/(\d+)")


def tty_record(obj: File):
    return next((r for r in obj.extra if r.type == RecType.FILE_TTY), None)


def masters(img: Image) -> dict[int, File]:
    """The image's pty masters by index (the first, should two devpts instances give one index twice)."""
    out: dict[int, File] = {}
    for obj in img.objects.values():
        if isinstance(obj, File) and obj.ftype == FileType.TTY:
            rec = tty_record(obj)
            if rec is not None and rec.fields["is_master"]:
                out.setdefault(rec.fields["index"], obj)
    return out


def hung_up(obj: File) -> bool:
    rec = tty_record(obj)
    return rec is not None and bool(rec.fields["flags"] & TTY_HUNGUP)


def devtty_pts(f: dict) -> int | None:
    """For a /dev/tty fd's record, the index of the pty it stood for (None: not a pty)."""
    if not f["flags"] & TTY_DEVTTY or decode_dev(f["dev"])[0] not in PTS_MAJORS:
        return None
    return f["index"]


def paired_slave(obj: File, pairs: dict[int, File]) -> int | None:
    """The index of this pty slave's pair when the image holds its master, else None (a terminal
    of the outside world, reopened by path). An fd of /dev/tty that stood for that pty is one."""
    rec = tty_record(obj)
    if rec is None or rec.fields["is_master"] or not obj.name or rec.fields["flags"] & TTY_HUNGUP:
        return None
    if rec.fields["flags"] & TTY_DEVTTY:
        index = devtty_pts(rec.fields)
        return index if index in pairs else None
    m = _PTS_PATH.fullmatch(obj.name)
    if m is None or int(m.group(1)) != rec.fields["index"] or rec.fields["index"] not in pairs:
        return None
    return rec.fields["index"]


def problems(img: Image, users) -> list[str]:
    """Why the image's pty masters cannot be made again (empty when they can). `users(objref)`
    names a file object as the user finds it ("pid 2 fd 3")."""
    out = []
    seen: dict[int, int] = {}
    procs = {e["pid"]: e for e in img.tree if e["pid"] == e["tgid"]}
    for obj in img.objects.values():
        if not isinstance(obj, File) or obj.ftype != FileType.TTY:
            continue
        rec = tty_record(obj)
        if rec is None:
            out.append(f"{users(obj.objref)}: a terminal ({shown_path(obj.name) if obj.name else 'no path'}) without its FILE_TTY record")
            continue
        f = rec.fields
        if not f["is_master"]:
            continue
        where = f"{users(obj.objref)}: the pty master of /dev/pts/{f['index']}"
        if not f["flags"] & TTY_STATE:
            out.append(f"{where}: the image holds no terminal state for it (an image of an older ckptrace)")
        if f["index"] in seen:
            out.append(f"{where}: two pty masters with index {f['index']} (from two devpts instances), "
                       "which one devpts cannot hold")
        seen[f["index"]] = obj.objref
        sid = f["sid"]
        if sid:
            t = img.task(sid)
            e = procs.get(sid)
            if e is None or e["sid"] != sid or t is None or t.zombie:
                out.append(f"{where}: it is the controlling terminal of session {sid}, whose leader is not "
                           "a live process of the image")
    return out


def outside_path(img: Image, obj: File) -> str:
    """Where a terminal of the outside world is reopened: its path, or for a /dev/tty fd that
    stood for a pty, that pty's node (/dev/pts/N, as the dumper saw it)."""
    index = devtty_pts(tty_record(obj).fields) if tty_record(obj) is not None else None
    return img.at(f"/dev/pts/{index}" if index is not None else obj.name)


def outside_problem(img: Image, obj: File, users: str) -> str | None:
    """Why a terminal of the outside world (neither a slave of the image's pairs nor hung up)
    cannot be reopened as the terminal it was, or None. Its node must exist; a devpts node must
    be the same one (ctime: a pty given that number since has another, and the restored
    programs would read and write a stranger's terminal); a /dev/tty fd with no node to open
    must name the controller's own controlling terminal."""
    rec = tty_record(obj)
    if rec is None:
        return None  # (tty.problems names it)
    f = rec.fields
    path = outside_path(img, obj)
    devtty = f["flags"] & TTY_DEVTTY and devtty_pts(f) is None
    if devtty:
        return _devtty_problem(users, f)
    try:
        st = os.stat(path)
    except OSError:
        return f"file '{shown_path(path)}' (object {obj.objref}) does not exist"
    if os.major(st.st_rdev) in PTS_MAJORS and f["ctime_ns"] and st.st_ctime_ns != f["ctime_ns"]:
        return (f"{users}: {shown_path(path)} is not the terminal the dump saw: its node was made or changed at "
                f"{_when(st.st_ctime_ns)}, the dumped one at {_when(f['ctime_ns'])} (that pty was closed and "
                "its number given to another, or its mode or owner changed since, as by mesg); the "
                "restored programs would use a terminal that is not theirs")
    return None


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) + f".{ns % 1_000_000_000 // 1_000_000:03d}"


def _devtty_problem(users: str, f: dict) -> str | None:
    """A /dev/tty fd that stood for a terminal with no node to open by (not a pty) is reopened
    as /dev/tty: the controller's controlling terminal must be that one."""
    want = decode_dev(f["dev"])
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        return (f"{users}: /dev/tty, which stood for the terminal {want[0]}:{want[1]}, cannot be opened again "
                f"here ({os.strerror(exc.errno)}: restore has no controlling terminal); run restore on that "
                "terminal")
    try:
        got = decode_dev(ioctl_int(fd, TIOCGDEV, unsigned=True))
    except OSError:
        got = None
    finally:
        os.close(fd)
    if got != want:
        return (f"{users}: /dev/tty stood for the terminal {want[0]}:{want[1]}, and restore's controlling "
                f"terminal is {'another' if got is None else f'{got[0]}:{got[1]}'}; run restore on that terminal")
    return None


def open_master(path: str, flags: int, index: int, wait: float = INDEX_WAIT_S) -> int:
    """A new pty master of `index` (see the module's doc), locked as /dev/ptmx leaves it."""
    deadline = time.monotonic() + wait
    while True:
        spare: list[int] = []
        try:
            while True:
                fd = os.open(path, flags)
                got = ioctl_int(fd, TIOCGPTN, unsigned=True)
                if got == index:
                    return fd
                spare.append(fd)
                if got > index:
                    break  # taken: the allocator hands out the lowest free index
        finally:
            for fd in spare:
                os.close(fd)
        if time.monotonic() >= deadline:
            raise Unsupported(f"pty {index} (/dev/pts/{index}) is in use{_holder(index)}: the image's pty "
                              "must come back with its index, and that one is taken")
        time.sleep(0.05)


def _holder(index: int) -> str:
    """ ", held by host pid N" for whoever has /dev/pts/`index` open, when someone is found."""
    try:
        st = os.stat(f"/dev/pts/{index}")
    except OSError:
        return ""
    pids = procfs.holders(st.st_dev, st.st_ino, name=str(index))
    return f" (held by host pid {pids[0]})" if pids else ""


def apply_state(master: int, f: dict) -> None:
    """Unlocked (its slaves are opened next: finish locks it again if it was), then termios,
    window size and packet mode, through the master (the first two are the slave's)."""
    fcntl.ioctl(master, TIOCSPTLCK, int_arg(0))
    if not f["flags"] & TTY_STATE:
        return
    fcntl.ioctl(master, TCSETS2, termios_raw(f))
    fcntl.ioctl(master, TIOCSWINSZ, winsize_raw(f))
    if f["flags"] & TTY_PACKET:
        fcntl.ioctl(master, TIOCPKT, int_arg(1))


def open_slave(master: int, flags: int) -> int:
    """A slave fd of the pair, opened through its master; never our controlling terminal."""
    return fcntl.ioctl(master, TIOCGPTPEER, flags | os.O_NOCTTY)


def hungup_master(index: int) -> int:
    """An unlocked master of a new pair for hung-up slave files: with `index` when it is free (the
    original held it until its last hung-up file was closed), else the lowest free one (nothing
    but the /proc link shows a hung-up file's index). Its caller opens the slaves through it and
    closes it, which hangs them up."""
    try:
        master = open_master("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC, index, wait=0)
    except Unsupported:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, int_arg(0))
    return master


def finish(master: int, keeper: int, f: dict) -> None:
    """What must wait until every slave fd is open: exclusive mode (which refuses later opens but
    by CAP_SYS_ADMIN), and the lock (which refuses them all)."""
    if f["flags"] & TTY_EXCLUSIVE:
        fcntl.ioctl(keeper, TIOCEXCL)
    if f["flags"] & TTY_LOCKED:
        fcntl.ioctl(master, TIOCSPTLCK, int_arg(1))


def queue_note(users: str, f: dict) -> str | None:
    what = []
    if f["outq"]:
        what.append(f"{f['outq']} bytes of output its master's readers had not read")
    if f["inq"]:
        what.append(f"{f['inq']} bytes of input its slave's readers had not read")
    if not what:
        return None
    return (f"{users}: pty {f['index']} comes back without the {' and '.join(what)} at the dump (the image "
            "does not hold a terminal's queued bytes)")


def set_foreground(img: Image, files, injectors, groups_alive) -> list[str]:
    """The foreground process group of each pty that was a controlling terminal, set by its
    session leader (injected TIOCSPGRP through the slave fd it holds, FileSet.ctty) once every
    group exists. `groups_alive` is the set of process groups the restored processes are in.
    Returns notes for groups that have no member left to be made again."""
    from .memory import check

    notes = []
    for index, obj in masters(img).items():
        f = tty_record(obj).fields
        sid, pgrp = f["sid"], f["pgrp"]
        if not sid or not pgrp or pgrp == sid or index not in files.ctty:
            continue  # (TIOCSCTTY made the leader's own group the foreground one)
        if pgrp not in groups_alive:
            notes.append(f"pty {index}: its foreground process group {pgrp} had no member left at the dump; "
                         f"the session leader's group {sid} is in the foreground instead")
            continue
        inj = injectors[sid]
        with inj, inj.scratch(4) as (addr, mem):
            mem.seek(addr)
            mem.write(int_arg(pgrp))
            ret = inj.syscall(SYS_ioctl, files.ctty[index], TIOCSPGRP, addr)
        check(ret if ret < 0 else 0, f"ioctl(TIOCSPGRP, {pgrp}) on pty {index} in {sid}")
    return notes


def set_ctty(fd: int) -> None:  # pragma: no cover - in a restored session leader (tree._become)
    fcntl.ioctl(fd, TIOCSCTTY, 0)

