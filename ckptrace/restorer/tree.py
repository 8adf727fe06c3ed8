"""Creating the process tree: each process forks its own children with clone3(set_tid).

The controller clone3's the namespace's init with CLONE_NEWPID and set_tid [1]. clone3 without
CLONE_VM is fork-like, so the child goes on running this Python code: it forks its children the
same way (so every parent link is the image's), sets its session and group, puts its descriptors
at their numbers, sets cwd/root, umask, personality, signal handlers and rlimits, reports
"<pid> <host pid>" on the report pipe and then idles until the controller seizes it and replaces
its whole address space. A failure is reported as "ERR <pid> <why>" and the task exits.

Only the per-process kernel state that is easiest set from inside is set here; memory, threads,
registers and credentials come later by injection (see memory, threads, creds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import resource
import signal
import time
from dataclasses import dataclass, field

from ..errors import Unsupported
from ..kernel.prctl import (PR_MCE_KILL, PR_MCE_KILL_SET, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_MEMORY_MERGE,
                           PR_SET_PDEATHSIG, PR_SET_THP_DISABLE)
from ..image.reader import File, FileTable, Image, Mm, Task
from ..image.records import (CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS, PROC_CHILD_SUBREAPER, PROC_MCE_KILL_EARLY, PROC_MCE_KILL_SET,
                              PROC_MEMORY_MERGE, PROC_THP_DISABLE, FileType,
                              RecType, VmaType)
from ..kernel.ptrace import WALL  # (waits for children without an exit signal too: stand-ins)
from ..kernel.sys import libc
from ..kernel.sysno import SYS_clone3
from . import creds, tty
from .files import FileSet

RLIM_NLIMITS = 16
READ_IMPLIES_EXEC = 0x0400000
EPOLL_CTL_ADD = 1
CLONE_ARGS_SIZE = 88  # struct clone_args up to and including `cgroup` (CLONE_ARGS_SIZE_VER2)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000

# In the new tasks: an O_PATH fd of the controller's /proc, which init opens before it mounts a
# proc of its own over /proc (_own_proc) and which the processes it forks inherit: through it
# "self" still names a task by its host pid, which the controller must be told (-1: /proc is the
# controller's; each task's _setup_inner closes it).
_host_proc = -1


@dataclass(eq=False)  # identity: plans link to each other
class ProcPlan:
    """What one process must do to itself before the controller takes over."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    exit_signal: int
    fds: list[tuple[int, int, bool]] = field(default_factory=list)  # (controller fd, fd, cloexec)
    keep: list[int] = field(default_factory=list)  # controller fds the controller injects away later
    sigactions: list[dict] = field(default_factory=list)
    rlimits: list[dict] = field(default_factory=list)
    umask: int = 0o22
    personality: int = 0
    pdeath_signal: int = 0
    flags: int = 0  # TASK_PROC.flags: child subreaper, THP disabled
    new_ns: int = 0  # for init: CLONE_NEWUTS / CLONE_NEWIPC (/ CLONE_NEWNS) when the image's init had its own
    outer_uts: int = 0  # for init: the controller's uts namespace inode, never to be renamed
    proc_mount: str = ""  # for init: where to mount the new namespace's proc (restorer.mnt), or ""
    outer_mnt: int = 0  # for init: the controller's mount namespace inode, never to be mounted in
    net_ino: int = 0  # for init: the inode of the new network namespace it must be in (restorer.net), or 0
    nodename: bytes = b""
    domainname: bytes = b""
    cwd: str = "/"
    root: str = "/"
    children: list["ProcPlan"] = field(default_factory=list)
    epoll: list[tuple[int, int, int, int]] = field(default_factory=list)  # (epfd, tfd, events, data)
    stand_in: str = ""  # not an image process: "session", "relay" or "group" (_stand_ins)
    parent: "ProcPlan | None" = None  # a stand-in's parent
    born_in: int | None = None  # the session it must be forked in; None: any (_check_sessions)
    zombie: bool = False  # an image zombie: made like a process, ended by the controller (restore._end_zombies)
    ctty: int = -1  # a session leader's: controller fd of the pty slave to make its controlling terminal


