"""Network namespaces: what one holds (its interfaces, addresses and routes, read from inside it
through pyroute2, for the dump), and a new one made and entered by the controller (restore).
(call_in also reads from inside a cgroup or time namespace, for the dump: nsinfo.collect_cgroup,
nsinfo._collect_time.)

A network namespace is per thread: setns(CLONE_NEWNET) and unshare(CLONE_NEWNET) move the
calling thread only, and a socket belongs for good to the namespace its creator was in when it
was made. So restore makes its sockets with the controller's main thread moved into the new
namespace for a moment (`NetNs.entered`), and always moves it back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pickle
import socket
import struct
from dataclasses import dataclass, field

from ..errors import KernelError, check_errno
from ..image.records import CLONE_NEWCGROUP, CLONE_NEWTIME
from .sys import libc

CLONE_NEWNET = 0x40000000
IFF_UP = 0x1
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFREQ_FLAGS = struct.Struct("<16sH22x")  # struct ifreq: ifr_name, ifr_flags (x86_64: little-endian), 40 bytes
LO_ADDRESSES = {(socket.AF_INET, "127.0.0.1", 8), (socket.AF_INET6, "::1", 128)}  # what lo gets when up


@dataclass
class NetView:
    """What a network namespace holds, as the dump needs it: whether lo is up, and in words what
    a new namespace with nothing but lo (restore's) would lack: other interfaces, addresses on lo
    other than its own, routes of the main table that are not an interface's."""

    lo_up: bool = False
    missing: list[str] = field(default_factory=list)


def _view() -> NetView:  # pragma: no cover - runs in the forked child of call_in
    from pyroute2 import IPRoute

    out = NetView()
    with IPRoute() as ipr:
        names, others = {}, []
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or f"#{link['index']}"
            names[link["index"]] = name
            if name == "lo":
                out.lo_up = bool(link["flags"] & IFF_UP)
                continue
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            others.append(link["index"])
            out.missing.append(f"interface {name}" + (f" ({kind})" if kind else ""))
        addrs = []
        for a in ipr.get_addr():
            addr = a.get_attr("IFA_ADDRESS")
            if (a["family"], addr, a["prefixlen"]) in LO_ADDRESSES and names.get(a["index"]) == "lo":
                continue
            if a["family"] == socket.AF_INET6 and a["index"] in others and str(addr).startswith("fe80:"):
                continue  # (an interface's link-local address goes with it)
            addrs.append(f"{addr}/{a['prefixlen']} on {names.get(a['index'], a['index'])}")
        if addrs:
            out.missing.append("address" + ("es " if len(addrs) > 1 else " ") + ", ".join(addrs))
        routes = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=fam, table=254):
                oif = r.get_attr("RTA_OIF")
                if oif in others and r.get_attr("RTA_GATEWAY") is None:
                    continue  # (a route an address of that interface made)
                dst = f"{r.get_attr('RTA_DST')}/{r['dst_len']}" if r["dst_len"] else "default"
                via = r.get_attr("RTA_GATEWAY")
                routes.append(dst + (f" via {via}" if via else "") + f" dev {names.get(oif, oif)}")
        if routes:
            out.missing.append("route" + ("s " if len(routes) > 1 else " ") + ", ".join(routes))
    return out


# the namespaces call_in joins: /proc/PID/ns name -> (setns's CLONE_NEW* type, in words)
CALL_IN_KINDS = {"net": (CLONE_NEWNET, "network"), "cgroup": (CLONE_NEWCGROUP, "cgroup"),
                 "time": (CLONE_NEWTIME, "time")}


def call_in(pid: int, fn, what: str, proc: str = "/proc", kind: str = "net"):
    """fn() run in the network namespace (or the CALL_IN_KINDS `kind`) of host pid `pid`, by a
    forked child that joins it (setns): its answer comes back pickled through a pipe. Raises
    KernelError when the child cannot join or fn fails there (the child's own errno does not
    reach us: EIO)."""
    nstype, words = CALL_IN_KINDS[kind]
    nsfd = os.open(f"{proc}/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        r, w = os.pipe()
    except OSError:
        os.close(nsfd)
        raise
    try:
        child = os.fork()
    except OSError:
        for fd in (nsfd, r, w):
            os.close(fd)
        raise
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            os.close(r)
            if libc.setns(nsfd, nstype) == 0:
                data = pickle.dumps(fn())
                with os.fdopen(w, "wb") as f:
                    f.write(data)
                status = 0
        finally:
            os._exit(status)
    os.close(w)
    os.close(nsfd)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    if status != 0 or not data:
        raise KernelError(f"{what} in the {words} namespace of pid {pid} failed", errno.EIO)
    return pickle.loads(data)


def view(pid: int, proc: str = "/proc") -> NetView:
    """The network namespace of host pid `pid`, as NetView says."""
    return call_in(pid, _view, "listing the interfaces", proc)


def _setns(fd: int, what: str) -> None:
    check_errno(libc.setns(fd, CLONE_NEWNET), what)


def set_lo_up() -> None:
    """Bring lo up in the calling thread's network namespace (SIOCSIFFLAGS on a socket made
    there), as `ip link set lo up` does; the kernel gives it 127.0.0.1/8 and ::1 then."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = bytearray(IFREQ_FLAGS.pack(b"lo", 0))
        fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
        flags = IFREQ_FLAGS.unpack(req)[1]
        req = bytearray(IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, req)


class NetNs:
    """A new network namespace made by the controller for a restore, held by an fd: lo up or
    down as the image says, nothing else. `entered()` runs a block with the calling thread in
    it; `close()` lets it go (the restored init keeps it alive once in it)."""

    def __init__(self, lo_up: bool):
        self.fd = -1
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            check_errno(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) for the restored namespace")
            try:
                self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                if lo_up:
                    set_lo_up()
            finally:
                _setns(own, "setns back into the controller's network namespace")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(own)
        self.ino = os.fstat(self.fd).st_ino

    @contextlib.contextmanager
    def entered(self):
        """The block runs with this thread in the new namespace: what it makes (sockets, a
        clone3'd child) belongs to it. Back in the controller's own afterwards, errors too."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.fd, "setns into the restored namespace's network namespace")
            try:
                yield
            finally:
                _setns(own, "setns back into the controller's network namespace")
        finally:
            os.close(own)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def maybe_entered(netns: "NetNs | None"):
    """netns.entered(), or nothing when the restore keeps the controller's namespace."""
    if netns is None:
        yield
    else:
        with netns.entered():
            yield
