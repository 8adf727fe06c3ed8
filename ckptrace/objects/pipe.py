"""Pipes and FIFOs: FILE_PIPE {pipe_id = the pipe's inode, buffered bytes, capacity}.

Ends that share a pipe_id are one pipe. The buffered bytes are read without consuming them:
tee(2) duplicates the pipe's buffers into a pipe of ours, which we then drain. They are stored
with the first end met; later ends carry none.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import termios

from ..errors import CkptError, from_oserror
from ..image.records import RecType
from ..kernel.sys import ioctl_int, libc
from .context import DumpContext

SPLICE_F_NONBLOCK = 2

libc.tee.restype = ctypes.c_ssize_t
libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]


def peek(fd: int) -> tuple[bytes, int]:
    """(buffered bytes, capacity) of the pipe `fd` is an end of (any access mode)."""
    size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    n = ioctl_int(fd, termios.FIONREAD)
    if n == 0:
        return b"", size
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
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
    if o.kind is FileType.PIPE:
        ctx.pipe_ends.setdefault(pipe_id, []).append((o.pid, o.fd, acc))
    ctx.w.record(RecType.FILE_PIPE, dict(pipe_id=pipe_id, buffered=len(data), pipe_size=size), payload=data)


def outside_notes(ctx: DumpContext, ns: int) -> list[str]:
    """A line for each pipe the image holds one kind of end of (readers only, or writers only)
    whose other end a process outside the namespace holds, such as a shell's `| cat` after a
    container: restore gives the pipe back with that end closed (the image cannot hold the
    outside process), so the restored side sees EOF or EPIPE there, and `dump --kill` cuts it now."""
    from ..kernel import procfs

    lone = {pipe_id: ends[0] for pipe_id, ends in ctx.pipe_ends.items() if len({acc for _, _, acc in ends}) == 1}
    if not lone:
        return []
    targets = {f"pipe:[{pipe_id}]": pipe_id for pipe_id in lone}
    out: dict[int, tuple[int, str]] = {}
    inside: dict[int, bool] = {}  # host pid -> a task of the namespace
    for host, fd, target in procfs.fd_links(ctx.proc):
        pipe_id = targets.get(target)
        if pipe_id is None or pipe_id in out:
            continue
        if inside.setdefault(host, procfs.ns_inode(host, "pid", ctx.proc) == ns):
            continue
        try:
            if procfs.fdinfo(host, fd, ctx.proc).flags & 3 == lone[pipe_id][2]:
                continue  # (an end of the kind the namespace holds too: unshare's own stdout)
        except CkptError:
            continue
        out[pipe_id] = (host, procfs.comm(host, ctx.proc) or "?")
    notes = []
    for pipe_id, (host, comm) in sorted(out.items()):
        pid, fd, acc = lone[pipe_id]
        other = "reading" if acc != os.O_RDONLY else "writing"
        notes.append(f"pid {ctx.ns_pid.get(pid, pid)} fd {fd} is a pipe whose {other} end is held outside the "
                     f"namespace (host pid {host}, {comm}): restore gives it back with that end closed")
    return notes
