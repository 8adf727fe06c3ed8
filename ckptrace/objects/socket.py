"""Sockets: FILE_SOCKET {family, type, protocol, state, inode, peer inode, backlog, shutdown}
plus the local and peer sockaddr (128 bytes each, as the kernel returns them).

State, peer and backlog come from sock_diag (kernel/sockdiag.py); the addresses from
getsockname/getpeername on a pidfd_getfd duplicate, which gives the exact bytes (abstract unix
names included) rather than a decoded form. A TCP or UDP socket that sock_diag does not list
(never bound, or TCP bound but neither listening nor connected: the kernel hashes neither where
sock_diag looks) is recorded from the duplicate alone, as TCP_CLOSE (see `unlisted`).
"""

from __future__ import annotations

import ctypes
import os
import socket
import stat
from dataclasses import dataclass
from socket import MSG_CTRUNC, MSG_DONTWAIT, MSG_OOB, MSG_PEEK, MSG_TRUNC
from termios import FIONREAD

from ..errors import Unsupported, from_oserror
from ..image.records import MAX_BLOB, SOCKADDR_LEN, SOCKOPTS, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, FileType, RecType
from ..kernel import tcprepair
from ..kernel.sockdiag import SockInfo
from ..kernel.sys import SO_PEEK_OFF, libc
from .context import WITHOUT_KILL, DumpContext, kill_refused


def _sockaddr(fn, fd: int) -> bytes:
    buf = ctypes.create_string_buffer(SOCKADDR_LEN)
    ln = ctypes.c_uint32(SOCKADDR_LEN)
    if fn(fd, buf, ctypes.byref(ln)) != 0:
        return b"\0" * SOCKADDR_LEN  # not connected: no peer
    return buf.raw[:min(ln.value, SOCKADDR_LEN)].ljust(SOCKADDR_LEN, b"\0")


def _opt(fd: int, opt: int, level: int = socket.SOL_SOCKET) -> int:
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


SO_TIMESTAMP, SO_TIMESTAMPNS = 29, 35  # (the _OLD ones; their SCM_ cmsg types are the same numbers)
SCM_RIGHTS = 1
_ANCILLARY = socket.CMSG_SPACE(253 * 4) + 3 * socket.CMSG_SPACE(64)  # SCM_MAX_FD fds, creds, security, stamp
_MAX_MESSAGES = 1 << 20
_CHUNK = 1 << 16
# FILE_SOCKET.shutdown beyond sock_diag's two bits: a stream socket whose peer closed with data
# unread, so that its next read past the queue fails with ECONNRESET (docs/format.md)
SHUTDOWN_RESET = 0x100
# and a unix socket bound to a path that no longer names it (the file was unlinked, or replaced):
# restore binds it where nothing shows (restorer/files.py _bind_unlinked); with a FILE_NAME, its
# file was found under that other name in the path's directory (renamed: see _bound_file)
SHUTDOWN_UNLINKED = 0x200


def _bound_file(pid: int, local: bytes, info) -> tuple[bool, bytes | None]:
    """Whether a unix socket bound to an absolute path is no longer what that path names, as
    seen from the process's root: nothing there (the file, or a directory on the way, removed),
    or another file (the socket sock_diag says bind() made has another inode); and then the name
    its file has now when that is in the same directory (bind-then-rename, the usual way to
    publish a socket at once: a JVM binds .java_pidN.tmp and renames it to .java_pidN), as a
    path in the bound path's terms, else None (really unlinked). Only that one directory is
    read: a file moved elsewhere counts as unlinked. A relative path or an abstract name is not
    looked at (the former is relative to where the process was when it bound, which nothing
    shows)."""
    path = local[2:110].split(b"\0", 1)[0]
    if local[:2] != b"\x01\x00" or not path.startswith(b"/"):
        return False, None
    root = b"/proc/%d/root" % pid
    try:
        st = os.stat(root + path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return False, None  # (cannot tell: EACCES, ELOOP...: taken as still there, as before)
    else:
        if info.vfs is None or (st.st_dev, st.st_ino) == info.vfs:
            return False, None
    return True, _renamed(root, path, info.vfs)


def _renamed(root: bytes, path: bytes, vfs: tuple[int, int] | None) -> bytes | None:
    """The path, in the directory of `path` (under the process's `root`), of the socket file
    whose (st_dev, st_ino) is `vfs`; the first name in byte order when it has several (hard
    links: restore makes one). None when no entry there is that file."""
    if vfs is None:
        return None  # (sock_diag did not say which file: nothing to look for)
    parent = path.rsplit(b"/", 1)[0] or b"/"
    found = []
    try:
        with os.scandir(root + parent) as entries:
            for e in entries:
                if e.inode() != vfs[1] and (e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False)
                                            or e.is_symlink()):
                    continue  # (readdir's type says it is no socket; an inode number read there
                    # may differ from stat's on an overlay: any other entry is stat'ed)
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # (gone meanwhile)
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == vfs:
                    found.append(e.name)
    except OSError:
        return None  # (the directory gone too, or unreadable: unlinked, as before)
    if not found:
        return None
    return parent.rstrip(b"/") + b"/" + min(found)


