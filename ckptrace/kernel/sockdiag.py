"""Socket state from the kernel's sock_diag netlink interface, through pyroute2.

One query per family per dump (all sockets of the network namespace), indexed by inode, so a
dump with many sockets costs a handful of netlink round trips. pyroute2 is imported here, only
when a dump meets a socket.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from ..errors import HostUnsupported

UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS, UDIAG_SHOW_RQLEN = 1, 2, 4, 8, 0x10


@dataclass
class SockInfo:
    family: int
    type: int
    protocol: int
    state: int
    ino: int
    peer_ino: int = 0
    backlog: int = 0  # listening sockets: the listen() backlog the kernel keeps
    shutdown: int = 0
    # a unix client whose connection a listener has not accepted yet: the listener's inode, and
    # the client's place in its accept queue (1: accepted first)
    pending_on: int = 0
    pending_at: int = 0
    unread: int = 0  # unix: bytes this socket sent that its peer's queue still holds (wmem)
    # listeners: the connections waiting in the accept queue; a unix one's as its clients' inodes
    # (in queue order), a TCP one's as a count (idiag_rqueue of a listener)
    accept_queue: int = 0
    clients: list[int] = field(default_factory=list)
    # unix, bound to a path: the (st_dev, st_ino) of the socket file bind() made, whether or not a
    # path still names it (UNIX_DIAG_VFS; st_dev as stat gives it)
    vfs: tuple[int, int] | None = None


def _attrs(msg) -> dict:
    return {k: v for k, v in msg.get("attrs", [])}


def _rqlen(rq) -> tuple[int, int]:
    """UNIX_DIAG_RQLEN (rqueue, wqueue), as pyroute2 gives it: a dict, or a pair."""
    if isinstance(rq, dict):
        return rq.get("udiag_rqueue", 0), rq.get("udiag_wqueue", 0)
    if isinstance(rq, (tuple, list)) and len(rq) > 1:
        return rq[0], rq[1]
    return 0, 0


def _vfs(raw) -> tuple[int, int] | None:
    """UNIX_DIAG_VFS as (st_dev, st_ino): the kernel gives its own dev_t (major << 20 | minor),
    not the encoding stat returns."""
    if not raw:
        return None
    ino, dev = raw.get("udiag_vfs_ino", 0), raw.get("udiag_vfs_dev", 0)
    return (os.makedev(dev >> 20, dev & 0xFFFFF), ino) if ino else None


def _icons(raw) -> list[int]:
    """UNIX_DIAG_ICONS as pyroute2 gives it ("7a:b2:31:00:..." hex bytes, or bytes): u32 inodes."""
    if not raw:
        return []
    data = bytes.fromhex(raw.replace(":", "")) if isinstance(raw, str) else bytes(raw)
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data) - len(data) % 4, 4)]


def _query_all() -> dict[int, SockInfo]:
    try:
        from pyroute2 import DiagSocket
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as exc:  # pragma: no cover - pinned dependency
        raise HostUnsupported(f"pyroute2 is missing ({exc}): run scripts/setup.sh") from None
    out: dict[int, SockInfo] = {}
    listeners: list[tuple[int, list[int]]] = []
    with DiagSocket() as ds:
        ds.bind()
        show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN
        for m in ds.get_sock_stats(family=socket.AF_UNIX, show=show):
            a = _attrs(m)
            _, wqueue = _rqlen(a.get("UNIX_DIAG_RQLEN"))
            backlog = wqueue  # (a listener's: its listen() backlog; another's: what it sent, unread)
            out[m["udiag_ino"]] = SockInfo(socket.AF_UNIX, m["udiag_type"], 0, m["udiag_state"],
                                           m["udiag_ino"], a.get("UNIX_DIAG_PEER", 0) or 0,
                                           backlog if m["udiag_state"] == 10 else 0,
                                           a.get("UNIX_DIAG_SHUTDOWN", 0) or 0,
                                           unread=wqueue if m["udiag_state"] != 10 else 0,
                                           vfs=_vfs(a.get("UNIX_DIAG_VFS")))
            if m["udiag_state"] == 10:
                listeners.append((m["udiag_ino"], _icons(a.get("UNIX_DIAG_ICONS"))))
        for listener, clients in listeners:
            # (ICONS: the clients whose connections wait in its accept queue, in queue order)
            out[listener].clients, out[listener].accept_queue = clients, len(clients)
            for at, client in enumerate(clients, start=1):
                if client in out:
                    out[client].pending_on, out[client].pending_at = listener, at
        for fam in (socket.AF_INET, socket.AF_INET6):
            for proto, stype in ((socket.IPPROTO_TCP, socket.SOCK_STREAM), (socket.IPPROTO_UDP, socket.SOCK_DGRAM)):
                try:
                    msgs = ds.get_sock_stats(family=fam, protocol=proto)
                except (NetlinkError, OSError):  # a family the kernel lacks (no IPv6) is not fatal
                    continue
                for m in msgs:
                    a = _attrs(m)
                    ino = m["idiag_inode"]
                    if not ino:
                        continue
                    listening = m["idiag_state"] == 10 and proto == socket.IPPROTO_TCP
                    # (a TCP listener's rqueue: its accept queue; its wqueue: the listen() backlog)
                    out[ino] = SockInfo(fam, stype, proto, m["idiag_state"], ino, 0,
                                        m["idiag_wqueue"] if listening else 0,
                                        a.get("INET_DIAG_SHUTDOWN", 0) or 0,
                                        accept_queue=m["idiag_rqueue"] if listening else 0)
    return out


def inet_inodes(proto: int, port: int, host: str, peer: tuple | None = None) -> set[int]:
    """The inodes of this network namespace's sockets of `proto` (TCP or UDP) that a bind of
    (`host`, `port`) meets: on that port, with that address or a wildcard on either side, in both
    families (a v6 wildcard takes v4 too). With `peer` ((host, port, ...)), the connections to
    it only: what holds that 4-tuple. For naming who is in the way; best effort ({} on failure)."""
    from pyroute2 import DiagSocket
    from pyroute2.netlink.exceptions import NetlinkError

    wild = ("0.0.0.0", "::")
    out: set[int] = set()
    try:
        with DiagSocket() as ds:
            ds.bind()
            for fam in (socket.AF_INET, socket.AF_INET6):
                for m in ds.get_sock_stats(family=fam, protocol=proto):
                    if not m["idiag_inode"] or m["idiag_sport"] != port:
                        continue
                    if peer is not None:
                        if (m["idiag_src"], m["idiag_dst"], m["idiag_dport"]) == (host, peer[0], peer[1]):
                            out.add(m["idiag_inode"])
                    elif m["idiag_src"] == host or m["idiag_src"] in wild or host in wild:
                        out.add(m["idiag_inode"])
    except (NetlinkError, OSError):
        pass
    return out


def preload() -> None:
    """Import pyroute2 now: its import costs ~0.1 s, which must not count against frozen time."""
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        pass


def _query_in_netns(pid: int) -> dict[int, SockInfo]:
    """sock_diag answers for the caller's network namespace only: ask from inside the target's."""
    from .netns import call_in

    return call_in(pid, _query_all, "sock_diag")


class SockTable:
    """Lazily loaded sock_diag view, one per network namespace met."""

    def __init__(self):
        self._by_ns: dict[int | None, dict[int, SockInfo]] = {}

    def get(self, ino: int, pid: int | None = None) -> SockInfo | None:
        from . import procfs

        ns = procfs.ns_inode(pid, "net") if pid else None
        own = procfs.ns_inode(os.getpid(), "net")
        key = None if ns is None or ns == own else ns
        if key not in self._by_ns:
            self._by_ns[key] = _query_all() if key is None else _query_in_netns(pid)
        return self._by_ns[key].get(ino)
