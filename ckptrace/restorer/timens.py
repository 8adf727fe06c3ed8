"""Time namespaces of their own, made again (TASK_NS's eighth string: Task.time_ns).

A process in a time namespace of its own reads CLOCK_MONOTONIC and CLOCK_BOOTTIME plus the
namespace's offsets. unshare(CLONE_NEWTIME) makes a new one for the caller's children
(time_for_children), not for the caller; its offsets can be written (/proc/PID/timens_offsets)
only until a process first enters it; setns(CLONE_NEWTIME) makes a namespace both the caller's
own and its children's. So no call gives a process a time_for_children that exists already and
that it is not in: a process that had made one for its children only (NS_TIME_CHILDREN, or one
that unshared again inside its own) makes it again itself, and is that namespace's maker; each
other namespace is made by its first process. The maker calls unshare(CLONE_NEWTIME) by
injection, the controller writes the offsets, then every process in the namespace (the maker
too, when it was in it) setns()es into the maker's time_for_children, through an fd the kernel
gives it for it: ioctl(PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE, Linux 6.11) on a pidfd_open of the
maker by its pid in the new namespace (/proc, which a chroot may hide, is not needed). A
namespace whose maker is in another one of the image's is made after that one.

When: setns into a time namespace needs a single-threaded caller, and unshare and setns need
CAP_SYS_ADMIN (the writer of the offsets CAP_SYS_TIME, the controller's): at the point where
cgroupns.make runs, for the same reasons (restore._make_time_namespaces), with every process
seized, one thread (its threads, cloned later, share the namespaces of the leader that clones
them) and the controller's credentials. It is before the memory is rebuilt, and that is safe:
setns switches the process's [vvar] to the namespace's (the kernel zaps its pages, which fault
in again as the namespace's), and the rebuild moves [vvar] with [vdso] where the image had them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..image.reader import Image, Task
from ..image.records import CLONE_NEWTIME
from ..kernel import procfs
from ..kernel.sys import PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE
from ..kernel.sysno import SYS_close, SYS_ioctl, SYS_pidfd_open, SYS_setns, SYS_unshare

NS_PER_S = 1_000_000_000
CLOCKS = (("monotonic", time.CLOCK_MONOTONIC), ("boottime", time.CLOCK_BOOTTIME))


@dataclass
class TimeNs:
    """One of the image's own time namespaces, by its TASK_NS name (its number in the image)."""
    name: int
    offsets: tuple[int, int]  # monotonic, boottime, in ns
    members: list[Task] = field(default_factory=list)  # the processes in it, in TREE order
    makers: list[Task] = field(default_factory=list)  # the processes making their children in it, not in it

    @property
    def maker(self) -> Task:
        return self.makers[0] if self.makers else self.members[0]


def namespaces(img: Image) -> dict[int, TimeNs]:
    """The image's time namespaces that restore makes, by name (the first process's offsets
    where members disagree: problems names that)."""
    out: dict[int, TimeNs] = {}
    for t in img.processes():
        if not (t.own_ns or 0) & CLONE_NEWTIME or t.time_ns is None:
            continue
        (active, *active_offsets), (children, *children_offsets) = t.time_ns
        if active:
            out.setdefault(active, TimeNs(active, tuple(active_offsets))).members.append(t)
        if children and children != active:
            out.setdefault(children, TimeNs(children, tuple(children_offsets))).makers.append(t)
    return out


def order(spaces: dict[int, TimeNs]) -> tuple[list[TimeNs], list[TimeNs]]:
    """The namespaces in an order that makes each after the one its maker is in (the maker
    must be in it when it unshares), and those left that no order makes (a damaged image)."""
    done: set[int] = set()
    out: list[TimeNs] = []
    left = list(spaces.values())
    while left:
        ready = [ns for ns in left if _maker_in(ns) in (0, ns.name) or _maker_in(ns) in done]
        if not ready:
            break
        out += ready
        done.update(ns.name for ns in ready)
        left = [ns for ns in left if ns.name not in done]
    return out, left


def _maker_in(ns: TimeNs) -> int:
    """The name of the time namespace ns's maker is in (0: the controller's)."""
    return ns.maker.time_ns[0][0]


def problems(img: Image) -> list[str]:
    """Why the image's time namespaces cannot be made here."""
    spaces = namespaces(img)
    if not spaces:
        return []
    if not os.path.exists("/proc/self/ns/time"):
        return [f"process {next(iter(spaces.values())).maker.tid} had a time namespace of its own, and this kernel "
                "has no time namespaces (CONFIG_TIME_NS)"]
    out = []
    for t in img.processes():
        if (t.own_ns or 0) & CLONE_NEWTIME and t.time_ns is not None and t.time_ns[0][0] and not t.time_ns[1][0]:
            out.append(f"process {t.tid} was in a time namespace of its own and made its children in the dumper's: "
                       "no call makes that again")
    for ns in spaces.values():
        said = [(t, t.time_ns[0][1:]) for t in ns.members] + [(t, t.time_ns[1][1:]) for t in ns.makers]
        odd = next((t for t, offsets in said if tuple(offsets) != ns.offsets), None)
        if odd is not None:
            out.append(f"processes {said[0][0].tid} and {odd.tid} share a time namespace whose offsets they "
                       "disagree on")
        if len(ns.makers) > 1:
            out.append(f"processes {ns.makers[0].tid} and {ns.makers[1].tid} both made their children in one time "
                       "namespace that neither was in: only one process can make a namespace for its children")
        for (clock, clock_id), offset in zip(CLOCKS, ns.offsets):
            now = time.clock_gettime_ns(clock_id)
            if now + offset < 0:
                out.append(f"process {ns.maker.tid}'s time namespace has a {clock} offset of {offset / NS_PER_S:.0f} "
                           f"s, and this host's clock reads {now / NS_PER_S:.0f} s: the kernel refuses an offset "
                           "that puts a clock below zero")
    _, unordered = order(spaces)
    if unordered:
        out.append(f"the time namespaces of processes {', '.join(str(tid) for tid in sorted(ns.maker.tid for ns in unordered))} are each "
                   "made by a process in another of them: none can be made first")
    return out


def make(img: Image, host: dict[int, int], injectors: dict) -> None:
    """Make each of the image's time namespaces (see the module's doc). `host`: image pid ->
    host pid; `injectors`: image pid -> Injector of each held process, one thread with the
    controller's credentials."""
    from .memory import check

    made, _ = order(namespaces(img))
    for ns in made:
        maker = ns.maker.tid
        check(injectors[maker].syscall(SYS_unshare, CLONE_NEWTIME), f"unshare(CLONE_NEWTIME) in {maker}")
        procfs.set_timens_offsets(host[maker], {clock: offset for (clock, _), offset in zip(CLOCKS, ns.offsets)})
        for t in ns.members:
            inj = injectors[t.tid]
            pidfd = check(inj.syscall(SYS_pidfd_open, maker, 0), f"pidfd_open({maker}) in {t.tid}")
            try:
                nsfd = check(inj.syscall(SYS_ioctl, pidfd, PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE, 0),
                             f"ioctl(PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE) of {maker} in {t.tid} (Linux 6.11 and "
                             "later have it)")
                try:
                    check(inj.syscall(SYS_setns, nsfd, CLONE_NEWTIME),
                          f"setns into the time namespace made by {maker} in {t.tid}")
                finally:
                    inj.syscall(SYS_close, nsfd)
            finally:
                inj.syscall(SYS_close, pidfd)