def _pending_error(fd: int) -> bool:
    """sk_err is set. Seen through poll's POLLERR, which leaves it: every other way of looking
    (SO_ERROR, a read that meets it) takes it from the program."""
    import select

    p = select.poll()
    p.register(fd, select.POLLERR)
    return any(ev & select.POLLERR for _, ev in p.poll(0))


def _unix_queue(fd: int, stype: int, where: str) -> tuple[list[tuple[bytes, bytes]], int]:
    """(sender's name, message) for everything queued for reading on a unix socket, oldest first,
    left where it is, and the SHUTDOWN_RESET bit when the socket holds an ECONNRESET for its
    reader. Read with MSG_PEEK from SO_PEEK_OFF 0, which each peek moves past what it returned
    (the tasks are held: nobody else reads meanwhile), then the offset as it was. A stream
    socket's bytes come as one message with no name.

    Nothing here may change what the program itself would read next: a stream is peeked exactly
    as far as FIONREAD says (one peek further would take the pending error, sk_err); a datagram
    or seqpacket socket with an error pending is refused untouched (any read takes it first)."""
    s = socket.socket(fileno=fd)
    try:
        stream = stype == socket.SOCK_STREAM
        reset = _pending_error(fd)
        if reset and not stream:
            raise Unsupported(f"{where}: a unix {'seqpacket' if stype == socket.SOCK_SEQPACKET else 'datagram'} "
                              "socket with an error pending for its reader (its peer went away) cannot be "
                              "checkpointed: reading its queue would take the error from the program")
        if stream:
            _refuse_out_of_band(s, where)
        before = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        # A seqpacket peek returns 0 bytes both for an empty message and, once the peer has shut
        # down, for the end: only a real message carries a timestamp (SO_TIMESTAMP, off again after)
        stamp = stype == socket.SOCK_SEQPACKET and not (s.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMP)
                                                         or s.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS))
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            if stamp:
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            if stream:
                return _peek_stream(s, where), SHUTDOWN_RESET if reset else 0
            return _peek_messages(s, stype, where), 0
        finally:
            if stamp:
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 0)
            s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, before)
    finally:
        s.detach()


def _refuse_out_of_band(s, where: str) -> None:
    """A byte sent MSG_OOB waits apart from the stream (unless SO_OOBINLINE); a peek returns it
    inline, where restore would put it. MSG_OOB|MSG_PEEK shows it without taking it."""
    try:
        s.recv(1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT)
    except OSError:
        return  # EINVAL: none (or inline already)
    raise Unsupported(f"{where}: a unix stream socket with out-of-band data (MSG_OOB) queued cannot be checkpointed")