def restored_groups(e: dict) -> tuple[int, int]:
    """(pgid, sid) a TREE entry's process gets back. 0 means a group or session led from outside
    the namespace (the dumper's view: a leader it cannot name). Nothing outside is restored, and
    staying in the restorer's own group and session is wrong (once the restoring shell exits,
    the kernel SIGHUPs an orphaned group that holds a stopped job): the restored init leads a
    session and group of its own instead, as a container runtime detaches a container, and
    "outside" becomes init's session (1) and group (1). Inner sessions and groups stay as dumped."""
    return e["pgid"] or 1, e["sid"] or 1


def plan(img: Image, files: FileSet) -> ProcPlan:
    """The tree of ProcPlans, rooted at the namespace's init (pid 1)."""
    plans: dict[int, ProcPlan] = {}
    claimed: set[int] = set()
    for e in img.tree:
        if e["pid"] != e["tgid"]:
            continue
        t = img.task(e["pid"])
        assert t is not None and (t.proc is not None or t.zombie)
        p = plans[e["pid"]] = _skeleton(e, t)
        if t.zombie:
            continue  # no files, handlers, limits: it only has to be, and to exit (see _setup_inner)
        p.sigactions, p.rlimits, p.umask = t.sighand, t.rlimits, t.proc["umask"]
        p.personality, p.pdeath_signal = t.proc["personality"], t.proc["pdeath_signal"]
        p.new_ns = (t.own_ns or 0) & (CLONE_NEWUTS | CLONE_NEWIPC)
        p.nodename, p.domainname = t.nodename, t.domainname
        p.cwd, p.root = img.at(t.cwd or "/"), img.at(t.root or "/")
        table = img.obj(t.files_objref)
        if isinstance(table, FileTable):
            p.fds = [(files.by_objref[d["fd_objref"]], d["fd_descriptor"], bool(d["fd_close_on_exec"]))
                     for d in table.fds]
            p.epoll = _epoll_entries(img, table, claimed)
        p.keep = map_fds_of(img, t, files) + files.extra
    for index, obj in tty.masters(img).items():
        sid = tty.tty_record(obj).fields["sid"]
        if sid in plans and index in files.ctty:  # (tty.problems: a live session leader)
            plans[sid].ctty = files.ctty[index]
    return _arrange(plans, _taken_pids(img))


def tree_problems(img: Image) -> list[str]:
    """Why the image's process tree (parents, sessions, groups) cannot be rebuilt; empty when it
    can. The same arrangement plan() makes, without the files: for checks made before anything
    exists, and before `dump --kill` kills anything."""
    plans = {}
    for e in img.tree:
        t = img.task(e["pid"]) if e["pid"] == e["tgid"] else None
        if t is not None and (t.proc is not None or t.zombie):
            plans[e["pid"]] = _skeleton(e, t)
    try:
        _arrange(plans, _taken_pids(img))
    except Unsupported as exc:
        return [str(exc)]
    return []


def _skeleton(e: dict, t: Task) -> ProcPlan:
    pgid, sid = restored_groups(e)
    return ProcPlan(e["pid"], e["ppid"], pgid, sid, t.fields["exit_signal"] or signal.SIGCHLD,
                    flags=t.proc["flags"] if t.proc else 0, zombie=t.zombie)


def _taken_pids(img: Image) -> set[int]:
    """Every number the image's tasks, groups and sessions use: a relay stand-in takes another."""
    return {n for e in img.tree for n in (e["pid"], e["pgid"], e["sid"])}


def _arrange(plans: dict[int, ProcPlan], taken: set[int]) -> ProcPlan:
    """Link the plans into a tree under init, add the stand-ins, decide the session order."""
    root = plans.get(1)
    if root is None:
        raise Unsupported("the image has no pid 1: restore recreates whole namespaces only")
    for p in sorted(plans.values(), key=lambda q: q.pid):
        if p.pid == 1:
            continue
        if p.ppid not in plans:
            # Outside parents (ppid 0) only exist for the namespace's init.
            raise Unsupported(f"process {p.pid} has parent {p.ppid}, which is not in the image")
        plans[p.ppid].children.append(p)
    _stand_ins(plans, taken)
    _group_stand_ins(plans)
    _check_sessions(root)
    return root


