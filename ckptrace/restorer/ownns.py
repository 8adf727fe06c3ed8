"""The namespaces restore does not make: a user namespace a process had of its own (TASK_NS), a
cgroup namespace of its own in an image made before its root was recorded (restorer/cgroupns.py
makes one from it), and a time namespace of its own in an image made before its name and offsets
were (restorer/timens.py makes one from them). Restore would put the process in the controller's,
where it would lose it without a word: in a user namespace of its own, uid 0 inside is some host
uid N with its capabilities over that namespace only; restored in the controller's it is host uid
N with its capabilities over the host (files of uid N, and whatever its capabilities open). In the
host's cgroup namespace it sees the host's cgroup paths instead of its own `/`; in the host's time
namespace its CLOCK_MONOTONIC and CLOCK_BOOTTIME jump by its namespace's offsets. So restore (and
`dump --kill`, which runs the same validation before it kills) refuses such an image, and a plain
dump says so on stderr.
"""

from __future__ import annotations

from ..image.reader import Image, Task
from ..image.records import CLONE_NEWCGROUP, CLONE_NEWTIME, CLONE_NEWUSER, NS_TIME_CHILDREN


def reasons(t: Task) -> list[tuple[int, str]]:
    """(CLONE_NEW* bit, why restore cannot keep it) for each namespace of process `t`'s own that
    restore does not make, in the order user, cgroup, time. Each reason reads after "it was in"
    or "it is in". A cgroup namespace TASK_NS does not name (nor its root), and a time namespace
    whose name and offsets it does not hold, are those of an older image."""
    own, time_offsets = t.own_ns or 0, t.time_offsets
    out = []
    if own & CLONE_NEWUSER:
        host_uid = f"host uid {t.creds['euid']}" if t.creds else "its host uid"
        out.append((CLONE_NEWUSER, "a user namespace of its own: restore does not make user namespaces, it would come "
                                   f"back as {host_uid} with its capabilities over the host instead of over its "
                                   "namespace only"))
    if own & CLONE_NEWCGROUP and not t.cgroup_ns:
        out.append((CLONE_NEWCGROUP, "a cgroup namespace of its own (unshare -C, or a container's: Docker's on cgroup "
                                     "v2) whose root the image does not hold (made by an older ckptrace: dump it "
                                     "again): restore could not make it, it would see the host's cgroup paths in "
                                     "/proc/self/cgroup instead of its own /"))
    if own & CLONE_NEWTIME and t.time_ns is None:
        offsets = f"offsets {time_offsets}" if time_offsets else "offsets unknown"
        older = "whose name the image does not hold (made by an older ckptrace: dump it again)"
        if t.ns_flags & NS_TIME_CHILDREN:
            what = (f"a time namespace of its own for its children to enter (unshare(CLONE_NEWTIME)), with {offsets}, "
                    f"{older}: restore could not make it, its children would be in the host's")
        else:
            what = (f"a time namespace of its own, with {offsets}, {older}: restore could not make it, its "
                    "CLOCK_MONOTONIC and CLOCK_BOOTTIME would jump by them")
        out.append((CLONE_NEWTIME, what))
    return out


def problems(img: Image) -> list[str]:
    """One refusal per kind of namespace restore does not make, naming the first process that
    had one (its pid in the namespace, and on the host at dump time) and how many more did."""
    host = {e["pid"]: e["hostpid"] for e in img.tree}
    seen: dict[int, tuple[str, int]] = {}  # bit -> (the first one's words, how many had it)
    for t in img.processes():
        for bit, why in reasons(t):
            first, n = seen.get(bit, (f"process {t.tid} (host pid {host.get(t.tid, '?')} at the dump) was in {why}", 0))
            seen[bit] = (first, n + 1)
    return [first + (f" (and {n - 1} other process{'es' if n > 2 else ''} in one too)" if n > 1 else "")
            for first, n in seen.values()]