def _check_control(anc, flags: int, where: str) -> bool:
    """Refuse descriptors in flight (closing the copies the peek gave us); whether a timestamp
    came (the message is real, not a seqpacket's end)."""
    stamped = False
    for level, kind, cdata in anc:
        if level != socket.SOL_SOCKET:
            continue
        if kind == SCM_RIGHTS:
            # the peek gave us copies of the descriptors in flight: they are not ours to keep
            for i in range(0, len(cdata) - len(cdata) % 4, 4):
                os.close(int.from_bytes(cdata[i:i + 4], "little"))
            raise Unsupported(f"{where}: a unix socket with file descriptors in flight (SCM_RIGHTS "
                              "queued for reading) cannot be checkpointed")
        stamped |= kind in (SO_TIMESTAMP, SO_TIMESTAMPNS, 63, 64)  # _OLD and _NEW
    if flags & MSG_CTRUNC:
        raise Unsupported(f"{where}: a unix socket whose queued messages carry more control data "
                          "than a checkpoint can read cannot be checkpointed")
    return stamped


def _peek_stream(s, where: str) -> list[tuple[bytes, bytes]]:
    queued = ctypes.c_int(0)
    if libc.ioctl(s.fileno(), FIONREAD, ctypes.byref(queued)) != 0:
        raise from_oserror(OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())),
                           f"{where}: FIONREAD of a unix stream socket")
    if queued.value > MAX_BLOB:
        raise Unsupported(f"{where}: more than {MAX_BLOB >> 20} MiB queued on a unix socket")
    parts: list[bytes] = []
    got = 0
    while got < queued.value:
        try:
            data, anc, flags, _ = s.recvmsg(min(_CHUNK, queued.value - got), _ANCILLARY, MSG_PEEK | MSG_DONTWAIT)
        except OSError as exc:
            raise from_oserror(exc, f"{where}: read the socket's queue") from None
        _check_control(anc, flags, where)
        if not data:
            break
        parts.append(data)
        got += len(data)
    if got != queued.value:
        raise Unsupported(f"{where}: {queued.value} bytes queued on a unix stream socket, of which only "
                          f"{got} can be read without taking them")
    return [(b"", b"".join(parts))] if parts else []


def _peek_messages(s, stype: int, where: str) -> list[tuple[bytes, bytes]]:
    """Datagrams or seqpackets, each whole (one longer than a peek continues in the next: the
    offset moved inside it). A zero-length one that anything peeked at before is skipped by the
    kernel (docs/dump.md)."""
    out: list[tuple[bytes, list[bytes]]] = []
    total = 0
    more = False  # the last message did not fit: the next peek goes on inside it
    while len(out) < _MAX_MESSAGES:
        try:
            data, anc, flags, addr = s.recvmsg(_CHUNK, _ANCILLARY, MSG_PEEK | MSG_DONTWAIT)
        except BlockingIOError:
            break
        except OSError as exc:
            raise from_oserror(exc, f"{where}: read the socket's queue") from None
        stamped = _check_control(anc, flags, where)
        if stype == socket.SOCK_SEQPACKET and not data and not stamped and not more:
            break  # the end: the peer shut down, nothing queued
        if more:
            out[-1][1].append(data)
        else:
            # (a zero-length message is one too: the kernel marks it peeked, and skips it next)
            name = os.fsencode(addr) if isinstance(addr, str) else bytes(addr or b"")
            out.append((name, [data]))
        more = bool(flags & MSG_TRUNC)
        total += len(data)
        if total > MAX_BLOB:
            raise Unsupported(f"{where}: more than {MAX_BLOB >> 20} MiB queued on a unix socket")
    else:
        raise Unsupported(f"{where}: more than {_MAX_MESSAGES} messages queued on a unix socket")
    return [(name, b"".join(parts)) for name, parts in out]