def group_stand_ins(root: ProcPlan) -> list[ProcPlan]:
    """The plan's group stand-ins (see _group_stand_ins): the controller waits for their reports,
    has the members join their groups, then ends them."""
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        if p.stand_in == "group":
            out.append(p)
        stack.extend(p.children)
    return sorted(out, key=lambda q: q.pid)


def _stand_ins(plans: dict[int, ProcPlan], taken: set[int]) -> None:
    """Short-lived stand-ins for processes whose parent is not in their session.

    A session is only entered by being forked into it. A process whose parent is in another
    session was forked by a process of its own session that has exited since, and it was
    reparented to its parent (init or a subreaper: what reparenting picks). A daemon's double
    fork (fork, setsid, fork, exit) is the classic case, and there the session's leader has
    exited too. The restore forks a stand-in in the session that forks those processes and exits:
    they are reparented again, to the same parent, and wait for that before going on
    (_wait_reparented). Stand-ins have no exit signal; their parent reaps them in _become.
    - the session's leader is in the image: a relay stand-in, with a number nobody in the image
      uses, forked by the leader;
    - it has exited: a session stand-in with the leader's number (the kernel keeps a session's
      number from being reused while the session lives, so it is free), forked by the parent,
      which calls setsid."""
    relays: dict[tuple[int, int], ProcPlan] = {}
    sessions: dict[int, ProcPlan] = {}
    free = (n for n in range(2, 1 << 22) if n not in taken)
    for p in sorted(plans.values(), key=lambda q: q.pid):
        if p.pid == 1 or p.sid == p.pid:
            continue
        parent = plans[p.ppid]
        if parent.sid == p.sid:
            continue  # forked into the session by a member: nothing to stand in for
        if parent.sid == parent.pid != 1 and plans[parent.ppid].sid == p.sid:
            continue  # forked before its parent's setsid, as the parent can again (_check_sessions)
        leader = plans.get(p.sid)
        if leader is not None:
            h = relays.get((p.sid, parent.pid))
            if h is None:
                h = relays[(p.sid, parent.pid)] = ProcPlan(next(free), leader.pid, leader.pgid, p.sid, 0,
                                                           stand_in="relay")
                h.parent = leader
                leader.children.append(h)
        else:
            h = sessions.get(p.sid)
            if h is None:
                h = sessions[p.sid] = ProcPlan(p.sid, parent.pid, p.sid, p.sid, 0, stand_in="session")
                h.parent = parent
                parent.children.append(h)
            elif h.ppid != parent.pid:
                raise Unsupported(f"session {p.sid} outlived its leader with members under different parents "
                                  f"({h.ppid} and {parent.pid}): restoring it is not supported")
        reaper = _reaper(h, plans)
        if reaper != parent.pid:
            raise Unsupported(f"process {p.pid} is in session {p.sid} but its parent {parent.pid} is not, and "
                              f"a process forked there for it would be reparented to {reaper}: not supported")
        parent.children.remove(p)
        h.children.append(p)


def _reaper(h: ProcPlan, plans: dict[int, ProcPlan]) -> int:
    """Who the kernel reparents stand-in h's children to when it exits: its nearest ancestor that
    is a child subreaper (set before anything is forked, in _become), else init."""
    q = h.parent
    while q is not None and q.pid != 1 and not q.flags & PROC_CHILD_SUBREAPER:
        q = q.parent if q.stand_in else plans.get(q.ppid)
    return q.pid if q is not None else 1


def _group_stand_ins(plans: dict[int, ProcPlan]) -> None:
    """Stand-ins for process groups whose leader has exited (a shell's pipeline whose first
    command ended: its group is named after it). A group is joined with setpgid, which needs a
    live process in it: a stand-in with the departed leader's pid is forked by a process of the
    group's session (its leader if the image has it), makes the group, reports and waits; the
    members join it (restore._set_groups), then the controller kills it and its parent reaps it
    (it has no exit signal)."""
    session_stand_ins = {h.pid for p in plans.values() for h in p.children if h.stand_in == "session"}
    made: set[int] = set()
    for p in sorted(plans.values(), key=lambda q: q.pid):
        g = p.pgid
        if g in plans or g in session_stand_ins or g in made:
            continue
        host = plans.get(p.sid)
        if host is None:
            host = min((q for q in plans.values() if q.sid == p.sid), key=lambda q: q.pid)
        host.children.append(ProcPlan(g, host.pid, g, p.sid, 0, stand_in="group"))
        made.add(g)


