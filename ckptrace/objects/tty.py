"""Terminals: FILE_TTY {index, is_master, session, foreground group}, with the device path.

index is the pts number (for a /dev/ptmx master, fdinfo's tty-index); session and foreground
process group are asked of the tty itself and given as pids inside the namespace (0 when the
tty is nobody's controlling terminal or they live outside the namespace).
"""

from __future__ import annotations

import fcntl
import os
import struct

from ..image.records import RecType
from .context import DumpContext

TIOCGPGRP = 0x540F
TIOCGSID = 0x5429


def _ioctl_pid(fd: int, req: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, req, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def dump(ctx: DumpContext, ref: int, o) -> None:
    from .files import grab, write_file_head

    rdev = o.st.st_rdev
    is_master = os.major(rdev) == 5 and os.minor(rdev) == 2
    if is_master:
        index = int(o.info.extra.get("tty-index", "0"))
    elif os.major(rdev) >= 136:
        index = (os.major(rdev) - 136) * 256 + os.minor(rdev)
    else:
        index = os.minor(rdev)
    with grab(o.pid, o.fd) as fd:
        sid, pgrp = _ioctl_pid(fd, TIOCGSID), _ioctl_pid(fd, TIOCGPGRP)
    write_file_head(ctx, ref, o.kind, o.info.flags, 0, ctx.path(o.target))
    ctx.w.record(RecType.FILE_TTY, dict(index=index, is_master=int(is_master),
                                        sid=ctx.ns_pid.get(sid, 0), pgrp=ctx.ns_pid.get(pgrp, 0)))
