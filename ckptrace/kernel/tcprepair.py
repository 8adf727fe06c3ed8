"""Established TCP connections, read and made again through TCP_REPAIR (include/uapi/linux/tcp.h).

In repair mode a socket shows and takes what is otherwise the kernel's own: the sequence numbers
its queues start at (TCP_QUEUE_SEQ, for the queue TCP_REPAIR_QUEUE selects), their bytes (a
MSG_PEEK of the send queue gives what was sent and not yet acknowledged, then what was never
sent), the window (TCP_REPAIR_WINDOW) and the timestamp clock (TCP_TIMESTAMP); a connect() then
makes a connection ESTABLISHED without a SYN, and a send() fills the selected queue without
transmitting anything. A socket closed while in repair mode goes away without a FIN or a RST
(tcp_close/tcp_disconnect), which is how `dump --kill` leaves a peer outside unaware.

Repair mode needs CAP_NET_ADMIN over the socket's network namespace. Everything here takes a
plain descriptor (the dumper's pidfd_getfd duplicate, or the restorer's new socket).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import KernelError, Unsupported, from_oserror
from ..image.records import TCP_ESTABLISHED, TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE
from .sys import SO_PEEK_OFF, SO_RCVBUFFORCE, SO_SNDBUFFORCE, ioctl_int

SOL_TCP = 6
TCP_NODELAY, TCP_MAXSEG, TCP_CORK, TCP_INFO = 1, 2, 3, 11
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_REPAIR_ON, TCP_REPAIR_OFF, TCP_REPAIR_OFF_NO_WP = 1, 0, -1
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
# struct tcp_repair_window {u32 snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup}
REPAIR_WINDOW = struct.Struct("<5I")
WINDOW_FIELDS = ("snd_wl1", "snd_wnd", "max_window", "rcv_wnd", "rcv_wup")
# struct tcp_repair_opt {u32 opt_code, opt_val}
REPAIR_OPT = struct.Struct("<II")
FLAG_NODELAY, FLAG_CORK = 0x1, 0x2  # FILE_TCP.flags (records.TCP_FLAG_*)
SEND_TIMEOUT = 10.0  # seconds finish() may take to queue the never-sent bytes


@dataclass
class TcpState:
    """What FILE_TCP holds: its fields (records.py) and the two queues' bytes."""

    fields: dict
    inq: bytes
    outq: bytes


def _sock(fd: int) -> socket.socket:
    """A socket object over `fd` that must be detach()ed, never closed."""
    return socket.socket(fileno=fd)


def _ioctl_int(fd: int, req: int, what: str) -> int:
    try:
        return ioctl_int(fd, req)
    except OSError as exc:
        raise from_oserror(exc, what) from None


def set_repair(fd: int, on: bool) -> None:
    """Repair mode on, or off without the window probe the kernel would send (TCP_REPAIR_OFF_NO_WP,
    Linux 4.15; older kernels take TCP_REPAIR_OFF only). Turning it on or off resets the socket's
    SO_REUSEADDR (sk_reuse): callers that keep the socket put it back."""
    s = _sock(fd)
    try:
        if on:
            s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON)
            return
        try:
            s.setsockopt(SOL_TCP, TCP_REPAIR, struct.pack("i", TCP_REPAIR_OFF_NO_WP))
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
    finally:
        s.detach()