def dump(ctx: DumpContext, ref: int, o) -> None:
    from .files import _where, grab, write_file_head

    ino = int(o.target[len("socket:["):-1])
    info = ctx.socks.get(ino, o.pid)
    where = _where(ctx, o.pid)
    tcp = None
    with grab(o.pid, o.fd) as fd:
        family, stype, proto = _opt(fd, socket.SO_DOMAIN), _opt(fd, socket.SO_TYPE), _opt(fd, socket.SO_PROTOCOL)
        local = _sockaddr(libc.getsockname, fd)
        peer = _sockaddr(libc.getpeername, fd)
        options = _options(fd, family)
        if info is None:
            info = unlisted(fd, ino, f"{where} fd {o.fd}")
        queue, reset = [], 0
        if family == socket.AF_UNIX and info is not None and info.state != TCP_LISTEN:
            queue, reset = _unix_queue(fd, stype, f"{where} fd {o.fd}")
        if family in (socket.AF_INET, socket.AF_INET6) and proto == socket.IPPROTO_TCP \
                and info is not None and info.state == TCP_ESTABLISHED:
            tcp = _tcp_connection(ctx, fd, options, f"{where} fd {o.fd}")
    kind = FileType.UNIX_SOCKET if family == socket.AF_UNIX else FileType.INET_SOCKET  # (unlisted refused others)
    peer_ino, backlog = info.peer_ino, info.backlog
    if info.pending_on:
        # connected to a listener that has not accepted it yet (its peer is the connection the
        # kernel made, which no process holds): recorded as connected to the listener, its
        # position in the accept queue in `backlog`; restore connects it again
        if info.unread:
            raise Unsupported(f"{where} fd {o.fd}: a unix socket connected to a listener that has not "
                              "accepted it yet, with data sent on it: that data cannot be read without "
                              "accepting the connection")
        peer_ino, backlog = info.pending_on, info.pending_at
    renamed = None  # (the FILE_NAME of a socket whose file was renamed: see _bound_file)
    if family == socket.AF_UNIX:
        unlinked, renamed = _bound_file(o.pid, local, info)
        if unlinked:
            reset |= SHUTDOWN_UNLINKED
    ctx.sock_inos.add(ino)
    if info.state == TCP_LISTEN and info.accept_queue:
        from ..image.render import socket_desc

        ctx.listeners.append((f"{where} fd {o.fd}", socket_desc(dict(family=family, type=stype, protocol=proto,
                                                                      state=info.state), local + peer), info))
    write_file_head(ctx, ref, kind, o.info.flags, 0,
                    None if renamed is None else os.fsdecode(renamed))
    ctx.w.record(RecType.FILE_SOCKET, dict(family=family, type=stype, protocol=proto, state=info.state,
                                           ino=ino, peer_ino=peer_ino, backlog=backlog,
                                           shutdown=info.shutdown | reset, options=options), payload=local + peer)
    if tcp is not None:
        ctx.w.record(RecType.FILE_TCP, tcp.fields, payload=tcp.inq + tcp.outq)
    for addr, data in queue:
        ctx.w.record(RecType.FILE_SOCKET_QUEUE, dict(addrlen=len(addr), bytes=len(data)), payload=addr + data)
    empty = sum(1 for _, data in queue if not data and stype != socket.SOCK_STREAM)
    if empty:
        ctx.notes.append(f"{where} fd {o.fd}: {empty} zero-length message(s) queued, which the kernel now "
                         "hides from peeks: a later dump of this namespace, if it runs on, will not have them")


# -- sockets sock_diag does not list --------------------------------------------------------------

def describe(family: int, stype: int, proto: int) -> str:
    """A socket's kind in the kernel's words: "an AF_NETLINK SOCK_RAW socket (protocol 0)"."""
    try:
        fam = socket.AddressFamily(family).name
    except ValueError:
        fam = f"address family {family}"
    try:
        typ = socket.SocketKind(stype).name
    except ValueError:
        typ = f"type {stype}"
    return f"{'an' if fam[0] in 'AE' else 'a'} {fam} {typ} socket (protocol {proto})"


def check(ctx: DumpContext, pid: int, fd: int, ino: int, where: str) -> None:
    """Refuse, before anything is written, a socket the dump cannot record (see `unlisted`)."""
    if ctx.socks.get(ino, pid) is None:
        from .files import grab

        with grab(pid, fd) as dup:
            unlisted(dup, ino, where)


