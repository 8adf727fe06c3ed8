"""Pipes and FIFOs: FILE_PIPE {pipe_id = the pipe's inode, buffered bytes, capacity}.

Ends that share a pipe_id are one pipe. The buffered bytes are read without consuming them:
tee(2) duplicates the pipe's buffers into a pipe of ours, which we then drain. They are stored
with the first end met; later ends carry none.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from ..errors import from_oserror
from ..image.records import RecType
from ..kernel.sys import libc
from .context import DumpContext

F_GETPIPE_SZ = 1032
F_SETPIPE_SZ = 1031
FIONREAD = 0x541B
SPLICE_F_NONBLOCK = 2

libc.tee.restype = ctypes.c_ssize_t
libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]


def peek(fd: int) -> tuple[bytes, int]:
    """(buffered bytes, capacity) of the pipe `fd` is an end of (any access mode)."""
    size = fcntl.fcntl(fd, F_GETPIPE_SZ)
    n = struct.unpack("i", fcntl.ioctl(fd, FIONREAD, b"\0\0\0\0"))[0]
    if n == 0:
        return b"", size
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
        got = libc.tee(fd, w, n, SPLICE_F_NONBLOCK)
        if got < 0:
            err = ctypes.get_errno()
            raise from_oserror(OSError(err, os.strerror(err)), "tee of a pipe's buffer")
        parts = []
        left = got
        while left:
            chunk = os.read(r, left)
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts), size
    finally:
        os.close(r)
        os.close(w)


def _read_end(o) -> int:
    """An fd of ours that reads the same pipe: tee needs a readable end. Opening the /proc link of
    a pipe (either end) with O_RDONLY|O_NONBLOCK gives a new reader on that very pipe."""
    try:
        return os.open(f"/proc/{o.pid}/fd/{o.fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc, f"open pipe fd {o.fd} of {o.pid}") from None


def dump(ctx: DumpContext, ref: int, o) -> None:
    from ..image.records import FileType
    from .files import grab, write_file_head

    pipe_id = o.st.st_ino
    name = ctx.path(o.target) if o.kind is FileType.FIFO else None
    write_file_head(ctx, ref, o.kind, o.info.flags, 0, name)
    data = b""
    acc = o.info.flags & 3
    if acc == os.O_RDONLY:
        with grab(o.pid, o.fd) as fd:
            data, size = peek(fd)
    else:
        fd = _read_end(o)
        try:
            data, size = peek(fd)
        finally:
            os.close(fd)
    if pipe_id in ctx.pipes_seen:
        data = b""
    ctx.pipes_seen.add(pipe_id)
    ctx.w.record(RecType.FILE_PIPE, dict(pipe_id=pipe_id, buffered=len(data), pipe_size=size), payload=data)