def queue_seq(fd: int, queue: int) -> int:
    """The sequence number after the last byte of `queue` (rcv_nxt, write_seq); repair mode."""
    s = _sock(fd)
    try:
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
        return s.getsockopt(SOL_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
    finally:
        s.detach()


def read_state(fd: int, where: str) -> TcpState:
    """Everything restore needs of an ESTABLISHED connection whose socket is in repair mode.

    The program is frozen, so nothing reads or writes the queues meanwhile; the kernel still
    receives and acknowledges, which only adds to the receive queue's end (taken consistently
    below: its start, copied_seq, does not move) and shrinks the send queue's start (taken in one
    peek, against write_seq, which does not move)."""
    s = _sock(fd)
    try:
        info = s.getsockopt(SOL_TCP, TCP_INFO, 8)
        state, options, wscale = info[0], info[5], info[6]
        if state != TCP_ESTABLISHED:
            raise Unsupported(f"{where}: the TCP connection left the ESTABLISHED state (now {state}) while "
                              "it was being dumped (its peer closed it?)", transient=True)
        fields = dict(mss=s.getsockopt(SOL_TCP, TCP_MAXSEG), options=options & 0x7,
                      snd_wscale=wscale & 0xF if options & TCPI_OPT_WSCALE else 0,
                      rcv_wscale=wscale >> 4 if options & TCPI_OPT_WSCALE else 0,
                      timestamp=s.getsockopt(SOL_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF,
                      flags=(FLAG_NODELAY if s.getsockopt(SOL_TCP, TCP_NODELAY) else 0)
                      | (FLAG_CORK if s.getsockopt(SOL_TCP, TCP_CORK) else 0))
        outq, write_seq, unsent = _send_queue(s, where)
        inq, rcv_nxt = _recv_queue(s, where)
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        window = REPAIR_WINDOW.unpack(s.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.size))
    except OSError as exc:
        raise from_oserror(exc, f"{where}: read the TCP connection in repair mode") from None
    finally:
        s.detach()
    fields.update(inq_seq=(rcv_nxt - len(inq)) & 0xFFFFFFFF, outq_seq=(write_seq - len(outq)) & 0xFFFFFFFF,
                  inq_len=len(inq), outq_len=len(outq), unsent_len=unsent, **dict(zip(WINDOW_FIELDS, window)))
    return TcpState(fields, inq, outq)


def _send_queue(s: socket.socket, where: str) -> tuple[bytes, int, int]:
    """(bytes not yet acknowledged, oldest first; write_seq; how many of the last were never sent).
    A peek of the send queue copies every buffer it holds whatever the length asked, so the
    length is SIOCOUTQ's, which acknowledgments can only lower meanwhile."""
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    write_seq = s.getsockopt(SOL_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
    queued = _ioctl_int(s.fileno(), SIOCOUTQ, f"{where}: SIOCOUTQ")
    _check_size(queued, where)
    data = s.recv(queued, socket.MSG_PEEK | socket.MSG_DONTWAIT) if queued else b""
    unsent = min(_ioctl_int(s.fileno(), SIOCOUTQNSD, f"{where}: SIOCOUTQNSD"), len(data))
    return data, write_seq, unsent


def _recv_queue(s: socket.socket, where: str) -> tuple[bytes, int]:
    """(bytes the program has not read, oldest first; the sequence number after them). rcv_nxt
    and SIOCINQ are two calls, so they are taken again until rcv_nxt holds still around SIOCINQ;
    the peek then takes exactly that many bytes from the queue's start."""
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    for _ in range(100):
        before = s.getsockopt(SOL_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        queued = _ioctl_int(s.fileno(), SIOCINQ, f"{where}: SIOCINQ")
        if s.getsockopt(SOL_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF == before:
            break
    else:
        raise Unsupported(f"{where}: data kept arriving on the TCP connection: its receive queue could not be read",
                          transient=True)
    _check_size(queued, where)
    if not queued:
        return b"", before
    peek_off = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    if peek_off >= 0:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)  # (a peek would start there, and move it)
    try:
        data = s.recv(queued, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    finally:
        if peek_off >= 0:
            s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, peek_off)
    if len(data) != queued:
        raise Unsupported(f"{where}: {queued} bytes queued on a TCP connection, of which only {len(data)} "
                          "can be read without taking them (urgent data?)")
    return data, before


def _check_size(n: int, where: str) -> None:
    from ..image.records import MAX_BLOB

    if n > MAX_BLOB // 2:
        raise Unsupported(f"{where}: more than {MAX_BLOB >> 21} MiB queued on a TCP connection")


# -- restore -------------------------------------------------------------------------------------

def _after(a: int, b: int) -> bool:
    """Sequence number `a` comes after `b` (the kernel's after(), modulo 2**32)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


def make(family: int, local: tuple, peer: tuple, f: dict, inq: bytes, outq: bytes, *, elapsed: float = 0.0,
         connect_wait: float = 3.0, sockopts: Iterable[tuple[int, int]] = (), where: str = "TCP connection") -> socket.socket:
    """A new socket that is the connection FILE_TCP `f` describes, bound to `local`, connected to
    `peer`, still in repair mode (see finish). The order is the kernel's: the socket options
    `sockopts` ((level, optname) pairs set to 1) first, since IPV6_V6ONLY is refused (EINVAL)
    and SO_REUSEPORT has no effect once the socket is bound; the queues' sequence numbers only
    while the socket is closed, TCP options only once it is ESTABLISHED and before anything was
    queued for sending, the window once the receive queue (rcv_nxt) is whole.

    connect() meets the connection's 4-tuple still in use when the original is not gone yet
    (`dump --kill` into a pipe kills once the image is read, while this already runs): it is
    tried again for up to `connect_wait` seconds. `elapsed`: seconds since the dump, which the
    timestamp clock is moved on by (below). `where` names the connection in errors."""
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Non-blocking throughout: a queue that does not fit its buffer fails the send at once
        # (EAGAIN) instead of waiting for acknowledgments that repair mode never gets
        s.setblocking(False)
        for level, opt in sockopts:
            s.setsockopt(level, opt, 1)
        s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON)
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, struct.pack("I", f["inq_seq"]))
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, struct.pack("I", f["outq_seq"]))
        s.bind(local)  # (repair mode forces the reuse of the address: a listener may hold the port)
        deadline = time.monotonic() + connect_wait
        while True:
            try:
                s.connect(peer)  # no SYN: straight to ESTABLISHED
                break
            except OSError as exc:
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        opts = [(TCPOPT_MSS, f["mss"])]
        if f["options"] & TCPI_OPT_WSCALE:
            opts.append((TCPOPT_WINDOW, f["snd_wscale"] | f["rcv_wscale"] << 16))
        if f["options"] & TCPI_OPT_SACK:
            opts.append((TCPOPT_SACK_PERM, 0))
        if f["options"] & TCPI_OPT_TIMESTAMPS:
            opts.append((TCPOPT_TIMESTAMP, 0))
        s.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, b"".join(REPAIR_OPT.pack(*o) for o in opts))
        if f["options"] & TCPI_OPT_TIMESTAMPS:
            s.setsockopt(SOL_TCP, TCP_TIMESTAMP, struct.pack("I", _timestamp(f["timestamp"], elapsed)))
        _make_room(s, len(inq), len(outq))
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        _fill(s, inq, "receive", where)
        # What was sent and not acknowledged goes in as sent (the retransmission timer takes it
        # from there); what was never sent is sent as new data once out of repair mode.
        sent = outq[:len(outq) - f["unsent_len"]]
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        _fill(s, sent, "send", where)
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        s.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.pack(*_window(f, (f["inq_seq"] + len(inq)) & 0xFFFFFFFF)))
    except BaseException:
        s.close()
        raise
    return s


def finish(s: socket.socket, f: dict, outq: bytes) -> None:
    """Out of repair mode: the connection is live. Only once every connection of the image is
    made (make), since leaving repair mode sends a window probe: one sent to a peer in the image
    not yet made would meet its listener, whose answer is a reset. Then TCP_NODELAY and TCP_CORK,
    and the bytes that were never sent, sent now as new data."""
    # (with the window probe: the peer learns at once where this end stands)
    s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
    if f["flags"] & FLAG_NODELAY:
        s.setsockopt(SOL_TCP, TCP_NODELAY, 1)
    if f["flags"] & FLAG_CORK:
        s.setsockopt(SOL_TCP, TCP_CORK, 1)
    if f["unsent_len"]:
        # The bytes fit: they were queued before; still, no watchdog runs this late in a restore,
        # so a send that cannot finish fails instead. (O_NONBLOCK is put back from the fd's flags:
        # a socket object made over an fd says "blocking" whatever they are.)
        flags = fcntl.fcntl(s.fileno(), fcntl.F_GETFL)
        s.settimeout(SEND_TIMEOUT)
        try:
            s.sendall(outq[len(outq) - f["unsent_len"]:])
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
        finally:
            fcntl.fcntl(s.fileno(), fcntl.F_SETFL, flags)


def _timestamp(dumped: int, elapsed: float) -> int:
    """The timestamp clock to start from: the dumped value moved on by the time since the dump.
    The original kept sending (acknowledgments) with its clock running until it was killed, and a
    peer drops segments whose timestamp is older than the last it saw (PAWS, RFC 7323): a clock
    started again at the dumped value would be behind by the dump's duration. Ahead is harmless.
    Bit 0 says the clock counts microseconds (else milliseconds), and stays."""
    if elapsed <= 0:
        return dumped
    step = int(elapsed * (1_000_000 if dumped & 1 else 1000))
    return ((dumped + step) & 0xFFFFFFFE) | (dumped & 1)


def _window(f: dict, rcv_nxt: int) -> tuple[int, ...]:
    """The image's window, made acceptable to TCP_REPAIR_WINDOW's checks: it was read a moment
    after the queues, so rcv_wup (and snd_wl1) may be past the rcv_nxt the image has when data
    arrived in between."""
    snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup = (f[k] for k in WINDOW_FIELDS)
    if _after(rcv_wup, rcv_nxt):
        rcv_wup = rcv_nxt
    if _after(snd_wl1, (rcv_nxt + rcv_wnd) & 0xFFFFFFFF):
        snd_wl1 = rcv_nxt
    return snd_wl1, snd_wnd, max(max_window, snd_wnd), rcv_wnd, rcv_wup


BUF_SLACK = 1 << 16


def buffer_for(n: int) -> int:
    """The buffer size (as SO_SNDBUF/SO_RCVBUF read it) that `n` queued bytes need. The kernel
    charges each buffer's truesize, data plus the sk_buff around it, against sk_sndbuf or
    sk_rcvbuf: at worst (1 KiB pieces, _fill) about twice the data."""
    return 2 * n + BUF_SLACK if n else 0


def _make_room(s: socket.socket, inq: int, outq: int) -> None:
    """Buffers big enough for the queues, where the new socket's are not (its defaults,
    tcp_rmem[1] and tcp_wmem[1], hold some 64 and 8 KiB): in repair mode nothing is ever
    acknowledged or read, so the send queue's fill would wait forever in sk_stream_wait_memory
    past sk_sndbuf, and the receive queue's gets ENOMEM past sk_rcvbuf. FORCE: past
    rmem_max/wmem_max, which the original's autotuned buffers may have been (the kernel doubles
    the value given). Buffers set so stay as set: the kernel then no longer tunes them (there is
    no way back to the defaults' autotuning), and shrinking them below what is queued would
    close the receive window, or hold up the sender, until the program has read or the peer
    acknowledged it all. A connection with small queues keeps its defaults, autotuned."""
    for opt, force, n in ((socket.SO_RCVBUF, SO_RCVBUFFORCE, inq), (socket.SO_SNDBUF, SO_SNDBUFFORCE, outq)):
        need = buffer_for(n)
        if need > s.getsockopt(socket.SOL_SOCKET, opt):
            s.setsockopt(socket.SOL_SOCKET, force, min(need // 2 + 1, 0x3FFFFFFF))


def _fill(s: socket.socket, data: bytes, queue: str, where: str) -> None:
    """Queue `data` in repair mode (the socket non-blocking). The receive queue takes each send()
    as one buffer of that size, which the allocator may refuse (ENOMEM) when large: then in
    smaller pieces. A queue that still does not fit fails, naming its size and its buffer's."""
    chunk = max(len(data), 1)
    view = memoryview(data)
    while view:
        try:
            n = s.send(view[:chunk])
        except OSError as exc:
            if exc.errno in (errno.ENOMEM, errno.ENOBUFS) and chunk > 1024:
                chunk //= 2
                continue
            opt = socket.SO_RCVBUF if queue == "receive" else socket.SO_SNDBUF
            raise KernelError(f"{where}: {len(data)} bytes do not fit the TCP connection's {queue} queue: "
                              f"{len(data) - len(view)} went in, its buffer is "
                              f"{s.getsockopt(socket.SOL_SOCKET, opt)} bytes", exc.errno or errno.ENOMEM) from None
        view = view[n:]
