"""The namespaces other than pid a process lives in (TASK_NS): which of mount, uts, ipc and net
are its own rather than the dumper's, and its host and domain names (uname, injected: the uts
namespace is the task's, not ours).

Restore makes new uts, ipc and network namespaces for an image whose init had its own (the
names set again; the network namespace with its lo only, up or down as it was), and a new mount
namespace with a proc of its own at /proc for one whose init's mount namespace had one
(docs/restore.md). One uts, one ipc and one network namespace per image: a process in another
one than its init's is refused. Of init's own network namespace the dump records whether lo was
up and, in words, what a new namespace with only lo would lack (other interfaces, addresses,
routes); of its own mount namespace, whether /proc there was the namespace's own and, in words,
the mounts the dumper's mount namespace does not have (which restore does not make); the dump
and the restore note both.

Of user namespaces, which restore does not make, the dump records whether a process had one of
its own: restore, and so `dump --kill`, refuses such an image (restorer/ownns.py), and a plain
dump notes it. Of a cgroup namespace of its own it records which of the image's processes share
it and its root in each hierarchy, from which restore makes it again (restorer/cgroupns.py); of a
time namespace of its own (or one made for its children only), which of the image's processes
are in it or make their children in it, and its clock offsets, from which restore makes it again
(restorer/timens.py). A thread in another one than its leader is refused, as for the other
kinds.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections import Counter
from typing import TYPE_CHECKING

from ..errors import CkptError, Unsupported
from ..image.records import (CLONE_NEWCGROUP, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWTIME, MNT_MISSING_MAX,
                              NET_MISSING_MAX, NS_FLAG_NAMES, NS_LO_DOWN, NS_OWN_PROC, NS_TIME_CHILDREN,
                              NAMED_TEXTS, TIME_OFFSETS_MAX, RecType)
from ..image.render import listed
from ..kernel import netns, procfs
from ..kernel.ptrace import Injector, checked
from .context import DumpContext
from ..kernel.sysno import SYS_uname

if TYPE_CHECKING:
    from .task import ProcState

UTSNAME_LEN = 65  # six fields of 65 bytes: sysname, nodename, release, version, machine, domainname


def _ino(pid: int | str, name: str, proc: str) -> int:
    return os.stat(f"{proc}/{pid}/ns/{name}").st_ino


def _kinds(proc: str) -> dict[int, str]:
    """NS_FLAG_NAMES, less the kinds this kernel has not (no /proc/self/ns/time without
    CONFIG_TIME_NS, say): there every process shares the one there is."""
    return {flag: name for flag, name in NS_FLAG_NAMES.items() if os.path.exists(f"{proc}/self/ns/{name}")}


def check(procs: list["ProcState"], proc: str) -> None:
    """The kinds restore recreates (uts, ipc, net) must be one per image (every process comes
    back in init's); an IPC namespace of its own must not hold what restore cannot make again in
    the new one."""
    init = procs[0]
    for p in procs[1:]:
        for name in ("uts", "ipc", "net"):
            if _ino(p.hostpid, name, proc) != _ino(init.hostpid, name, proc):
                raise Unsupported(f"pid {p.nspid} (host pid {p.hostpid}) is in another {name} namespace "
                                  "than the namespace's init: one of each per image is supported")
    if _ino(init.hostpid, "ipc", proc) != _ino("self", "ipc", proc):
        lost = sysv_objects(init.hostpid, proc)
        if lost:
            raise Unsupported(f"the namespace's IPC namespace holds {', '.join(lost)}, which ckptrace cannot "
                              "checkpoint (restore makes a new IPC namespace, without them)")


# The namespaces of a thread that must be its leader's, as /proc/PID/ns names them, in words
_THREAD_NS = (("mnt", "mnt namespace"), ("uts", "uts namespace"), ("ipc", "ipc namespace"), ("net", "net namespace"),
              ("user", "user namespace"), ("cgroup", "cgroup namespace"), ("time", "time namespace"),
              ("time_for_children", "time namespace for its children"))


def check_threads(procs: list["ProcState"], ns_pid: dict[int, int], proc: str) -> None:
    """Every thread must be in its leader's namespaces (and make its children in its leader's
    time namespace): restore makes a process's threads by clone in its leader, where they share
    its namespaces (a thread's own, from unshare in that thread, would be lost). `ns_pid`: host
    tid -> tid inside the namespace."""
    kinds = [(name, words) for name, words in _THREAD_NS if os.path.exists(f"{proc}/self/ns/{name}")]
    for p in procs:
        for t in p.threads[1:]:
            for name, words in kinds:
                if _ino(f"{p.hostpid}/task/{t.hosttid}", name, proc) != _ino(p.hostpid, name, proc):
                    raise Unsupported(f"thread {ns_pid.get(t.hosttid, '?')} (host tid {t.hosttid}) of process "
                                      f"{p.nspid} (host pid {p.hostpid}) is in another {words} than its "
                                      f"process's leader (unshare in that thread): restore makes every thread in "
                                      "its process's, and ckptrace cannot checkpoint it")


def sysv_objects(pid: int, proc: str) -> list[str]:
    """What pid's IPC namespace holds that restore would lose, in words: SysV semaphore sets,
    message queues, and shared memory segments nobody has attached (attached ones come back as
    the processes' shared memory, docs/restore.md), and POSIX message queues (an open one is
    refused as an fd already; one no fd holds lives on in the namespace's mqueue filesystem).
    /proc/sysvipc shows the reader's IPC namespace, and a mqueue filesystem mounted shows its
    mounter's, so both are read from inside (nsenter; the mount on a temporary directory in a
    mount namespace of its own, private: nothing outside sees it)."""
    script = ("for f in sem msg shm; do echo \"== $f\"; cat /proc/sysvipc/$f; done; echo '== mq'; "
              "unshare -m --propagation private sh -c "
              "'d=$(mktemp -d) && mount -t mqueue ckptrace-mq \"$d\" && ls -A \"$d\"; umount \"$d\"; rmdir \"$d\"'")
    try:
        out = subprocess.run(["nsenter", f"--ipc={proc}/{pid}/ns/ipc", "sh", "-c", script],
                             capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unsupported(f"cannot list the SysV IPC objects of pid {pid}'s IPC namespace: {exc}") from None
    rows: dict[str, list[list[str]]] = {}
    kind = ""
    for line in out.splitlines():
        if line.startswith("== "):
            kind = line[3:]
            rows[kind] = []
        elif kind == "mq" and line:
            rows[kind].append([line])  # (a queue's name, which may hold spaces)
        elif (cols := line.split()) and cols[0] != "key":
            rows[kind].append(cols)
    unattached = [r for r in rows.get("shm", []) if len(r) > 6 and r[6] == "0"]
    out_words = []
    for n, one, many in ((len(rows.get("sem", [])), "a SysV semaphore set", "SysV semaphore sets"),
                         (len(rows.get("msg", [])), "a SysV message queue", "SysV message queues"),
                         (len(unattached), "a SysV shared memory segment no process has attached",
                          "SysV shared memory segments no process has attached")):
        if n:
            out_words.append(one if n == 1 else f"{n} {many}")
    queues = ["/" + r[0] for r in rows.get("mq", [])]
    if queues:
        out_words.append(f"{'a POSIX message queue' if len(queues) == 1 else f'{len(queues)} POSIX message queues'} "
                         f"({listed(queues, 3)})")
    return out_words


def collect(p: "ProcState", inj: Injector, proc: str) -> None:
    kinds = _kinds(proc)
    p.own_ns = sum(flag for flag, name in kinds.items() if _ino(p.hostpid, name, proc) != _ino("self", name, proc))
    if CLONE_NEWTIME in kinds:
        _collect_time(p, proc)
    with inj.scratch(6 * UTSNAME_LEN) as (addr, mem):
        checked(inj.syscall(SYS_uname, addr), f"uname in {p.hostpid}")
        mem.seek(addr)
        raw = mem.read(6 * UTSNAME_LEN)
    p.nodename = raw[UTSNAME_LEN:2 * UTSNAME_LEN].split(b"\0", 1)[0]
    p.domainname = raw[5 * UTSNAME_LEN:].split(b"\0", 1)[0]


def _collect_time(p: "ProcState", proc: str) -> None:
    """A time namespace of p's own: the one it is in, or (unshare(CLONE_NEWTIME) without a
    fork, or `unshare -T` before it execs) only the one its children will enter, which restore
    would lose as well (NS_TIME_CHILDREN). Its clock offsets are kept in words, and both
    namespaces with their offsets for collect_time (p.time_seen)."""
    ours = _ino("self", "time", proc)
    its = _ino(p.hostpid, "time", proc)
    entered = its != ours
    for_children = _ino(p.hostpid, "time_for_children", proc)
    if not entered and for_children == ours:
        return
    offsets = procfs.timens_offsets(p.hostpid, proc)
    if not any(offsets.values()) and (not entered or for_children == its):
        p.own_ns &= ~CLONE_NEWTIME  # (no offsets: its clocks read the same where restore puts it)
        return
    p.own_ns |= CLONE_NEWTIME
    words = offset_words(offsets)
    children = (for_children, offsets)
    if not entered:
        p.ns_flags |= NS_TIME_CHILDREN
        p.time_seen = ((0, {}), children)
    elif for_children != its:
        # (timens_offsets shows its children's namespace: the one it is in is read from inside it)
        words += " (of the time namespace its children enter, not of the one it is in)"
        inside = netns.call_in(p.hostpid, functools.partial(procfs.timens_offsets, "self", proc),
                               "reading /proc/self/timens_offsets", proc, kind="time")
        p.time_seen = ((its, inside), children)
    else:
        p.time_seen = (children, children)
    p.time_offsets = _cut(words, TIME_OFFSETS_MAX)


def collect_time(procs: list["ProcState"]) -> None:
    """For each process with a time namespace of its own (after collect): its time namespace and
    its children's, each by a number (one namespace, one number: from 1, in the order `procs`
    first name them; 0 for the dumper's), with their offsets in ns (p.time_ns), which restore
    makes them again from. (Not named after a process, as a cgroup namespace is: one process may
    be the first of two, the one it is in and its children's.)"""
    numbers: dict[int, int] = {}  # time namespace inode -> its number
    for p in procs:
        if not p.own_ns & CLONE_NEWTIME or not p.time_seen:
            continue
        lines = []
        for ino, offsets in p.time_seen:
            name = numbers.setdefault(ino, len(numbers) + 1) if ino else 0
            lines.append(f"{name} {offsets.get('monotonic', 0)} {offsets.get('boottime', 0)}\n")
        p.time_ns = "".join(lines).encode()


def offset_words(offsets: dict[str, int]) -> str:
    """Clock offsets in ns (procfs.timens_offsets) in words: "monotonic +1000000 s, boottime
    +2000000 s" (fractions of a second shown only when there are some)."""
    words = []
    for clock, ns in offsets.items():
        secs, frac = divmod(abs(ns), 1_000_000_000)
        shown = f"{secs}.{frac:09d}".rstrip("0") if frac else str(secs)
        words.append(f"{clock} {'-' if ns < 0 else '+'}{shown} s")
    return ", ".join(words)


def collect_cgroup(procs: list["ProcState"], proc: str) -> None:
    """For each process with a cgroup namespace of its own (after collect): which of `procs`
    share it, as the pid in the namespace of the first of them (p.cgroup_ns: one namespace is
    made per pid), and its root in each hierarchy (p.cgroup_ns_roots), which restore makes it
    again from. A namespace's root is the cgroup its maker was in when it made it; no file
    names it, but /proc/PID/cgroup shows paths relative to the reader's cgroup namespace: the
    process's path as we see it, less the same path read from inside its namespace (by a
    forked child that joins it), is the root. From inside, a cgroup outside the root reads as
    "/.."-something, which does not say what the root is: left empty (restore refuses a
    namespace whose root none of its processes knew, and a plain dump says so with its other
    refusals: dump.restore_refusal)."""
    members: dict[int, list["ProcState"]] = {}  # cgroup namespace inode -> its processes, first first
    for p in procs:
        if p.own_ns & CLONE_NEWCGROUP:
            members.setdefault(_ino(p.hostpid, "cgroup", proc), []).append(p)
    for group in members.values():
        # one child per namespace reads every member's file from inside (the tasks are frozen
        # meanwhile: a fork per process of a big container added up)
        texts = netns.call_in(group[0].hostpid, functools.partial(_cgroup_texts, [p.hostpid for p in group], proc),
                              "reading /proc/PID/cgroup", proc, kind="cgroup")
        for p in group:
            p.cgroup_ns = str(group[0].nspid).encode()
            outside = procfs.parse_cgroup(procfs.cgroup_text(p.hostpid, proc))
            inside = {hid: path for hid, _, path in procfs.parse_cgroup(texts[p.hostpid])}
            p.cgroup_ns_roots = "".join(f"{hid}:{controllers}:{cgroup_ns_root(path, inside.get(hid, ''))}\n"
                                        for hid, controllers, path in outside).encode("utf-8", "surrogateescape")


def _cgroup_texts(pids: list[int], proc: str) -> dict[int, str]:
    return {pid: procfs.cgroup_text(pid, proc) for pid in pids}


def cgroup_ns_root(path: str, inside: str) -> str:
    """The root of a cgroup namespace in one hierarchy: `path` is a cgroup of a process in it as
    the dumper sees it, `inside` the same as seen from inside the namespace. "" when that does
    not tell: the cgroup is outside the root ("/.." from inside), or the two disagree."""
    if not inside.startswith("/") or ".." in inside.split("/"):
        return ""
    below = inside.rstrip("/")  # ("" for the root itself; else it starts with "/": whole names only match)
    if not path.startswith("/") or not path.endswith(below):
        return ""
    return path[:len(path) - len(below)] or "/"


def collect_net(init: "ProcState", proc: str) -> list[str]:
    """For an init with a network namespace of its own: whether its lo is up, and what a new
    namespace with only lo (restore's) lacks, kept on `init` for TASK_NS. Returns the note that
    names what restore will not make (none for a namespace with only lo, the common case of a
    container run with `unshare -n`). Read from inside that namespace (pyroute2, as sock_diag
    is), from a forked child."""
    if _ino(init.hostpid, "net", proc) == _ino("self", "net", proc):
        return []
    v = netns.view(init.hostpid, proc)
    init.ns_flags |= 0 if v.lo_up else NS_LO_DOWN
    if not v.missing:
        return []
    words = "; ".join(v.missing)
    init.net_missing = _cut(words, NET_MISSING_MAX)
    return [f"the namespace's network namespace has {words}: restore makes a new network namespace "
            f"with only lo ({'up' if v.lo_up else 'down'}), without them"]


def _cut(words: str, limit: int) -> bytes:
    """`words` as the NUL-terminated string of at most `limit` bytes TASK_NS has room for."""
    raw = words.encode()
    if len(raw) >= limit:
        raw = raw[:limit - 5].decode("utf-8", "ignore").encode() + b" ..."
    return raw


def own_proc(pid: int, proc: str) -> bool:
    """Whether /proc, as host pid `pid` (its namespace's init) sees it through its root and its
    mount namespace, is a proc of pid's own pid namespace: its /proc/1 started at the very tick
    pid did (the host's /proc/1, or another namespace's, did not)."""
    try:
        inner = procfs.stat_fields(1, f"{proc}/{pid}/root/proc")
    except CkptError:  # nothing there, or not a proc: not its own
        return False
    return inner[procfs.STAT_STARTTIME] == procfs.stat_fields(pid, proc)[procfs.STAT_STARTTIME]


def collect_mnt(init: "ProcState", ns_root: str, proc: str) -> list[str]:
    """For an init with a mount namespace of its own: whether its /proc is a proc of the
    namespace's own pid namespace (as `unshare -p -f --mount-proc` makes it), which restore
    mounts again in a new mount namespace (NS_OWN_PROC, kept on `init`), and the mounts it has
    that the dumper's mount namespace has not (mount point, source and type compared, the
    dumper's seen from the namespace's root `ns_root`; its own /proc left out), which restore
    does not make. Returns the note that names them (none when there are none)."""
    if _ino(init.hostpid, "mnt", proc) == _ino("self", "mnt", proc):
        return []
    has_proc = own_proc(init.hostpid, proc)
    if has_proc:
        init.ns_flags |= NS_OWN_PROC
    extra = _own_mounts(init.hostpid, ns_root, proc)
    if has_proc and extra[("/proc", "proc", "proc")] > 0:
        extra[("/proc", "proc", "proc")] -= 1
    # (mountinfo's order: parents before the mounts on them)
    seen, words = set(), []
    for m in procfs.mountinfo(init.hostpid, proc):
        key = (m.mountpoint, m.source, m.fstype)
        if extra[key] > 0 and key not in seen:
            seen.add(key)
            n = extra[key]
            words.append(f"{m.source} on {m.mountpoint} type {m.fstype}" + (f" ({n} times)" if n > 1 else ""))
    if not words:
        return []
    text = "; ".join(words)
    init.mnt_missing = _cut(text, MNT_MISSING_MAX)
    made = "a new mount namespace with a proc of its own at /proc" if has_proc else "the restorer's mount namespace"
    return [f"the namespace's mount namespace has mounts the dumper's has not: {text}; restore puts the "
            f"namespace in {made}, without them"]


def _own_mounts(pid: int, ns_root: str, proc: str) -> "Counter[tuple[str, str, str]]":
    """(mount point, source, type) of the mounts pid's mount namespace has more of than the
    dumper's: pid's mountinfo shows mount points from pid's root, so the dumper's are taken
    under `ns_root` (pid's root as the dumper sees it) and shown from there."""
    base = ns_root.rstrip("/")
    ours: Counter[tuple[str, str, str]] = Counter()
    for m in procfs.mountinfo("self", proc):
        if not base:
            ours[(m.mountpoint, m.source, m.fstype)] += 1
        elif m.mountpoint == base or m.mountpoint.startswith(base + "/"):
            ours[(m.mountpoint[len(base):] or "/", m.source, m.fstype)] += 1
    theirs = Counter((m.mountpoint, m.source, m.fstype) for m in procfs.mountinfo(pid, proc))
    return theirs - ours


def write(ctx: DumpContext, p: "ProcState") -> None:
    # the texts in the order records.NAMED_TEXTS declares (ProcState has each under that name);
    # those after the two names are optional from the last one said
    texts = [getattr(p, name) for name in NAMED_TEXTS[RecType.TASK_NS]]
    while len(texts) > 2 and not texts[-1]:
        texts.pop()
    payload = b"".join(text + b"\0" for text in texts)
    flags = p.ns_flags & ((NS_LO_DOWN if p.own_ns & CLONE_NEWNET else 0) | (NS_OWN_PROC if p.own_ns & CLONE_NEWNS else 0)
                          | (NS_TIME_CHILDREN if p.own_ns & CLONE_NEWTIME else 0))
    ctx.w.record(RecType.TASK_NS, dict(own=p.own_ns, flags=flags), payload=payload)
