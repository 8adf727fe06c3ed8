"""The namespaces other than pid a process lives in (TASK_NS): which of mount, uts, ipc and net
are its own rather than the dumper's, and its host and domain names (uname, injected: the uts
namespace is the task's, not ours).

Restore makes new uts, ipc and network namespaces for an image whose init had its own (the
names set again; the network namespace with its lo only, up or down as it was); mount is
recorded but not recreated (docs/restore.md). One uts, one ipc and one network namespace per
image: a process in another one than its init's is refused. Of init's own network namespace the
dump records whether lo was up and, in words, what a new namespace with only lo would lack
(other interfaces, addresses, routes), which the dump and the restore then note.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

from ..errors import Unsupported
from ..image.records import CLONE_NEWNET, NET_LO_DOWN, NET_MISSING_MAX, NS_FLAG_NAMES, RecType
from ..kernel import netns
from ..kernel.ptrace import Injector, checked
from .context import DumpContext
from ..kernel.sysno import SYS_uname

if TYPE_CHECKING:
    from .task import ProcState

UTSNAME_LEN = 65  # six fields of 65 bytes: sysname, nodename, release, version, machine, domainname


def _ino(pid: int | str, name: str, proc: str) -> int:
    return os.stat(f"{proc}/{pid}/ns/{name}").st_ino


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


def check_threads(procs: list["ProcState"], ns_pid: dict[int, int], proc: str) -> None:
    """Every thread must be in its leader's mount, uts, ipc and network namespaces: restore makes
    a process's threads by clone in its leader, where they share its namespaces (a thread's own,
    from unshare in that thread, would be lost). `ns_pid`: host tid -> tid inside the namespace."""
    for p in procs:
        for t in p.threads[1:]:
            for name in ("mnt", "uts", "ipc", "net"):
                if _ino(f"{p.hostpid}/task/{t.hosttid}", name, proc) != _ino(p.hostpid, name, proc):
                    raise Unsupported(f"thread {ns_pid.get(t.hosttid, '?')} (host tid {t.hosttid}) of process "
                                      f"{p.nspid} (host pid {p.hostpid}) is in another {name} namespace than its "
                                      f"process's leader (unshare in that thread): restore makes every thread in "
                                      "its process's, and ckptrace cannot checkpoint it")


def sysv_objects(pid: int, proc: str) -> list[str]:
    """What pid's IPC namespace holds that restore would lose, in words: SysV semaphore sets,
    message queues, and shared memory segments nobody has attached (attached ones come back as
    the processes' shared memory, docs/restore.md). /proc/sysvipc shows the reader's IPC
    namespace, so it is read from inside (nsenter)."""
    script = "for f in sem msg shm; do echo \"== $f\"; cat /proc/sysvipc/$f; done"
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
    return out_words


def collect(p: "ProcState", inj: Injector, proc: str) -> None:
    p.own_ns = sum(flag for flag, name in NS_FLAG_NAMES.items() if _ino(p.hostpid, name, proc) != _ino("self", name, proc))
    with inj.scratch(6 * UTSNAME_LEN) as (addr, mem):
        checked(inj.syscall(SYS_uname, addr), f"uname in {p.hostpid}")
        mem.seek(addr)
        raw = mem.read(6 * UTSNAME_LEN)
    p.nodename = raw[UTSNAME_LEN:2 * UTSNAME_LEN].split(b"\0", 1)[0]
    p.domainname = raw[5 * UTSNAME_LEN:].split(b"\0", 1)[0]


def collect_net(init: "ProcState", proc: str) -> list[str]:
    """For an init with a network namespace of its own: whether its lo is up, and what a new
    namespace with only lo (restore's) lacks, kept on `init` for TASK_NS. Returns the note that
    names what restore will not make (none for a namespace with only lo, the common case of a
    container run with `unshare -n`). Read from inside that namespace (pyroute2, as sock_diag
    is), from a forked child."""
    if _ino(init.hostpid, "net", proc) == _ino("self", "net", proc):
        return []
    v = netns.view(init.hostpid, proc)
    init.net_flags = 0 if v.lo_up else NET_LO_DOWN
    if not v.missing:
        return []
    words = "; ".join(v.missing)
    raw = words.encode()
    if len(raw) >= NET_MISSING_MAX:
        raw = raw[:NET_MISSING_MAX - 5].decode("utf-8", "ignore").encode() + b" ..."
    init.net_missing = raw
    return [f"the namespace's network namespace has {words}: restore makes a new network namespace "
            f"with only lo ({'up' if v.lo_up else 'down'}), without them"]


def write(ctx: DumpContext, p: "ProcState") -> None:
    payload = p.nodename + b"\0" + p.domainname + b"\0"
    if p.net_missing:
        payload += p.net_missing + b"\0"
    ctx.w.record(RecType.TASK_NS, dict(own=p.own_ns, net=p.net_flags if p.own_ns & CLONE_NEWNET else 0),
                 payload=payload)