def unlisted(fd: int, ino: int, where: str) -> SockInfo:
    """What sock_diag would have said of socket `fd` (our duplicate of socket:[ino]), which it
    does not list. The kernel hashes an inet socket where sock_diag looks only once it has a
    port and a purpose: a TCP socket never bound, or bound but neither listening nor connected
    (the state socket() leaves it in, TCP_CLOSE), and a UDP socket never bound (sendto and
    connect bind it), are listed nowhere. Those are recorded as TCP_CLOSE, with no peer and
    nothing shut down; restore makes them again, bound where getsockname says they were bound.

    Refused, naming what the socket is: any other family, type or protocol (netlink, packet,
    raw, ICMP or SCTP sockets...); a TCP socket that holds an error the program has not read
    yet (a non-blocking connect that failed: SO_ERROR would read 0 once restored, which a
    program takes for success; a reset) or whose connection has ended (reset, or closed by both
    ends: connecting it again fails with EISCONN, which a new socket would not); a unix socket, a TCP socket in another
    state or a bound UDP socket, which sock_diag would list: it was made in another network
    namespace than the process's, where sock_diag was asked, and passed in."""
    import select

    family, stype, proto = _opt(fd, socket.SO_DOMAIN), _opt(fd, socket.SO_TYPE), _opt(fd, socket.SO_PROTOCOL)
    what = describe(family, stype, proto)
    tcp = (stype, proto) == (socket.SOCK_STREAM, socket.IPPROTO_TCP)
    udp = (stype, proto) == (socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    elsewhere = Unsupported(f"{where}: socket:[{ino}] ({what}) is not listed by sock_diag in the process's "
                            "network namespace: a socket made in another network namespace cannot be checkpointed")
    if family == socket.AF_UNIX:
        raise elsewhere  # (unix_diag lists every unix socket of its namespace, bound or not)
    if family not in (socket.AF_INET, socket.AF_INET6) or not (tcp or udp):
        raise Unsupported(f"{where}: socket:[{ino}] is {what}, which ckptrace cannot checkpoint (it "
                          "checkpoints unix sockets and TCP and UDP sockets only)")
    if tcp:
        s = socket.socket(fileno=fd)
        try:
            state = s.getsockopt(socket.IPPROTO_TCP, tcprepair.TCP_INFO, 8)[0]  # tcpi_state
        finally:
            s.detach()
        if state != TCP_CLOSE:
            raise elsewhere
        events = _poll(fd)
        if events & select.POLLERR:  # (sk_err, seen without taking it)
            raise Unsupported(f"{where}: socket:[{ino}] ({what}) is a TCP socket with an error pending that the "
                              "program has not read yet (a connect that failed, a connection reset): it cannot "
                              "be checkpointed")
        if events & select.POLLRDHUP:  # (sk_shutdown, which only a connection's end sets)
            raise Unsupported(f"{where}: socket:[{ino}] ({what}) is a TCP connection that has ended (reset, or "
                              "closed by both ends) and is still open: it cannot be checkpointed")
    else:
        name = _sockaddr(libc.getsockname, fd)
        if int.from_bytes(name[2:4], "big") or _sockaddr(libc.getpeername, fd)[:2] != b"\0\0":
            raise elsewhere  # (a bound or connected UDP socket is hashed, so listed, in its own)
    return SockInfo(family, stype, proto, TCP_CLOSE, ino)


def _poll(fd: int) -> int:
    """The socket's poll events now (POLLRDHUP asked for; POLLERR and POLLHUP always come)."""
    import select

    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLOUT | select.POLLRDHUP)
    return next((ev for _, ev in p.poll(0)), 0)


def unaccepted(ctx: DumpContext) -> list[str]:
    """What the image lacks of the connections waiting in its listeners' accept queues, once
    every socket is dumped, one line per listener. A connection nobody accepted yet has no fd:
    its server end is the kernel's alone. A unix one whose client is in the image is kept (the
    client connects again at restore: its place in the queue is in its record); one whose client
    is outside, and every TCP one (the client, inside or out, would be left with no server end:
    reset), cannot be made again."""
    out = []
    for where, desc, info in ctx.listeners:
        if info.family == socket.AF_UNIX:
            lost, whose = sum(1 for c in info.clients if c not in ctx.sock_inos), " from outside the image"
        else:
            lost, whose = info.accept_queue, ""
        if lost:
            out.append(f"{where} ({desc}): {lost} connection{'s' if lost > 1 else ''}{whose} not accepted yet, "
                       "which the image cannot keep (the server end of a connection not accepted yet is the "
                       "kernel's alone): the client would find it reset")
    return out


