"""The anon-inode kinds, all read from /proc/PID/fdinfo: eventfd (counter, semaphore mode),
epoll (interest list: target fd, events, data), timerfd (clock, remaining time, interval, ticks),
signalfd (mask) and inotify (watches)."""

from __future__ import annotations

import struct

from ..image.records import FileType, RecType
from ..kernel import procfs
from .context import DumpContext

EFD_SEMAPHORE = 1


def _inotify_payload(watches) -> bytes:
    out = bytearray()
    for w in watches:
        # {s32 wd, u32 mask, u64 ino, u32 dev, cstring path}: the kernel keeps no path, only the
        # inode; the path stays empty and the restorer finds the inode by its file handle.
        out += struct.pack("<iIQI", w["wd"], w["mask"], w["ino"], w["sdev"]) + b"\0"
    return bytes(out)


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
        ctx.w.record(RecType.FILE_EPOLL, dict(nwatch=len(targets)), payload=targets)
    elif o.kind is FileType.TIMERFD:
        ctx.w.record(RecType.FILE_TIMERFD, procfs.timerfd_state(info))
    elif o.kind is FileType.SIGNALFD:
        ctx.w.record(RecType.FILE_SIGNALFD, dict(sigmask=int(info.extra.get("sigmask", "0"), 16)))
    elif o.kind is FileType.INOTIFY:
        watches = procfs.inotify_watches(info)
        ctx.w.record(RecType.FILE_INOTIFY, dict(nwatch=len(watches)), payload=_inotify_payload(watches))
