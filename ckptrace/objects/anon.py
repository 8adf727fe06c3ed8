"""The anon-inode kinds, all read from /proc/PID/fdinfo: eventfd (counter, semaphore mode),
epoll (interest list: target fd, events, data), timerfd (clock, remaining time, interval, ticks),
signalfd (mask) and inotify (watches)."""

from __future__ import annotations

import ctypes
import os
import struct

from ..errors import Unsupported
from ..image.records import INOTIFY_WATCH, FileType, RecType
from ..kernel import procfs
from ..kernel.sysno import SYS_open_by_handle_at
from .context import DumpContext

EFD_SEMAPHORE = 1


def _watch_path(ctx: DumpContext, pid: int, w: dict, mounts: list) -> str:
    """The watched inode's path. The kernel keeps only a file handle (fdinfo `f_handle`), so open
    it with open_by_handle_at against a mount of the same device and read the resulting link.
    Empty when the inode cannot be found (deleted, or no mount of that device is visible)."""
    import ctypes
    import os

    from ..errors import CkptError
    from ..kernel.sys import syscall

    if not w["f_handle"]:
        return ""
    major, minor = w["sdev"] >> 20, w["sdev"] & 0xFFFFF
    mnt = next((m for m in mounts if m.dev == (major, minor)), None)
    if mnt is None:
        return ""
    handle = bytes.fromhex(w["f_handle"])
    fh = ctypes.create_string_buffer(struct.pack("<Ii", len(handle), w["fhandle_type"]) + handle)
    try:
        # not O_PATH: open_by_handle_at rejects an O_PATH mount fd with EBADF
        mfd = os.open(f"{ctx.proc}/{pid}/root{mnt.mountpoint}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        fd = syscall(SYS_open_by_handle_at, mfd, ctypes.addressof(fh), os.O_PATH | os.O_CLOEXEC,
                     what="open_by_handle_at")
    except CkptError:
        return ""
    finally:
        os.close(mfd)
    try:
        return ctx.path(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def _inotify_payload(ctx: DumpContext, pid: int, watches) -> bytes:
    mounts = procfs.mountinfo(pid, ctx.proc) if watches else []
    out = bytearray()
    for w in watches:
        # {s32 wd, u32 mask, u64 ino, u32 dev, cstring path}, packed (records.inotify_watches)
        path = _watch_path(ctx, pid, w, mounts)
        out += INOTIFY_WATCH.pack(w["wd"], w["mask"], w["ino"], w["sdev"])
        out += path.encode("utf-8", "surrogateescape") + b"\0"
    return bytes(out)


ITIMERSPEC_SIZE = 32  # struct itimerspec: it_interval {sec, nsec}, it_value {sec, nsec}
TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 1, 2
CLOCK_REALTIME, CLOCK_REALTIME_ALARM = 0, 8
NS = 1_000_000_000


def abs_realtime(state: dict[str, int]) -> bool:
    """An armed timerfd set with TFD_TIMER_ABSTIME on a wall clock: its deadline is a date, which
    the image keeps as such (FILE_TIMERFD value = deadline - HEADER.time), not as the time left."""
    return bool(state["settime_flags"] & TFD_TIMER_ABSTIME) and state["clockid"] in (CLOCK_REALTIME, CLOCK_REALTIME_ALARM) \
        and (state["value_sec"], state["value_nsec"]) != (0, 0)


def timerfd_state(ctx: DumpContext, o) -> dict[str, int]:
    """A timerfd's FILE_TIMERFD fields, exact for a periodic timer nobody has read.

    When a periodic timer expires, the kernel counts one tick and stops the hrtimer; the periods
    missed after that are added to `ticks` (and the timer re-armed) only by read(2), which also
    consumes them, or by timerfd_gettime(2), which does not (fs/timerfd.c: if expired && interval,
    ticks += hrtimer_forward_now() - 1; restart). Until then fdinfo shows ticks 1 and it_value 0,
    and a restore from that would lose every period since the first. So timerfd_gettime runs
    first, on a pidfd_getfd duplicate of the task's open file (the same timerfd_ctx; nothing
    injected, the task's registers and stack untouched), then fdinfo is read. A later read(2)
    by the task returns the same total either way, and a one-shot or disarmed timer is left as
    it is. If the timer expires again between the two calls (a very short interval), fdinfo shows
    it_value 0 again: retry, so the image has the next expiration rather than none.

    fdinfo gives the time left whatever the flags. For a TFD_TIMER_ABSTIME timer on
    CLOCK_REALTIME(_ALARM) the deadline is a wall-clock date that must not move by the time the
    namespace spent dumped: CLOCK_REALTIME is read on either side of the fdinfo read and the
    deadline (midpoint + time left) stored as nanoseconds after HEADER.time (ctx.header_time),
    which restore adds back. The record keeps its size and fields."""
    import time

    from ..kernel.sys import syscall
    from ..kernel.sysno import SYS_timerfd_gettime
    from .files import grab

    state = procfs.timerfd_state(o.info)
    with grab(o.pid, o.fd) as dup:
        spec = ctypes.create_string_buffer(ITIMERSPEC_SIZE)
        for _ in range(5):
            syscall(SYS_timerfd_gettime, dup, ctypes.addressof(spec), what=f"timerfd_gettime (pid {o.pid} fd {o.fd})")
            before = time.clock_gettime_ns(time.CLOCK_REALTIME)
            state = procfs.timerfd_state(procfs.fdinfo(o.pid, o.fd, ctx.proc))
            after = time.clock_gettime_ns(time.CLOCK_REALTIME)
            if (state["value_sec"], state["value_nsec"]) != (0, 0) or \
                    (state["interval_sec"], state["interval_nsec"]) == (0, 0):
                break
    if abs_realtime(state):
        deadline = (before + after) // 2 + state["value_sec"] * NS + state["value_nsec"]
        # >= 1 ns: 0 means disarmed (a wall clock stepped back during the dump could make it <= 0)
        state["value_sec"], state["value_nsec"] = divmod(max(1, deadline - ctx.header_time * NS), NS)
    return state


def _check_target(ctx: DumpContext, o, t: dict[str, int]) -> None:
    """The image names an epoll's targets by fd number in this (the first) process holding it,
    and restore registers them through those numbers: the number must still name the file the
    epoll watches here, or restore would fail (an fd closed while a dup keeps the file alive:
    after `dump --kill`) or silently watch another file (the number given to it since)."""
    try:
        st = os.stat(f"{ctx.proc}/{o.pid}/fd/{t['tfd']}")
        same = (st.st_ino == t["ino"] and (os.major(st.st_dev), os.minor(st.st_dev)) == (t["sdev"] >> 20, t["sdev"] & 0xFFFFF))
    except OSError:
        same = False
    if t["ino"] and not same:
        raise Unsupported(f"pid {ctx.ns_pid.get(o.pid, '?')} (host pid {o.pid}) fd {o.fd}: an epoll watches a file "
                          f"(inode {t['ino']}) through fd {t['tfd']}, which no longer names it in this process "
                          "(closed while a copy keeps the file open, or registered by another process): "
                          "restore registers targets by fd number, so this cannot be checkpointed")


def dump(ctx: DumpContext, ref: int, o) -> None:
    from .files import write_file_head

    info = o.info
    write_file_head(ctx, ref, o.kind, info.flags, 0, None)
    if o.kind is FileType.EVENTFD:
        count = int(info.extra.get("eventfd-count", "0"), 16)
        sem = EFD_SEMAPHORE if info.extra.get("eventfd-semaphore", "0") == "1" else 0
        ctx.w.record(RecType.FILE_EVENTFD, dict(count=count, flags=sem))
    elif o.kind is FileType.EPOLL:
        targets = procfs.epoll_targets(info)
        for t in targets:
            _check_target(ctx, o, t)
        ctx.w.record(RecType.FILE_EPOLL, dict(nwatch=len(targets)),
                     payload=[{k: t[k] for k in ("tfd", "events", "data")} for t in targets])
    elif o.kind is FileType.TIMERFD:
        ctx.w.record(RecType.FILE_TIMERFD, timerfd_state(ctx, o))
    elif o.kind is FileType.SIGNALFD:
        ctx.w.record(RecType.FILE_SIGNALFD, dict(sigmask=int(info.extra.get("sigmask", "0"), 16)))
    elif o.kind is FileType.INOTIFY:
        watches = procfs.inotify_watches(info)
        ctx.w.record(RecType.FILE_INOTIFY, dict(nwatch=len(watches)), payload=_inotify_payload(ctx, o.pid, watches))