def check_kill(ctx: DumpContext, ns: int) -> None:
    """Refuse `--kill` when a listener held connections the image lacks: their clients would be
    left with no server end (a reset), and the program would never accept them."""
    if ctx.unaccepted:
        raise kill_refused(ns, "; ".join(ctx.unaccepted), f"dump again once they are accepted ({WITHOUT_KILL})",
                           transient=True)


# -- TCP connections (kernel/tcprepair.py) -------------------------------------------------------

@dataclass
class HeldTcp:
    """A TCP connection the dump read, for `dump --kill`: a duplicate of its socket, the rcv_nxt
    the image has, whether SO_REUSEADDR was set (repair mode resets it)."""

    fd: int
    where: str
    rcv_nxt: int
    reuseaddr: bool
    repairing: bool = False


def _tcp_connection(ctx: DumpContext, fd: int, options: int, where: str) -> tcprepair.TcpState:
    """The connection's state, read in repair mode, which is off again before this returns: the
    program may run on after the dump, and a dumper killed by SIGKILL runs no cleanup. (Only
    `dump --kill` turns it on again, just before the kill: see arm_for_kill.)"""
    reuse = bool(options & SO_REUSEADDR_BIT)
    try:
        tcprepair.set_repair(fd, True)
    except OSError as exc:
        raise from_oserror(exc, f"{where}: TCP_REPAIR (needs CAP_NET_ADMIN)") from None
    try:
        state = tcprepair.read_state(fd, where)
    except BaseException:
        # The read's own error is the one to report: a failure to leave repair mode as well
        # (the connection gone meanwhile) must not replace it
        try:
            _repair_off(fd, reuse)
        except OSError:
            pass
        raise
    try:
        _repair_off(fd, reuse)
    except OSError as exc:
        raise from_oserror(exc, f"{where}: TCP_REPAIR off again after reading the connection") from None
    if ctx.tcp_held is not None:
        rcv_nxt = (state.fields["inq_seq"] + state.fields["inq_len"]) & 0xFFFFFFFF
        ctx.tcp_held.append(HeldTcp(os.dup(fd), where, rcv_nxt, reuse))
    return state


SO_REUSEADDR_BIT = 0x1  # of FILE_SOCKET.options (SOCKOPTS)


def _repair_off(fd: int, reuseaddr: bool) -> None:
    tcprepair.set_repair(fd, False)
    if reuseaddr:  # (leaving repair mode cleared it)
        s = socket.socket(fileno=fd)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        finally:
            s.detach()


def arm_for_kill(held: list[HeldTcp], ns: int) -> None:
    """Before `dump --kill` kills: every connection the image holds goes back into repair mode,
    so that its end closes without a FIN or a RST, and is checked to have received nothing since
    it was read. Data the kernel took meanwhile was acknowledged to the peer, which will not send
    it again, and is not in the image: the kill is refused then (the dump can simply be run
    again). Raises Unsupported with the connections back out of repair mode."""
    for h in held:
        try:
            tcprepair.set_repair(h.fd, True)
            h.repairing = True
            now = tcprepair.queue_seq(h.fd, tcprepair.TCP_RECV_QUEUE)
        except OSError as exc:
            disarm(held)
            raise from_oserror(exc, f"{h.where}: TCP_REPAIR before the kill") from None
        if now != h.rcv_nxt:
            disarm(held)
            raise kill_refused(ns, f"{h.where}: {(now - h.rcv_nxt) & 0xFFFFFFFF} bytes arrived on its TCP connection "
                                   "after the dump read it, which the image does not have",
                               "the namespace is left running (dump again)", transient=True)


def disarm(held: list[HeldTcp]) -> None:
    """Repair mode off wherever arm_for_kill turned it on (the namespace runs on)."""
    for h in held:
        if h.repairing:
            try:
                _repair_off(h.fd, h.reuseaddr)
                h.repairing = False
            except OSError:
                pass  # (the connection has gone meanwhile)


def release_held(held: list[HeldTcp], killed: bool) -> None:
    """The dump's end: repair mode off again unless the namespace was killed (its sockets then
    close silently: ours are the last references, or the dying tasks'), duplicates closed."""
    if not killed:
        disarm(held)
    for h in held:
        os.close(h.fd)
    held.clear()