def _check_sessions(root: ProcPlan) -> None:
    """Decide which children a session leader forks before its setsid, and refuse, before
    anything exists, a tree whose sessions _become cannot rebuild.

    A process is in the session it was forked in, or its own after setsid. So each process needs
    to be forked in a given session (`born_in`): its own if it does not lead one; if it leads,
    the one its children outside its new session need (a parent that called setsid after forking
    them), or any. A session leader forks the children that need its former session first, then
    calls setsid. Groups are joined later (restore._set_groups)."""
    order, stack = [], [root]
    while stack:
        p = stack.pop()
        order.append(p)
        stack.extend(p.children)
    plans_by_pid = {p.pid: p for p in order}
    for p in reversed(order):  # children before parents
        if p.sid != p.pid:
            p.born_in = p.sid
            continue
        needs = {c.born_in for c in p.children} - {None, p.pid}
        if len(needs) > 1:
            raise Unsupported(f"process {p.pid} leads a session but has children in sessions "
                              f"{', '.join(map(str, sorted(needs)))}: not supported")
        p.born_in = needs.pop() if needs else None
    # then follow sessions and groups down the tree as _become makes them
    checks = [(root, 0, 0)]  # (plan, session and group it is forked in); 0: the restorer's
    group_after: dict[int, int] = {}  # pid -> its group once _become is done
    while checks:
        p, at, group_at = checks.pop()
        if p.born_in is not None and p.born_in != at:
            if p.stand_in:  # (its number is not the image's: name what it is for)
                who = f"the stand-in forking process {', '.join(str(c.pid) for c in p.children)}"
            else:
                who = f"process {p.pid}" if p.sid != p.pid else f"a child of process {p.pid}"
            raise Unsupported(f"{who} is in session {p.born_in}, which its parent {p.ppid} cannot fork "
                              "it into: not supported")
        own = p.pid if p.sid == p.pid else at
        own_group = p.pid if p.pgid == p.pid else group_at
        if p.stand_in in ("", "group"):  # (session and relay stand-ins are gone by then)
            group_after[p.pid] = own_group
        for c in p.children:
            early = _early(p, c)
            checks.append((c, at if early and p.sid == p.pid else own, group_at if early else own_group))
    # restore._set_groups moves the others with setpgid, which needs a process in the group
    present = set(group_after.values())
    for pid, group in sorted(group_after.items()):
        want = plans_by_pid[pid].pgid
        if group != want and want not in present:
            raise Unsupported(f"process {pid} is in process group {want}, which no restored process can be "
                              "in when it joins it: not supported")


def _early(p: ProcPlan, c: ProcPlan) -> bool:
    """Is child c forked before its parent p becomes a leader (see _check_sessions)? A session
    leader forks first the children that need its former session; a group leader (of a group
    only) the children that are in neither its group nor one of their own: they were in its
    former group (a daemon's child that made a group of its own after forking), or join theirs
    later either way."""
    if p.sid == p.pid:
        return c.born_in not in (None, p.pid)
    if p.pgid == p.pid:
        return c.pgid not in (p.pid, c.pid)
    return False


def _epoll_entries(img: Image, table: FileTable, claimed: set[int]) -> list[tuple[int, int, int, int]]:
    """The interest lists of epoll files in this table not yet claimed by an earlier process.
    The dump names targets by fd number in the first table it met the epoll in: that table's
    process (first in TREE order) registers them, with its own numbers."""
    out = []
    for d in table.fds:
        f = img.obj(d["fd_objref"])
        if not isinstance(f, File) or f.ftype != FileType.EPOLL or f.objref in claimed:
            continue
        claimed.add(f.objref)
        for r in f.extra:
            if r.type == RecType.FILE_EPOLL:
                out += [(d["fd_descriptor"], e["tfd"], e["events"], e["data"])
                        for e in r.rtype.decode_entries(r.payload)]
    return out


