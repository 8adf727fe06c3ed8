"""Sockets: FILE_SOCKET {family, type, protocol, state, inode, peer inode, backlog, shutdown}
plus the local and peer sockaddr (128 bytes each, as the kernel returns them).

State, peer and backlog come from sock_diag (kernel/sockdiag.py); the addresses from
getsockname/getpeername on a pidfd_getfd duplicate, which gives the exact bytes (abstract unix
names included) rather than a decoded form.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

from ..errors import Unsupported, from_oserror
from ..image.records import MAX_BLOB, SOCKOPTS, TCP_LISTEN, FileType, RecType
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


SO_PEEK_OFF = 42
MSG_PEEK, MSG_TRUNC, MSG_DONTWAIT, MSG_CTRUNC = 0x2, 0x20, 0x40, 0x8
SCM_RIGHTS = 1
FIONREAD = 0x541B
_ANCILLARY = socket.CMSG_SPACE(253 * 4) + 2 * socket.CMSG_SPACE(64)  # SCM_MAX_FD fds, creds, security
_MAX_MESSAGES = 1 << 20


def _unix_queue(fd: int, stype: int, where: str) -> list[tuple[bytes, bytes]]:
    """(sender sockaddr, message) for everything queued for reading on a unix socket, oldest
    first, left where it is: MSG_PEEK from SO_PEEK_OFF 0, which each peek moves past what it
    returned (the tasks are held: nobody else reads meanwhile), then the offset as it was. A
    stream socket's bytes come as one message with no address."""
    s = socket.socket(fileno=fd)
    try:
        before = s.getsockopt(SOL_SOCKET, SO_PEEK_OFF)
        s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            return _peek_all(s, stype, where)
        finally:
            s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, before)
    finally:
        s.detach()


def _peek_all(s, stype: int, where: str) -> list[tuple[bytes, bytes]]:
    stream = stype == socket.SOCK_STREAM
    out: list[tuple[bytes, bytes]] = []
    total = 0
    more = False  # the last datagram did not fit: the next peek goes on inside it
    while len(out) < _MAX_MESSAGES:
        try:
            data, anc, flags, addr = s.recvmsg(1 << 16, _ANCILLARY, MSG_PEEK | MSG_DONTWAIT)
        except BlockingIOError:
            break
        except OSError as exc:
            raise from_oserror(exc, f"{where}: read the socket's queue") from None
        for level, kind, cdata in anc:
            if level == SOL_SOCKET and kind == SCM_RIGHTS:
                # the peek gave us copies of the descriptors in flight: they are not ours to keep
                for i in range(0, len(cdata) - len(cdata) % 4, 4):
                    os.close(int.from_bytes(cdata[i:i + 4], "little"))
                raise Unsupported(f"{where}: a unix socket with file descriptors in flight (SCM_RIGHTS "
                                  "queued for reading) cannot be checkpointed")
        if flags & MSG_CTRUNC:
            raise Unsupported(f"{where}: a unix socket whose queued messages carry more control data "
                              "than a checkpoint can read cannot be checkpointed")
        if stream:
            if not data:
                break  # the peer shut down: end of stream after the bytes
            out[:] = [(b"", (out[0][1] if out else b"") + data)]
        elif more:
            out[-1] = (out[-1][0], out[-1][1] + data)
        else:
            # (a zero-length datagram is one too: the kernel marks it peeked, and skips it next)
            name = os.fsencode(addr) if isinstance(addr, str) else bytes(addr or b"")
            out.append((name, data))
        more = bool(flags & MSG_TRUNC) and not stream
        total += len(data)
        if total > MAX_BLOB:
            raise Unsupported(f"{where}: more than {MAX_BLOB >> 20} MiB queued on a unix socket")
    else:
        raise Unsupported(f"{where}: more than {_MAX_MESSAGES} messages queued on a unix socket")
    if stream:
        # FIONREAD counts every byte queued: fewer peeked means some could not be (out-of-band data)
        queued = ctypes.c_int(0)
        if libc.ioctl(s.fileno(), FIONREAD, ctypes.byref(queued)) == 0 and queued.value != total:
            raise Unsupported(f"{where}: {queued.value} bytes queued on a unix stream socket, of which only "
                              f"{total} can be read without taking them (out-of-band data?)")
    return out


def dump(ctx: DumpContext, ref: int, o) -> None:
    from .files import grab, write_file_head

    ino = int(o.target[len("socket:["):-1])
    info = ctx.socks.get(ino, o.pid)
    with grab(o.pid, o.fd) as fd:
        family, stype, proto = _opt(fd, SO_DOMAIN), _opt(fd, SO_TYPE), _opt(fd, SO_PROTOCOL)
        local = _sockaddr(libc.getsockname, fd)
        peer = _sockaddr(libc.getpeername, fd)
        options = _options(fd, family)
        queue = []
        if family == socket.AF_UNIX and info is not None and info.state != TCP_LISTEN:
            queue = _unix_queue(fd, stype, f"pid {o.pid} fd {o.fd}")
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
    for addr, data in queue:
        ctx.w.record(RecType.FILE_SOCKET_QUEUE, dict(addrlen=len(addr), bytes=len(data)), payload=addr + data)
