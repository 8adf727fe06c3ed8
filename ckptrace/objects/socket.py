"""Sockets: FILE_SOCKET {family, type, protocol, state, inode, peer inode, backlog, shutdown}
plus the local and peer sockaddr (128 bytes each, as the kernel returns them).

State, peer and backlog come from sock_diag (kernel/sockdiag.py); the addresses from
getsockname/getpeername on a pidfd_getfd duplicate, which gives the exact bytes (abstract unix
names included) rather than a decoded form.
"""

from __future__ import annotations

import ctypes
import socket

from ..errors import Unsupported
from ..image.records import SOCKOPTS, FileType, RecType
from ..kernel.sys import libc
from .context import DumpContext

SOCKADDR_LEN = 128
SOL_SOCKET = 1
SO_TYPE, SO_PROTOCOL, SO_DOMAIN = 3, 38, 39


def _sockaddr(fn, fd: int) -> bytes:
    buf = ctypes.create_string_buffer(SOCKADDR_LEN)
    ln = ctypes.c_uint32(SOCKADDR_LEN)
    if fn(fd, buf, ctypes.byref(ln)) != 0:
        return b"\0" * SOCKADDR_LEN  # not connected: no peer
    return buf.raw[:min(ln.value, SOCKADDR_LEN)].ljust(SOCKADDR_LEN, b"\0")


def _opt(fd: int, opt: int, level: int = SOL_SOCKET) -> int:
    s = socket.socket(fileno=fd)
    try:
        return s.getsockopt(level, opt)
    finally:
        s.detach()


def _options(fd: int, family: int) -> int:
    """The SOCKOPTS bits set on the socket (IPV6_V6ONLY only asked of an IPv6 one)."""
    bits = 0
    for bit, (level, opt) in SOCKOPTS.items():
        if level == socket.IPPROTO_IPV6 and family != socket.AF_INET6:
            continue
        try:
            if _opt(fd, opt, level):
                bits |= bit
        except OSError:
            pass  # not an option of this family/type (SO_BROADCAST on unix...)
    return bits


def dump(ctx: DumpContext, ref: int, o) -> None:
    from .files import grab, write_file_head

    ino = int(o.target[len("socket:["):-1])
    info = ctx.socks.get(ino, o.pid)
    with grab(o.pid, o.fd) as fd:
        family, stype, proto = _opt(fd, SO_DOMAIN), _opt(fd, SO_TYPE), _opt(fd, SO_PROTOCOL)
        local = _sockaddr(libc.getsockname, fd)
        peer = _sockaddr(libc.getpeername, fd)
        options = _options(fd, family)
    if family == socket.AF_UNIX:
        kind = FileType.UNIX_SOCKET
    elif family in (socket.AF_INET, socket.AF_INET6):
        kind = FileType.INET_SOCKET
    else:
        raise Unsupported(f"pid {o.pid} fd {o.fd}: socket of address family {family} cannot be checkpointed")
    if info is None:
        raise Unsupported(f"pid {o.pid} fd {o.fd}: sock_diag does not know socket:[{ino}]")
    write_file_head(ctx, ref, kind, o.info.flags, 0, None)
    ctx.w.record(RecType.FILE_SOCKET, dict(family=family, type=stype, protocol=proto, state=info.state,
                                           ino=ino, peer_ino=info.peer_ino, backlog=info.backlog,
                                           shutdown=info.shutdown, options=options), payload=local + peer)