def map_fds_of(img: Image, t: Task, files: FileSet) -> list[int]:
    """Controller fds the process needs until its memory is mapped (files of its VMAs, exe)."""
    mm = img.obj(t.mm_objref)
    if not isinstance(mm, Mm):
        return []
    out = []
    exe = img.obj(mm.fields["exe_objref"]) if mm.fields["exe_objref"] else None
    if isinstance(exe, File) and exe.name:
        out.append(files.exe_fd(exe))
    for v in mm.vmas:
        vt = v.fields["vma_type"]
        if vt in (VmaType.FILE, VmaType.SHARED_FILE):
            out.append(files.vma_fd(v.fields))
        elif vt == VmaType.SHARED_ANON:
            out.append(files.shmem[v.fields["vma_objref"]])
    return sorted(set(out))


_libc_gil = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long


def clone3(flags: int, tid: int, exit_signal: int) -> int:
    """Fork-like clone3 with set_tid = [tid] in the innermost namespace. Returns 0 in the child."""
    tids = (ctypes.c_int32 * 1)(tid)
    args = (ctypes.c_uint64 * 11)(flags, 0, 0, 0, exit_signal, 0, 0, 0, ctypes.addressof(tids), 1, 0)
    ctypes.set_errno(0)
    # Through PyDLL, which keeps the GIL across the call: a CDLL call lets it go, and another
    # thread (rich's refresh thread on a terminal) could hold it at the moment of the clone, in
    # the child for ever, since that thread does not exist there: the child hung, and the
    # restore gave up waiting for it.
    ret = _libc_gil.syscall(ctypes.c_long(SYS_clone3), ctypes.c_void_p(ctypes.addressof(args)),
                            ctypes.c_size_t(CLONE_ARGS_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone3(set_tid={tid}): {os.strerror(err)}")
    return ret


def spawn_init(root: ProcPlan, report_fd: int) -> int:
    """Create the new namespace's init; returns its host pid. The child never returns.

    The init dies with the controller (PR_SET_PDEATHSIG(SIGKILL)) until the controller clears
    that by injection just before it lets the namespace go (restore._Restore._finish): until the
    seize only this ties the new tasks to the controller (PTRACE_O_EXITKILL does after), and the
    kernel kills the rest of a namespace whose init dies."""
    root.outer_uts = os.stat("/proc/self/ns/uts").st_ino
    root.outer_mnt = os.stat("/proc/self/ns/mnt").st_ino
    if root.proc_mount:
        root.new_ns |= CLONE_NEWNS
    controller = os.getpid()
    pid = clone3(CLONE_NEWPID | root.new_ns, 1, root.exit_signal)
    if pid == 0:  # pragma: no cover - runs in the new init
        try:
            _die_with(controller, report_fd)
            # Nothing may run a handler from here on: the image's handlers point into memory that
            # is not mapped yet. The mask is inherited by every process forked below.
            signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
        finally:
            _become(root, report_fd)
    return pid


def _die_with(controller: int, report_fd: int) -> None:  # pragma: no cover - in the new init
    """SIGKILL this task when its parent, the controller (host pid `controller`), dies; exit now
    if it already has. (fork clears the pdeath signal: the processes init forks get only the
    image's, in _setup_inner.)"""
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        os.write(report_fd, f"ERR 1 prctl(PR_SET_PDEATHSIG): {os.strerror(err)}\n".encode())
        os._exit(1)
    # Died before the prctl: we were reparented, and nothing would kill us. getppid() says 0
    # for any parent outside our new namespace; /proc (the controller's, see _setup_inner's
    # report) names the parent by its host pid.
    if _parent_of_self() != controller:
        os._exit(1)


def _parent_of_self() -> int:  # pragma: no cover - in the new init
    with open("/proc/self/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _set_names(nodename: bytes, domainname: bytes) -> None:  # pragma: no cover - in the new init
    """uname's host and domain names in the fresh uts namespace (init only, from _become, whose
    report takes any failure to the controller)."""
    for fn, name in ((libc.sethostname, nodename), (libc.setdomainname, domainname)):
        if fn(name, ctypes.c_size_t(len(name))) != 0:
            raise OSError(ctypes.get_errno(), f"set uts name {name!r}")


def _own_proc(p: ProcPlan) -> None:  # pragma: no cover - in the new init
    """A proc of the new pid namespace at p.proc_mount, in init's new mount namespace, as
    `unshare --mount-proc` makes it: every mount made private first (recursively, as unshare
    does), so that neither this mount nor any later one propagates to the host's mount
    namespace, whose / is shared on a systemd host. The controller's /proc stays reachable
    through _host_proc."""
    global _host_proc
    # clone3(CLONE_NEWNS) made it; mounting over the host's /proc instead would hide every
    # process from the host: check, do not trust
    if not p.new_ns & CLONE_NEWNS or os.stat("/proc/self/ns/mnt").st_ino == p.outer_mnt:
        raise RuntimeError("init is not in a new mount namespace; refusing to mount a proc")
    if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    _host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if libc.mount(b"proc", os.fsencode(p.proc_mount), b"proc", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                  None) != 0:
        raise OSError(ctypes.get_errno(), f"mount proc on {p.proc_mount}")


def _self_on_host() -> str:  # pragma: no cover - in the new tasks
    """This process's host pid, as the controller's /proc names it."""
    if _host_proc >= 0:
        return os.readlink("self", dir_fd=_host_proc)
    return os.readlink("/proc/self")


def _become(p: ProcPlan, report_fd: int) -> None:  # pragma: no cover - runs in the new tasks
    """Turn this fresh process into image process `p`, forking its children first. Never returns."""
    try:
        if p.proc_mount:
            _own_proc(p)  # (init: before anything is forked, and the checks below read its /proc)
        if p.net_ino and os.stat("/proc/self/ns/net").st_ino != p.net_ino:
            # (clone3'd from a controller thread in it, restorer.net: check, do not trust)
            raise RuntimeError("init is not in the restore's new network namespace")
        if p.new_ns & CLONE_NEWUTS:
            # sethostname in the controller's namespace would rename the host: check, do not trust
            if os.stat("/proc/self/ns/uts").st_ino == p.outer_uts:
                raise RuntimeError("init is not in a new uts namespace; refusing to set host names")
            _set_names(p.nodename, p.domainname)
        if p.ppid:
            _wait_reparented(p)
        if p.flags & PROC_CHILD_SUBREAPER:
            # before any child exists: a stand-in's children are reparented to it (_reaper)
            libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0)
        leads = p.sid == p.pid
        # a session leader's children that stayed in its former session were forked before it
        # called setsid (plan's _check_sessions): so here
        early = [c for c in p.children if _early(p, c)]
        for c in early:
            if clone3(0, c.pid, c.exit_signal) == 0:
                _become(c, report_fd)
        if leads:
            os.setsid()
            if p.ctty >= 0:
                # now, before the rest of the session is forked: a child inherits its parent's
                # controlling terminal at fork, and none gets it later
                tty.set_ctty(p.ctty)
        elif p.pgid == p.pid:
            os.setpgid(0, 0)
        for c in p.children:
            if not _early(p, c) and clone3(0, c.pid, c.exit_signal) == 0:
                _become(c, report_fd)
        if p.stand_in in ("session", "relay"):
            os._exit(0)  # its children go to its parent's reaper, see _stand_ins
        if p.stand_in == "group":
            # lives until the members have joined it (restore._set_groups)
            os.write(report_fd, f"STANDIN {p.pid} {_self_on_host()}\n".encode())
            while True:
                time.sleep(3600)
        for c in p.children:
            if c.stand_in in ("session", "relay"):
                os.waitpid(c.pid, WALL)
        _setup_inner(p, report_fd)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the controller must hear of it
        try:
            os.write(report_fd, f"ERR {p.pid} {type(exc).__name__}: {exc}\n".encode(errors="replace"))
        finally:
            os._exit(1)
    os._exit(1)


def _wait_reparented(p: ProcPlan) -> None:  # pragma: no cover - forked by a stand-in
    """A process forked by a stand-in leader (_stand_ins) waits until the stand-in has exited and
    it has its image parent: its pdeath signal (set in _setup_inner) would fire on the stand-in's
    exit, and the controller must find it under its image parent."""
    deadline = time.monotonic() + 10
    while os.getppid() != p.ppid:
        if time.monotonic() > deadline:
            raise RuntimeError(f"still the child of {os.getppid()}, not of {p.ppid}, after 10 s")
        time.sleep(0.001)


def _setup_inner(p: ProcPlan, report_fd: int) -> None:  # pragma: no cover - forked
    if os.getpid() != p.pid:
        raise RuntimeError(f"clone3 gave pid {os.getpid()}, wanted {p.pid}")
    # the controller's /proc names us by our host pid (read before the dup2s: one may take
    # _host_proc's number, and the chroot may hide /proc)
    host = _self_on_host()
    targets = {fd for _, fd, _ in p.fds}
    # Sources all sit above every target number (FileSet.base), so no dup2 clobbers a source.
    for src, fd, cloexec in p.fds:
        os.dup2(src, fd, inheritable=not cloexec)
    for epfd, tfd, events, data in p.epoll:
        _epoll_add(epfd, tfd, events, data)
    keep = targets | set(p.keep) | {report_fd}  # (not _host_proc: the image's processes never see it)
    for fd in _open_fds():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    # cwd first, as the controller sees it: it stays the process's directory through the chroot
    os.chdir(p.cwd)
    if p.root != "/":
        os.chroot(p.root)
    os.umask(p.umask)
    if p.zombie:
        # Every handler default (the interpreter's SIGINT handler would turn a death by SIGINT
        # into an exception), and no core file, nor a core handler's run, for a death by SIGSEGV.
        creds.install_sigactions([dict(handler=0, flags=0, restorer=0, mask=0)] * 64)
        libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), 0, 0, 0)
    if p.personality & ~READ_IMPLIES_EXEC:
        # not READ_IMPLIES_EXEC yet: the memory mapped by injection would all be executable
        # (restore._process sets it once the memory is in place)
        libc.personality(ctypes.c_ulong(p.personality & ~READ_IMPLIES_EXEC))
    creds.install_sigactions(p.sigactions)
    if p.flags & PROC_THP_DISABLE:  # kept in the mm's flags, which outlive the remapping to come
        libc.prctl(PR_SET_THP_DISABLE, ctypes.c_ulong(1), 0, 0, 0)
    if p.flags & PROC_MEMORY_MERGE:  # the mm's too: every mapping made from now on is KSM's
        if libc.prctl(PR_SET_MEMORY_MERGE, ctypes.c_ulong(1), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MEMORY_MERGE)")
    if p.flags & PROC_MCE_KILL_SET:  # a task flag: the threads cloned later inherit it
        early = 1 if p.flags & PROC_MCE_KILL_EARLY else 0
        if libc.prctl(PR_MCE_KILL, ctypes.c_ulong(PR_MCE_KILL_SET), ctypes.c_ulong(early), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_MCE_KILL)")
    if p.pdeath_signal and p.pid != 1:
        # Not for init: its parent is this controller, which exits once the restore is done (init
        # has SIGKILL from _die_with meanwhile, which the controller clears at the end).
        libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(p.pdeath_signal), 0, 0, 0)
    for i, lim in enumerate(p.rlimits):
        if i < RLIM_NLIMITS:
            cur = resource.RLIM_INFINITY if lim["cur"] >= (1 << 63) else lim["cur"]
            mx = resource.RLIM_INFINITY if lim["max"] >= (1 << 63) else lim["max"]
            try:
                resource.setrlimit(i, (cur, mx))
            except (PermissionError, ValueError):
                # Raising a hard limit needs CAP_SYS_RESOURCE, which this host's root lacks:
                # keep our hard limit and clamp the soft one under it.
                hard = resource.getrlimit(i)[1]
                resource.setrlimit(i, (cur if hard == resource.RLIM_INFINITY else min(cur, hard), hard))
    os.write(report_fd, f"{p.pid} {host}\n".encode())
    # The controller closes report_fd (and the map fds) by injection once it has seized us.
    while True:
        time.sleep(3600)


def _epoll_add(epfd: int, tfd: int, events: int, data: int) -> None:  # pragma: no cover - forked
    ev = ctypes.create_string_buffer(struct.pack("<IQ", events, data))  # packed epoll_event
    ctypes.set_errno(0)
    if libc.epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, ev) < 0:
        err = ctypes.get_errno()
        if err != errno.EEXIST:
            raise OSError(err, f"epoll_ctl(ADD fd {tfd} to epoll fd {epfd}): {os.strerror(err)}")


def _open_fds() -> list[int]:
    return [int(x) for x in os.listdir("/proc/self/fd") if x.isdigit()]
