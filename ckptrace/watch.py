"""`ckptrace watch`: live task and dirty-memory events of pid namespaces, from BPF tracepoints.

The controller: loads bpf/watch.bpf.c (ckptrace.kernel.bpfload), seeds the model
(ckptrace.watchmodel) from /proc, then loops: read the event rings for structural events, drain
the kernel's written-page masks into `dirty` events (every DRAIN_SECONDS, so at least once a
second), read the lost counters, and notice dumps (ckptrace.notify) to reset dirty counts.
Output: the rich dashboard (ckptrace.watchview) on a terminal, else plain lines, or JSON lines.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import select
import signal
import stat
import sys
import time

from . import notify
from .errors import CkptError, KernelError, UsageError, from_oserror
from .image.records import CLONE_NEWPID
from .kernel import procfs
from .watchmodel import Model

POLL_MS = 20
RECORDS_PER_POLL = 4096  # ~25 - 50 ms of the controller's work
LAG_SAMPLE = 16  # records between two looks at how old the record being read is (RECORDS_PER_POLL's divisor)
DRAIN_SECONDS = 0.25
DRAIN_READ_SECONDS = 0.2  # a drain reads the records sent before it for this long at most (floods)
FINAL_READ_SECONDS = 1.0  # at exit, the records sent before the stop are read for this long at most
RENDER_SECONDS = 0.125  # 8 refreshes a second
HOUSEKEEP_SECONDS = 1.0
STALE_SECONDS = 1.0  # a VMA table to re-read waits this long at most for the rings to be read up
MERGE_SECONDS = 1.0  # a process's table is read for the kernel's merges at most this often

NEWNS_HOW = {1: "unshare", 2: "setns", 3: "clone"}
MAP_FIXED = 0x10  # (MAP_FIXED_NOREPLACE never lands on a mapping)
MAP_TYPE, MAP_SHARED, MAP_SHARED_VALIDATE = 0x0F, 0x01, 0x03  # the kernel's switch on the mapping type


def _errno_name(code: int) -> str:
    """"ENOMEM" for 12: how an mm call that failed part-way is reported (its record's code)."""
    return errno.errorcode.get(code, str(code))


UNPLACED_SECONDS = 10.0  # how long a fork record may come after its child's own, unplaced ones
UNPLACED_MAX = 100_000  # unplaced records kept for their fork record at most (then counted at once)


class Stop(Exception):
    """SIGTERM or Ctrl-C: leave the loop, detaching everything."""


class CpuPriority:
    """The controller's CPU priority (`watch --priority`).

    On a machine with few CPUs the controller's CPU time is what a busy watched workload loses
    (docs/watch.md, "Overhead"): at SCHED_IDLE it only gets time nobody else wants, and a
    fork/exec loop runs almost as fast as unwatched. But a controller that stays at SCHED_IDLE
    while the CPUs are saturated falls behind, the event rings fill and events are lost. So
    `auto` (the default) runs at SCHED_IDLE while it keeps up and at normal priority once it
    falls behind, i.e. is more than BEHIND_SECONDS late: what it reads is that old, or its loop
    comes round that much late (it has more work than it can do at that priority), or it is
    starved (then it cannot tell: its guard process does it, ckptrace.watchguard). It goes back
    to SCHED_IDLE after `hold` seconds of normal priority; falling behind again soon after
    doubles `hold` (up to HOLD_MAX_SECONDS), so a saturated machine does not make it flap.
    `idle` never raises it (the least cost, at the risk of losses); `normal` never lowers it."""

    MODES = ("auto", "idle", "normal")
    BEHIND_SECONDS = 0.25
    HOLD_SECONDS = 5.0
    HOLD_MAX_SECONDS = 60.0

    def __init__(self, mode: str, *, set_policy=None, clock=time.monotonic, guard: bool = True):
        if mode not in self.MODES:
            raise UsageError(f"unknown priority {mode!r} (one of {', '.join(self.MODES)})")
        if set_policy is None:
            from .kernel.sys import set_own_policy as set_policy
        self.mode = mode
        self.set_policy = set_policy
        self.clock = clock
        self.use_guard = guard
        self.heartbeat = None  # shared with the guard (auto only)
        self.guard = None
        self.guard_raises = 0  # the guard's count, as last seen
        self.idle = False
        self.raised = 0  # times it went from idle to normal priority
        self.hold = self.HOLD_SECONDS
        self.until = 0.0  # normal priority at least until then
        self.lowered_at: float | None = None
        self.finishing = False  # stopping: never lowered again

    def start(self) -> None:
        """After loading and seeding, which should not crawl on a busy host."""
        if self.mode == "normal" or self.finishing:
            return
        if self.mode == "auto" and self.use_guard:
            from .watchguard import Guard, Heartbeat

            # first: the guard would inherit SCHED_IDLE, and starve with us
            self.heartbeat = Heartbeat()
            try:
                self.guard = Guard(self.heartbeat, self.BEHIND_SECONDS)
            except BaseException:
                self.heartbeat.close()
                self.heartbeat = None
                raise
        self._set(idle=True)

    def stop(self) -> None:
        """Watch is ending: what is left (the last read, detaching every program) runs at normal
        priority, whatever the mode. At SCHED_IDLE on saturated CPUs it could take minutes, with
        the programs attached all along."""
        if self.guard is not None:
            self.guard.stop()
            self.heartbeat.close()
            self.guard = self.heartbeat = None
        self.hurry()

    def hurry(self) -> None:
        """Back to normal priority for good, now: a stop was asked for (called from the signal
        handler too, so that the loop notices the request without waiting for idle CPU time).
        Should setting it fail, the rest runs at idle priority: slow, but it ends."""
        self.finishing = True
        if self.idle:
            try:
                self._set(idle=False)
            except CkptError:
                pass

    def observe(self, lag: float) -> bool:
        """How late the controller is now, in seconds (called often: it is also the heartbeat);
        True when its priority changed."""
        if self.mode != "auto" or self.finishing:
            return False
        now = self.clock()
        if self.heartbeat is not None:
            self.heartbeat.beat()
            seen = self.heartbeat.raised()
            if seen != self.guard_raises:
                self.guard_raises = seen
                # the guard found us starved and did it; unless we had just done it ourselves
                # (both at once: one raise, counted once)
                if self.idle:
                    self._raised(now)
                    return True
        if lag > self.BEHIND_SECONDS:
            if self.idle:
                self._set(idle=False)
                self._raised(now)
                return True
            self.until = max(self.until, now + self.hold)  # still behind: stay up
            return False
        if not self.idle and now >= self.until:
            self._set(idle=True)
            self.lowered_at = now
            return True
        return False

    def describe(self) -> str:
        if self.mode == "normal":
            return "controller at normal priority"
        if self.mode == "idle":
            return "controller at idle priority (--priority idle)"
        now = "idle" if self.idle else "normal"
        raised = f", raised {self.raised}x when it fell behind" if self.raised else ""
        return f"controller at {now} priority (auto{raised})"

    def _raised(self, now: float) -> None:
        soon = self.lowered_at is not None and now - self.lowered_at < 2 * self.hold
        self.hold = min(2 * self.hold, self.HOLD_MAX_SECONDS) if soon else self.HOLD_SECONDS
        self.idle = False
        self.raised += 1
        self.until = now + self.hold

    def _set(self, *, idle: bool) -> None:
        self.idle = idle
        self.set_policy(os.SCHED_IDLE if idle else os.SCHED_OTHER)
        if idle and self.finishing:
            # a stop request came in meanwhile (hurry, from the signal handler): stay up
            self.idle = False
            self.set_policy(os.SCHED_OTHER)


def _ignore_lateness(_lag: float) -> None:
    pass


# Signals only set this flag: raising from the handler could fire inside on_record, whose
# catch-all would keep it as a failure of the event being handled.
_stop_requested = [False]
# When the controller last went on after a stop (Ctrl-Z and fg, SIGSTOP and SIGCONT), in
# time.monotonic_ns(): records waiting in the rings meanwhile are old, but the controller was
# stopped, not starved, so their age counts from then (Controller.on_record).
_resumed_ns = [0]


def _note_resumed(_sig, _frame) -> None:
    _resumed_ns[0] = time.monotonic_ns()


def _request_stop(_sig, _frame) -> None:
    _stop_requested[0] = True
    if _hurry[0] is not None:
        _hurry[0]()


# what a stop request also does at once (CpuPriority.hurry, while watch runs)
_hurry: list = [None]


def _watched_namespaces(host: int, focus: int | None) -> dict[int, list[int]]:
    """{namespace inode: host pids} of the namespaces to watch, from one /proc scan. Processes we
    may not inspect (the host supervisor's pid 1) are skipped quietly."""
    out: dict[int, list[int]] = {}
    for pid in procfs.pids():
        ino = procfs.ns_inode(pid)
        if ino is None or ino == host or (focus and ino != focus):
            continue
        out.setdefault(ino, []).append(pid)
    return out


def _maps(hostpid: int) -> list[tuple[int, int, int, str, bool]]:
    try:
        return [(m.start, m.end, m.prot, m.path, m.shared) for m in procfs.maps(hostpid)]
    except CkptError:
        return []


class Controller:
    def __init__(self, prog, model: Model, *, host: int, focus: int | None, emit):
        self.prog = prog
        self.model = model
        self.host = host
        self.focus = focus
        self.emit = emit  # called with each public event dict
        self.names = prog.abi.event_names()
        self.started = time.monotonic_ns()
        self.ignored: set[int] = set()  # host pids resolved to namespaces we do not watch
        self.nschanged: set[int] = set()  # host pids that unshared or entered a pid namespace
        self.lost_seen = {"ring": 0, "dirty": 0, "tracked": 0, "unresolved": 0, "unattributed": 0}
        self.unresolved = 0
        # host pids of records that could not be placed -> (when, the records): their fork record
        # may still come, which places a child in its parent's namespace with the pid the parent
        # saw; expire_unplaced counts them unresolved after UNPLACED_SECONDS
        self.gone_unplaced: dict[int, tuple[float, list]] = {}
        self.unplaced_count = 0  # records kept there (bounded by UNPLACED_MAX)
        self.forked_early: set[int] = set()  # children whose fork _fork_before reported
        # namespaces whose init has exited: they are gone, and the kernel gives the inode number
        # to a later namespace, whose tasks the same filter lets through
        self.ended: set[int] = set()
        self.reused = 0  # records of a later namespace with the focused one's number, dropped
        self.failure: BaseException | None = None  # raised in the record callback
        self.dumps_dir = notify.DUMPS_DIR
        # processes whose VMA table is to be re-read (exec, failed mprotect, lost records): host
        # pid -> when that was found (time.monotonic); those in `execd` only since an exec, whose
        # table /proc completes rather than replaces (Model.fill_maps)
        self.stale: dict[int, float] = {}
        self.execd: set[int] = set()
        # processes whose mappings the kernel may have merged (mprotect, mremap): host pid -> when
        # that was found; /proc is asked at a later drain (_check_merges), at most once per
        # MERGE_SECONDS each (merge_read: host pid -> when it last was). merge_wait: those whose
        # pages wait for the check, which waits for the rings to be read up
        self.merge_due: dict[int, float] = {}
        self.merge_read: dict[int, float] = {}
        self.merge_wait: set[int] = set()
        # drained pages whose mm events are still in the rings: (host pid, chunk)
        self.held: list[tuple[int, tuple[int, int, int]]] = []
        self.budget = sys.maxsize  # records on_record may still take in this poll
        # told how late the controller is, in seconds: from every LAG_SAMPLE-th record read, and
        # from the loop (see CpuPriority); it may change the priority from inside a poll
        self.late = _ignore_lateness

    def on_record(self, e) -> int:
        """The record callback. The first exception is kept for the loop to raise after the
        poll. Returns -1, which makes the reader stop (this record is taken), when the poll's
        budget of records is spent or on a failure."""
        if self.failure is not None:
            return -1
        try:
            self.budget -= 1
            if self.budget % LAG_SAMPLE == LAG_SAMPLE - 1:  # the first record of a poll, then every LAG_SAMPLE-th
                # a starved controller may not finish a poll for seconds: tell from here. The
                # records' ts are bpf_ktime_get_ns(): CLOCK_MONOTONIC, as time.monotonic_ns().
                self.late((time.monotonic_ns() - max(e.ts, _resumed_ns[0])) / 1e9)
            self.on_event(e)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the loop
            self.failure = exc
            return -1
        return -1 if self.budget <= 0 else 0

    def poll(self, timeout_ms: int, budget: int = RECORDS_PER_POLL) -> None:
        """Wait up to timeout_ms for records and handle at most about `budget` of them: under a
        flood, one read of the ring could otherwise take seconds, and meanwhile nothing is
        drained, shown, or checked (see CpuPriority)."""
        self.budget = budget
        try:
            self.prog.poll(timeout_ms)
        finally:
            self.budget = sys.maxsize

    # -- seeding and resolution ----------------------------------------------------------------
    def watch_ns(self, ino: int) -> None:
        if ino not in self.model.namespaces:
            self.model.add_namespace(ino).last_dump = notify.last_dump(ino, base=self.dumps_dir)
        self.prog.add_namespace(ino)

    def seed(self, hostpid: int, ino: int, *, maps: bool = True, exiting_ok: bool = False):
        """Add a process found in /proc (ns `ino`) to the kernel's tracked set and the model.
        maps=False: without its VMA table (what /proc shows is not what the first event
        applies to). A process on its way out (procfs.exiting) is not tracked, and is left out
        unless `exiting_ok`: it is, when the caller holds one of its records (its exit record
        follows), so that its fork can still be reported first, from /proc's parent."""
        try:
            st = procfs.status(hostpid)
        except CkptError:
            return None
        gone = procfs.exiting(hostpid)
        if gone and not exiting_ok:
            return None  # it has exited (its parent has not reaped it): nothing will say so again
        self.watch_ns(ino)
        nspid = st.nspid[-1] if st.nspid else 0
        if not gone:
            self.prog.track(hostpid, ino, nspid)
            if procfs.exiting(hostpid):
                # Its exit program may have run already (it deletes the entry; the exit
                # tracepoint comes before the process shows as a zombie): the entry just made
                # would outlive it, and a process that later gets its pid would be taken for it.
                self.prog.untrack(hostpid)
                if not exiting_ok:
                    return None
                gone = True
        at = time.monotonic_ns()  # (before the read: what it shows is at least that recent)
        return self.model.seed_proc(hostpid, nspid, ino, ppid=st.ppid, comm=st.raw.get("Name", ""),
                                    maps=_maps(hostpid) if maps and not gone else [], maps_at=at)

    def seed_all(self) -> None:
        for ino, pids in _watched_namespaces(self.host, self.focus).items():
            self.watch_ns(ino)
            for pid in pids:
                self.seed(pid, ino)

    def resolve(self, hostpid: int) -> tuple[int, int] | None:
        """(namespace, in-namespace pid) of a process the kernel could not place, from /proc."""
        p = self.model.procs.get(hostpid)
        if p is not None and p.alive and p.ns:
            return p.ns, p.pid
        if hostpid in self.ignored:
            return None
        ino = procfs.ns_inode(hostpid)
        if ino is None:
            return None  # gone before we could see where it lived (not ignored: its pid comes back)
        if ino == self.host or (self.focus and ino != self.focus):
            self.ignored.add(hostpid)
            self.prog.untrack(hostpid)
            return None
        if ino in self.ended:
            # The namespace of that number is gone (its init exited): this is a later one's
            # process, or one of the old one's on its way out. Placed here, it would be reported
            # as the old namespace's from now on (its pages drained, then all its events).
            if ino == self.focus or procfs.exiting(hostpid):
                self.reused += ino == self.focus
                self.ignored.add(hostpid)
                self.prog.untrack(hostpid)
                return None
            self.model.forget_namespace(ino)  # all namespaces: a new one from here on
            self.ended.discard(ino)
        p = self.seed(hostpid, ino)
        return (ino, p.pid) if p is not None else None

    # -- kernel events -------------------------------------------------------------------------
    def on_event(self, e) -> None:
        kind = self.names.get(e.type) or f"type{e.type}"
        ns, pid = e.ns, e.pid
        replay: list = []  # a child's records that came before its fork record (see "fork")
        if kind == "discover" or not ns or not pid:
            met = e.hostpid not in self.model.procs
            where = self.resolve(e.hostpid)
            if where is None:
                if e.hostpid not in self.ignored:
                    # a watched-looking process, gone before it was placed: kept for its fork
                    # record, else counted unresolved (expire_unplaced)
                    self._keep_unplaced(e)
                return
            ns, pid = where
            child = self.model.procs.get(e.hostpid) if met and kind != "fork" else None
            if child is not None:
                # First met here, placed from /proc (a child of a process in a namespace the
                # kernel side did not know yet: the first children of a namespace made while
                # watch runs): its fork, like that of a child met at its first placed event
                # below, comes now, before anything it did.
                self._fork_before(child, e.ts)
            if kind == "discover":
                return
        if ns in self.ended and not self._member(e.hostpid, ns):
            if ns == self.focus:
                self.reused += 1  # `--pidns N` is that namespace, not the next with its number
                return
            if kind != "exit":  # (a late exit of the old one's, met for the first time here)
                self.model.forget_namespace(ns)  # a new namespace from here on
                self.ended.discard(ns)
        if ns not in self.model.namespaces:
            self.watch_ns(ns)
        hostpid = e.hostpid
        if hostpid not in self.model.procs:
            # Met at its exec (its fork record comes later: vfork, posix_spawn): /proc shows the
            # table the exec made, which the exec must not bury as the old one; those mappings
            # come from /proc after the exec instead (_mark_stale below), as of the exec, and the
            # pages execve itself wrote (stack, ld.so's data) are found on them, once.
            child = self.seed(hostpid, ns, maps=kind != "exec", exiting_ok=True)
            if child is not None and kind != "fork":
                self._fork_before(child, e.ts)
        ev = {"event": kind, "pid": pid, "hostpid": hostpid, "ns": ns, "ts": e.ts}
        gen = e.seq + 1 if e.newgen else None  # see bpf/events.h
        if kind == "mmap" or kind == "mprotect":
            ev["addr"], ev["len"], ev["prot"] = e.a0, e.a1, e.a2
            if e.code:
                # failed part-way (see bpf/watch.bpf.c): which part changed, /proc will say
                ev["error"] = _errno_name(e.code)
                self._mark_stale(hostpid)
            elif kind == "mprotect":
                self.merge_due.setdefault(hostpid, time.monotonic())  # the kernel may have joined pieces
            out = self.model.apply(ev, gen=gen, tid=e.hosttid, fixed=bool(e.a3 & MAP_FIXED),
                                   shared=kind == "mmap" and (e.a3 & MAP_TYPE) in (MAP_SHARED, MAP_SHARED_VALIDATE))
        elif kind == "munmap":
            ev["addr"], ev["len"] = e.a0, e.a1
            out = self.model.apply(ev, gen=gen, tid=e.hosttid)
        elif kind == "brk":
            out = self.model.apply(ev, gen=gen, want=e.a0, got=e.a1)
        elif kind == "fork":
            if e.a1 in self.forked_early:  # reported already, before the child's first event
                self.forked_early.discard(e.a1)
                return
            ev["child"] = e.a0
            elsewhere = bool(e.a2 & CLONE_NEWPID) or hostpid in self.nschanged
            # The child lives in another pid namespace (CLONE_NEWPID, or the parent called
            # unshare/setns before): place it from /proc in its own, not in the parent's with
            # the pid the parent sees, or it would carry two identities.
            placed = self.resolve(e.a1) if elsewhere else None
            out = self.model.apply(ev, childhost=e.a1)
            if e.a1 in self.ignored:  # in a namespace we do not watch: not one of ours
                self.model.procs.pop(e.a1, None)
            elif e.a1 in self.gone_unplaced:
                # its own records came first and found it gone from /proc already (its exit among
                # them): it lived and died before this fork record was read. In the parent's
                # namespace (no CLONE_NEWPID, no unshare/setns before), it is the pid the parent
                # saw: its records are placed now, after the fork. Elsewhere, they stay unplaced.
                # Either way nothing else would end it here (it kept its namespace, and that
                # namespace's kernel slot, for ever).
                _, kept = self.gone_unplaced.pop(e.a1)
                self.unplaced_count -= len(kept)
                if elsewhere:
                    self.unresolved += len(kept)
                    self.model.vanished(e.a1)
                else:
                    replay = kept
            elif elsewhere and placed is None:
                # gone from /proc already: its own records could not be placed (counted
                # unresolved) and its exit will not be seen here; it must not live on
                self.model.vanished(e.a1)
        elif kind == "exec" or kind == "rename":
            ev["comm"] = e.comm.split(b"\0", 1)[0].decode("utf-8", "replace")
            out = self.model.apply(ev, gen=gen)
            if kind == "exec":
                # exec replaced the whole address space: re-read it from /proc, but only at the
                # next drain (most exec'd processes of a busy loop are gone by then, and /proc
                # reads are the controller's most expensive work)
                self._mark_stale(hostpid, exec_only=True)
        else:
            if kind == "exit":
                ev["code"] = e.code
                self.nschanged.discard(hostpid)
                if pid == 1:
                    self.ended.add(ns)  # the kernel kills the rest with it
            elif kind == "mremap":
                ev.update(addr=e.a0, len=e.a1, new_addr=e.a2, new_len=e.a3)
                self.merge_due.setdefault(hostpid, time.monotonic())
            elif kind == "madvise":
                ev.update(addr=e.a0, len=e.a1, advice=e.a2)
                if e.code:  # applied up to a hole in the range
                    ev["error"] = _errno_name(e.code)
            elif kind == "newns":
                ev.update(flags=e.a0, how=NEWNS_HOW.get(e.code, str(e.code)))
                if e.code in (1, 2):  # unshare, setns: the process's later children are elsewhere
                    self.nschanged.add(hostpid)
            out = self.model.apply(ev, gen=gen)
        if out is not None:
            self.emit(out)
        if replay:
            for r in replay:
                self.on_event(r)
            child = self.model.procs.get(e.a1)
            if child is not None and child.alive:
                self.model.vanished(e.a1)  # (its exit was not among them)

    def _keep_unplaced(self, e) -> None:
        kept = self.gone_unplaced.setdefault(e.hostpid, (time.monotonic(), []))[1]
        if self.unplaced_count >= UNPLACED_MAX:
            self.unresolved += 1
            return
        kept.append(e)
        self.unplaced_count += 1

    def expire_unplaced(self, now: float | None = None) -> None:
        """Count as unresolved the records whose fork record did not come within
        UNPLACED_SECONDS (all of them when `now` is None: watch is stopping)."""
        for h, (t, kept) in list(self.gone_unplaced.items()):
            if now is None or now - t >= UNPLACED_SECONDS:
                del self.gone_unplaced[h]
                self.unplaced_count -= len(kept)
                self.unresolved += len(kept)

    def _member(self, hostpid: int, ns: int) -> bool:
        p = self.model.procs.get(hostpid)
        return p is not None and p.ns == ns

    def _fork_before(self, child, ts: int) -> None:
        """A new process's first event came before its parent's fork (reported when the parent's
        clone call returns; the child may run first): report the fork now, from /proc's parent,
        so a reader sees the fork before anything the child did, and drop the kernel's later."""
        parent = self.model.procs.get(child.ppid)
        if parent is None or not parent.alive or parent.ns != child.ns:
            return
        out = self.model.apply({"event": "fork", "pid": parent.pid, "hostpid": parent.hostpid, "ns": child.ns,
                                "ts": ts, "child": child.pid}, childhost=child.hostpid)
        if out is not None:
            self.forked_early.add(child.hostpid)
            self.emit(out)

    # -- periodic work -------------------------------------------------------------------------
    def drain(self, final: bool = False) -> None:
        """Attribute the pages the kernel has seen written since the last drain (and report
        them). `final`: the last drain, nothing is held back for later."""
        # A dump's reset first: every page drained from here on was taken after the dump had
        # released its tasks (its stamp is written as it does), so none of them is wiped. Checked
        # only at housekeeping, a reset came up to a second late and took with it the pages
        # written since the dump and drained meanwhile.
        self.check_dumps()
        exited = self.model.take_exited()  # before the drain: it holds the last of their pages
        drained = self.prog.drain_dirty()
        # when the pages were taken (drain_dirty walks the whole map, milliseconds): an exit
        # during the walk comes before them, as the pages it took after it
        ts = time.monotonic_ns()
        # Every page taken was written after its process's fork, exec and mappings were sent:
        # apply those records before attributing. Otherwise a process that ran and exited
        # entirely since the last poll (likely at idle priority: the controller is preempted
        # exactly while the workload runs) would be unknown here, already gone from /proc, and
        # its pages lost.
        self.prog.read_sent(max_s=DRAIN_READ_SECONDS)
        self._reread_stale(final)
        self._check_merges(final)
        drained = self._hold_early(drained, final)
        for hostpid, chunks in drained.items():
            if hostpid not in self.model.procs:
                if self.resolve(hostpid) is None:
                    # ours, gone before it was placed; but once the focused namespace has ended, an
                    # unknown writer belongs to a later namespace given its number: not a loss
                    if hostpid not in self.ignored and not (self.focus and self.focus in self.ended):
                        self.model.unplaced(sum(m.bit_count() for _, _, m in chunks), gone=True)
                    continue
            for ev in self.model.add_dirty_masks(hostpid, chunks, ts):
                self.emit(ev)
        self.model.release_exited(exited)

    def _mark_stale(self, hostpid: int, *, exec_only: bool = False) -> None:
        """Have `hostpid`'s VMA table read again from /proc (see _reread_stale). `exec_only`: what
        the events built since its exec is right, /proc only completes it (Model.fill_maps); else
        the events' table is wrong (a failed mprotect, lost records) and /proc replaces it."""
        if not exec_only:
            self.execd.discard(hostpid)
        elif hostpid not in self.stale:
            self.execd.add(hostpid)
        self.stale.setdefault(hostpid, time.monotonic())

    def _reread_stale(self, final: bool) -> None:
        """Read again from /proc the VMA tables the events could not keep (exec, a failed
        mprotect, lost records). /proc shows the table as it is now, so only once every record
        sent so far has been applied: read while records were pending, the table would already
        hold the mappings those records then add again on top of it (and kernel-merged ones in
        pieces). Under a backlog that never ends, after STALE_SECONDS all the same."""
        if not self.stale:
            return
        now = time.monotonic()
        caught_up = final or self.prog.backlog() == 0
        for hostpid, since in list(self.stale.items()):
            p = self.model.procs.get(hostpid)
            alive = p is not None and p.alive
            # a dead process has nothing to re-read, and its held pages must meet its tombstones
            # in this drain: they go once this drain is over (release_exited)
            if alive and not caught_up and now - since < STALE_SECONDS:
                continue
            del self.stale[hostpid]
            fill = hostpid in self.execd
            self.execd.discard(hostpid)
            if alive:
                at = time.monotonic_ns()
                maps = _maps(hostpid)
                (self.model.fill_maps if fill else self.model.set_maps)(p, maps, at=at)
                if fill:  # (set_maps takes /proc's table as it is, merged)
                    self.model.merge_maps(p, maps)  # the same read: ld.so's mprotects after exec
                self.merge_due.pop(hostpid, None)

    def _check_merges(self, final: bool) -> None:
        """Join the pieces of VMA tables the kernel may have merged since (an mprotect undone, an
        mremap), as /proc/PID/maps shows them (Model.merge_maps): once the rings are read up, as
        for _reread_stale, and for each process at most once per MERGE_SECONDS, so that a flood
        of mprotect calls does not become a flood of /proc reads (it waits for a later drain;
        meanwhile the pages are reported on the pieces). Until the rings are read up (at most
        STALE_SECONDS) the process's pages wait for the check (merge_wait, _hold_early)."""
        self.merge_wait = set()
        if not self.merge_due:
            return
        caught_up = final or self.prog.backlog() == 0
        now = time.monotonic()
        for hostpid, since in list(self.merge_due.items()):
            p = self.model.procs.get(hostpid)
            if p is None or not p.alive:  # (a dead one's pages meet its tombstones in this drain)
                del self.merge_due[hostpid]
                continue
            if now - self.merge_read.get(hostpid, float("-inf")) < MERGE_SECONDS and not final:
                continue
            if not caught_up and now - since < STALE_SECONDS:
                self.merge_wait.add(hostpid)
                continue
            del self.merge_due[hostpid]
            self.merge_read[hostpid] = now
            self.model.merge_maps(p, _maps(hostpid))

    def _hold_early(self, drained: dict, final: bool) -> dict:
        """Drained pages, less those written in an mm generation whose event has not been read
        yet (a generation is the number of the record that began it, plus one): a controller
        behind the rings (a flood, a busy machine) would find their mapping nowhere and count them
        unattributed. They wait for a later drain (not past the last one), as do the pages of a
        process whose VMA table is to be read again from /proc (see _reread_stale). They never
        wait for ever: a record takes its number only once its ring slot is secured, so every
        generation's record is read (or given up on, which moves the reader past it too)."""
        read_to = self.prog.records_read()
        stale = self.stale.keys() | self.merge_wait if self.merge_wait else self.stale
        if not self.held and not any(h in stale for h in drained) and \
                all(g <= read_to for chunks in drained.values() for g, _, _ in chunks):
            return drained  # the usual case
        pending = self.held + [(hostpid, c) for hostpid, chunks in drained.items() for c in chunks]
        self.held = []
        out: dict[int, list] = {}
        for hostpid, chunk in pending:
            if not final and (chunk[0] > read_to or hostpid in stale):
                self.held.append((hostpid, chunk))
            else:
                out.setdefault(hostpid, []).append(chunk)
        return out

    def check_lost(self) -> None:
        lost = self.prog.lost()
        # and what the controller could not place: records of processes gone before their
        # namespace was read, pages of no known mapping
        lost.update(unresolved=self.unresolved, unattributed=self.model.unattributed)
        self.model.lost = lost
        if lost["ring"] > self.lost_seen["ring"]:
            # mm records may have been among those lost (their generations too: the kernel side
            # starts one only for a record it could send): read every mapping table again
            for hostpid, p in self.model.procs.items():
                if p.alive:
                    self._mark_stale(hostpid)
        if any(lost[k] > self.lost_seen[k] for k in lost):
            self.lost_seen = dict(lost)
            self.emit({"event": "lost", "pid": 0, "hostpid": 0, "ns": 0, "ts": time.monotonic_ns(), **lost})

    def gc(self) -> None:
        """Drop what the model no longer needs, and give dead namespaces' kernel slots back."""
        # exit records may have been among those lost or unplaced (anyone may be gone), and a
        # namespace whose init has exited has nobody left: ask /proc who is still there (and
        # still in that namespace)
        anyone = bool(self.lost_seen["ring"] or self.gone_unplaced)
        if anyone or self.ended:
            for hostpid, p in list(self.model.procs.items()):
                ended = p.ns in self.ended
                if p.alive and (anyone or ended) and (not os.path.exists(f"/proc/{hostpid}") or
                                                     (ended and procfs.ns_inode(hostpid) != p.ns)):
                    self.model.vanished(hostpid)
        self.expire_unplaced(time.monotonic())
        self.model.gc()
        self.forked_early &= self.model.procs.keys()  # their fork record was lost, or long gone
        now = time.monotonic()
        self.merge_read = {h: t for h, t in self.merge_read.items() if now - t < MERGE_SECONDS}
        self.merge_due = {h: t for h, t in self.merge_due.items() if h in self.model.procs}
        # an ignored pid that is gone may come back as one of ours (resolve() would skip it)
        self.ignored = {h for h in self.ignored if os.path.exists(f"/proc/{h}")}
        for ino in list(self.prog.ns_slots):
            if ino not in self.model.namespaces:
                self.prog.forget_namespace(ino)
        # an ended namespace the model has forgotten needs no guard any more (a later one with its
        # number starts afresh anyway), except the focused one: keeps `ended` small under churn
        self.ended &= set(self.model.namespaces) | ({self.focus} if self.focus else set())

    def focus_gone(self) -> bool:
        """The focused namespace had processes and none is alive now (its init is gone, and the
        kernel kills the rest with it), also once the model has forgotten the dead."""
        if self.focus is None:
            return False
        procs = [p for p in self.model.procs.values() if p.ns == self.focus]
        if any(p.alive for p in procs):
            return False
        ns = self.model.namespaces.get(self.focus)
        return bool(procs) or (ns is not None and ns.ended)

    def check_dumps(self) -> None:
        for ino, ns in self.model.namespaces.items():
            got = notify.last_dump_at(ino, base=self.dumps_dir)
            if got is not None and got[0] != ns.last_dump:
                stamp, image = got
                ns.last_dump = stamp
                # Pages held for their records are kept: taken before the reset, they may still
                # have been written after the dump's release; counted dirty, the next dump takes
                # them once more, while lost they would be missing from "dirty since the dump".
                self.emit(self.model.dumped(ino, stamp, image))


_INT_ONLY = {int}


class _Lines:
    """Event lines kept in a list and written in one piece per controller tick (`flush`), or
    sooner when many pile up: one write per line costs a system call each whenever Python's
    stdout is unbuffered (PYTHONUNBUFFERED, `python -u`)."""

    PENDING_MAX = 4096
    CHUNK = 4096  # PIPE_BUF: a pipe that polls writable takes this much without blocking
    WAIT_MS = 100

    def __init__(self, out, give_up=lambda: False):
        self.out = out
        self.pending: list[str] = []
        # the reader went away (`| head`: a broken pipe) or the terminal hung up (EIO): watch
        # stops as it does on SIGTERM, and what comes after is dropped
        self.closed = False
        # asked while the reader is not reading: True when watch is to stop (SIGTERM, Ctrl-C,
        # --duration), and the lines not written yet are to be dropped (see _write)
        self.give_up = give_up

    def __call__(self, ev: dict) -> None:
        """Subclasses format `ev` and put it; this base puts nothing (the live dashboard shows
        model.recent instead)."""

    def put(self, line: str) -> None:
        self.pending.append(line)
        if len(self.pending) >= self.PENDING_MAX:
            self.flush()

    def flush(self) -> None:
        if self.closed:
            self.pending.clear()
            return
        try:
            if self.pending:
                text = "".join(self.pending)
                self.pending.clear()
                self._write(text)
            self.out.flush()
        except OSError as exc:
            if _reader_gone(exc, self.out):
                # Nobody reads any more (`watch --json | head -2`, a closed terminal): that ends
                # watch like a stop, status 0 and the summary on stderr, as other filters end at
                # a closed pipe; it used to end on BrokenPipeError, status 141 and no summary.
                self.closed = True
                _silence(self.out)
                raise Stop() from None
            # a full disk, an I/O error: say where (a bare ENOSPC said nothing)
            raise from_oserror(exc, "writing the events to standard output") from None

    def _write(self, text: str) -> None:
        """Write all of `text`. An unbuffered stdout hands a long write straight to write(2),
        which a signal (our own SIGTERM) can cut short on a pipe; TextIOWrapper would drop the
        rest and leave a torn line, so the bytes go out in a loop here. A reader that stops
        reading (`| less` left open, a stalled ssh) must not hold watch, and its programs, for
        ever: write(2) blocked and Python restarted it after each signal, so neither SIGTERM nor
        --duration ended watch. Each piece waits until the fd takes it, asking `give_up` every
        WAIT_MS; giving up raises Stop."""
        buf = getattr(self.out, "buffer", None)
        if buf is None:
            self.out.write(text)
            return
        self.out.flush()  # (and the buffer under it: what follows goes around it, to the fd)
        raw = getattr(buf, "raw", buf)
        data = memoryview(text.encode(self.out.encoding or "utf-8", self.out.errors or "strict"))
        poller, chunk = self._poller()
        while data:
            piece = data
            if poller is not None:
                while not poller.poll(self.WAIT_MS):
                    if self.give_up():
                        raise Stop()
                # whole lines where it can: a stop between two pieces leaves no half JSON object
                piece = data[:chunk]
                if len(data) > chunk:
                    cut = bytes(piece).rfind(b"\n") + 1
                    piece = piece[:cut] if cut else piece
            n = raw.write(piece)
            data = data[n or 0:]

    def _poller(self):
        """(poll object, piece size) on the output when it is something a reader drains (pipe,
        socket, terminal); (None, 0) for a file, which never makes a write wait for a reader. A
        terminal polls writable with as little as 256 bytes of room (WAKEUP_CHARS), and a bigger
        write could block still: its pieces are that small."""
        try:
            fd = self.out.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError):
            return None, 0
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return None, 0
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return poller, (256 if stat.S_ISCHR(mode) else self.CHUNK)


def _reader_gone(exc: OSError, out) -> bool:
    """Whether a failed write to `out` means its reader is gone for good: a pipe or socket
    nobody reads (EPIPE), or a terminal that hung up (its window closed, an ssh connection
    dropped: writes give EIO from then on)."""
    if isinstance(exc, BrokenPipeError):
        return True
    if exc.errno != errno.EIO:
        return False
    try:
        # (not isatty: a terminal that hung up answers its ioctl with EIO too)
        return stat.S_ISCHR(os.fstat(out.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def _silence(out) -> None:
    """/dev/null in place of the file descriptor under `out` (stdout or stderr) once its reader
    is gone: what Python still holds in its buffer, flushed at exit, would fail again there (an
    "Exception ignored" message and exit status 120)."""
    try:
        fd = out.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def _note(line: str) -> None:
    """One line on stderr, which may be the terminal that hung up: then nothing is said (and no
    traceback follows)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        _silence(sys.stderr)


class JsonLines(_Lines):
    """`--json` output: one object per line. Most events are integers under a fixed set of keys
    per kind, so each such shape gets a %-format template once (four times cheaper than the json
    encoder, and this runs for every event); events carrying strings go through json."""

    def __init__(self, out, give_up=lambda: False):
        super().__init__(out, give_up)
        self.encode = json.JSONEncoder(separators=(",", ":")).encode
        self.templates: dict[tuple, str | None] = {}

    def __call__(self, ev: dict) -> None:
        vals = tuple(ev.values())
        shape = (vals[0], *ev)
        t = self.templates.get(shape, "")
        if t == "":
            t = self.templates[shape] = self._template(ev)
        vals = vals[1:]
        # %d would also take a bool or a float (as 1, or truncated): only exact ints go this way
        if t is not None and {*map(type, vals)} == _INT_ONLY:
            self.put(t % vals)
        else:
            self.put(self.encode(ev) + "\n")

    def _template(self, ev: dict) -> str | None:
        items = list(ev.items())
        if items[0][0] != "event" or any(type(v) is not int for _, v in items[1:]):
            return None
        head = self.encode({"event": items[0][1]})[:-1].replace("%", "%%")
        return head + "".join(f",{json.dumps(k).replace('%', '%%')}:%d" for k, _ in items[1:]) + "}\n"


class PlainLines(_Lines):
    """Plain event lines (no terminal, or --plain)."""

    def __call__(self, ev: dict) -> None:
        self.put(_plain_line(ev) + "\n")


def _plain_line(ev: dict) -> str:
    """One event as a line of text; a comm's newlines and escape sequences come out escaped (a
    process could otherwise forge lines, or write to the reader's terminal)."""
    from .image.render import terminal_safe
    from .watchview import event_fields

    who = f"{ev['pid']}/{ev['hostpid']}"
    fields = " ".join(event_fields(ev, readable=False))
    return terminal_safe(f"{ev['ts'] / 1e9:14.6f} ns={ev['ns']} pid={who:<13} {ev['event']:<8} {fields}".rstrip())


CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def _can_load_bpf(cap_eff_hex: str) -> bool:
    """From /proc/self/status's CapEff: what loading tracing programs takes (bpf(2) and
    perf_event_open(2) of tracepoints)."""
    caps = int(cap_eff_hex, 16)
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def _check_focus(host: int, focus: int | None) -> None:
    if focus is None:
        return
    if focus == host:
        raise UsageError(f"pid namespace {focus} is the host's own; watch follows container namespaces")
    if not _watched_namespaces(host, focus):
        raise UsageError(f"no process is in pid namespace {focus} (see `ckptrace ls`)")


def main(args) -> int:
    from .errors import AccessDenied
    from .kernel.bpfload import WatchProgram, ns_dev_ino

    if os.geteuid() != 0:
        raise AccessDenied("watch needs root (it loads BPF programs)")
    if not _can_load_bpf(procfs.status(os.getpid()).raw.get("CapEff", "0")):
        # (asked first: bcc would print its own lines and then say it could not compile)
        raise AccessDenied("watch needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN, to load its BPF programs; "
                           "this root process has neither (capabilities dropped)")
    host = ns_dev_ino("self")[1]
    _check_focus(host, args.pidns)
    mode = "json" if args.json else ("plain" if args.plain or not sys.stdout.isatty() else "live")

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGHUP, _request_stop)  # its terminal closed: stop as cleanly
    signal.signal(signal.SIGCONT, _note_resumed)  # (the dashboard's _JobControl passes it on)
    model = Model()
    out = sys.stdout

    stop_at = time.monotonic() + args.duration if args.duration else float("inf")

    def give_up() -> bool:
        return _stop_requested[0] or time.monotonic() >= stop_at

    if mode == "json":
        emit = JsonLines(out, give_up)
    elif mode == "plain":
        emit = PlainLines(out, give_up)
    else:
        emit = _Lines(out)  # nothing is put: the dashboard shows model.recent

    with WatchProgram(focus_ns=args.pidns or 0, faults=not args.no_faults) as prog:
        ctl = Controller(prog, model, host=host, focus=args.pidns, emit=emit)
        prog.open_events(ctl.on_record)
        ctl.seed_all()
        what = f"pid namespace {args.pidns}" if args.pidns else "every non-host pid namespace"
        model.faults = prog.faults
        model.focus = args.pidns or None
        model.status = (f"{len(prog.attached)} tracepoints attached"
                        + ("" if prog.faults else ", write faults off (--no-faults)"))
        priority = CpuPriority(args.priority)
        base_status = model.status

        def late(lag: float) -> None:
            if priority.observe(lag):
                model.status = f"{base_status}, {priority.describe()}"

        try:
            _hurry[0] = priority.hurry
            if _stop_requested[0]:
                priority.hurry()  # asked for while loading and seeding: no guard, no lowering
            priority.start()
            model.status = f"{base_status}, {priority.describe()}"
            ctl.late = late
            if mode != "live":
                _note(f"ckptrace watch: watching {what}: {model.status}")
            if mode == "live":
                _run_live(ctl, model, args)
            else:
                _run_stream(ctl, args, emit)
        except (KeyboardInterrupt, Stop):
            pass
        finally:
            _hurry[0] = None
            priority.stop()
            try:
                # the programs go first: no more records, nothing more for the workload to pay
                # (under a flood the stop took seconds while they ran on)
                prog.detach()
                # what the kernel sent before we stopped is still reported, as much as a second
                # allows: a flood's backlog can be long, and stopping on time matters more
                prog.read_sent(max_s=FINAL_READ_SECONDS)
                ctl.drain(final=True)
                ctl.expire_unplaced()  # (their fork records will not come any more)
                ctl.check_lost()
                # a slow reader gets the rest too, for as long as the final read may take (asked
                # to stop, give_up was true already: it got 100 ms)
                last = time.monotonic() + FINAL_READ_SECONDS
                emit.give_up = lambda: time.monotonic() >= last
                emit.flush()
            except (BrokenPipeError, CkptError, Stop):
                pass  # (Stop: the reader stopped reading, and we are asked to stop: lines dropped)
        lost = dict(model.lost or {})
        unattributed = lost.pop("unattributed", 0)
        if any(lost.values()):
            _note(f"ckptrace watch: lost events: {lost}")
        if unattributed:
            # not events: pages whose mapping nobody could say (short-lived processes: docs/watch.md)
            gone = model.unattributed_gone
            _note(f"ckptrace watch: {unattributed} written pages could not be placed on a mapping" +
                  (f" ({'all' if gone == unattributed else gone} of them by processes that exited before "
                   "their mappings could be read)" if gone else ""))
        if priority.raised:
            _note(f"ckptrace watch: the controller fell behind at idle priority and was raised to normal "
                  f"priority {priority.raised}x")
    return 0


class LoopGc:
    """Python's cyclic garbage collector run by the loop's housekeeping instead of by allocation
    counts. Following a fork/exec the controller allocates a few hundred objects (event dicts,
    the child's VMA copies, tombstones), so by counts a collection ran every few iterations and
    a full one, over the whole model, every few hundred: 17 % of the controller's CPU in the
    fork/exec replay of bench/watch_controller.py. What it keeps is acyclic and freed by
    reference counting; the young generations are still collected every `tick` (each
    HOUSEKEEP_SECONDS) and everything every FULL_SECONDS, so cycles (tracebacks, the
    dashboard's renderables) are reclaimed. What exists when the loop starts (modules, bcc,
    the seeded model) is frozen out of the collections."""

    FULL_SECONDS = 60.0

    def __enter__(self) -> "LoopGc":
        self.was_enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        self.next_full = time.monotonic() + self.FULL_SECONDS
        return self

    def tick(self, now: float) -> None:
        if now >= self.next_full:
            gc.collect()
            self.next_full = now + self.FULL_SECONDS
        else:
            gc.collect(1)

    def __exit__(self, *exc) -> None:
        gc.unfreeze()
        if self.was_enabled:
            gc.enable()


def _loop(ctl: Controller, args, tick) -> None:
    """The controller loop shared by every output mode; `tick()` runs after each poll."""
    with LoopGc() as collector:
        _loop_collected(ctl, args, tick, collector)


def _loop_collected(ctl: Controller, args, tick, collector: LoopGc) -> None:
    end = time.monotonic() + args.duration if args.duration else None
    next_drain = next_house = last = time.monotonic()
    while True:
        now = time.monotonic()
        if end is not None and now >= end:
            return
        # > 0: the loop came round later than its poll allows (a stop in between is no lateness)
        ctl.late(now - max(last, _resumed_ns[0] / 1e9) - POLL_MS / 1000)
        last = now
        ctl.poll(POLL_MS)
        if ctl.failure is not None:
            raise ctl.failure
        if _stop_requested[0]:
            raise Stop()
        now = time.monotonic()
        if now >= next_drain:
            ctl.drain()
            next_drain = now + DRAIN_SECONDS
        if now >= next_house:
            ctl.check_lost()
            ctl.gc()
            collector.tick(now)
            next_house = now + HOUSEKEEP_SECONDS
        tick()


def _run_stream(ctl: Controller, args, lines: _Lines) -> None:
    next_look = [0.0 if args.pidns else float("inf")]  # never again once said

    def tick() -> None:
        lines.flush()
        # focus_gone looks at every process: once per housekeeping period, not every poll
        now = time.monotonic()
        if now < next_look[0]:
            return
        next_look[0] = now + HOUSEKEEP_SECONDS
        if ctl.focus_gone():
            # said once, on stderr (stdout stays events): a script waiting on events would wait on
            _note_focus_gone(args.pidns)
            next_look[0] = float("inf")

    _loop(ctl, args, tick)


def _note_focus_gone(ino: int) -> None:
    _note(f"ckptrace watch: pid namespace {ino} has no process left: nothing more will come from it")


def _run_live(ctl: Controller, model: Model, args) -> None:
    try:
        _run_dashboard(ctl, model, args)
    finally:
        # (once the terminal is restored, where it can be read: the dashboard says it meanwhile)
        if ctl.focus_gone():
            _note_focus_gone(args.pidns)


def _run_dashboard(ctl: Controller, model: Model, args) -> None:
    from rich.console import Console
    from rich.live import Live

    from .watchview import Selection, handle_key, pin, render, selected_ns

    console = Console()
    sel = Selection()
    keys = _Keys()
    dumps = BackgroundDump()
    next_render = [0.0]

    with keys, _HangupStops(console), Live(console=console, screen=True, auto_refresh=False, transient=True) as live, \
            _JobControl(console, keys) as job:
        def tick():
            if job.check():
                next_render[0] = 0.0  # continued: a new screen, drawn now
            for k in keys.read():
                action = handle_key(sel, model, k)
                if action == "quit":
                    raise KeyboardInterrupt
                if action == "dump":
                    sel.tell(dumps.start(selected_ns(model, sel)), model.clock(), lasting=dumps.running)
            outcome = dumps.poll()
            if outcome is not None:
                sel.tell(outcome, model.clock())
            now = time.monotonic()
            if now >= next_render[0]:
                pin(model, sel)  # what is shown is what stays selected, whatever comes and goes
                live.update(render(model, sel, width=console.width, height=console.height), refresh=True)
                next_render[0] = now + RENDER_SECONDS

        _loop(ctl, args, tick)


class _JobControl:
    """Ctrl-Z and `fg` under the dashboard. Nothing handled them: stopped by SIGTSTP's default
    action, the dashboard left the alternate screen and the cbreak modes in place (the shell drew
    its prompt over the dashboard), and once continued it found the terminal in the shell's line
    mode, echo on, so that keys waited for Enter. Now SIGTSTP gives the terminal back as it was
    found (main screen, cursor shown, the saved modes) and stops the process; SIGCONT (however
    it was stopped) sets the dashboard's terminal up again and has it drawn whole.

    The handlers only set flags: the loop's tick does the work (`check`), never in the middle
    of a frame being written."""

    def __init__(self, console, keys: "_Keys"):
        self.console = console
        self.keys = keys
        self.stop_asked = False
        self.continued = False
        self.handlers: dict = {}

    def __enter__(self) -> "_JobControl":
        self.handlers = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTSTP, signal.SIGCONT)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)

    def _signalled(self, sig, frame) -> None:
        if sig == signal.SIGTSTP:
            self.stop_asked = True
        else:
            self.continued = True
            if callable(before := self.handlers.get(sig)):
                before(sig, frame)  # (_note_resumed)

    def check(self) -> bool:
        """Stop or set up again as signalled; True when the dashboard is to be drawn whole."""
        if self.stop_asked:
            self.stop_asked = False
            self._give_back()
            # SIGSTOP, not SIGTSTP's default action: in an orphaned process group (started under
            # setsid, by a supervisor) the kernel discards that one, and we would run on with the
            # terminal given back. The shell's `fg` continues either.
            os.kill(os.getpid(), signal.SIGSTOP)
            self.continued = True  # (its handler may run only after this returns)
        if not self.continued:
            return False
        if _stop_requested[0]:
            # `kill %1` of the stopped job: SIGTERM, then SIGCONT in the background, where setting
            # the modes would stop us again (SIGTTOU), programs attached, and a frame drawn would
            # land on the shell's screen
            raise Stop()
        self.continued = False
        self.keys.single_keys()  # first: continued in the background (`bg`), SIGTTOU stops us here
        self.console.set_alt_screen(True)
        self.console.show_cursor(False)
        return True

    def _give_back(self) -> None:
        self.console.show_cursor(True)
        self.console.set_alt_screen(False)
        self.console.file.flush()
        self.keys.restore()


class _HangupStops:
    """Around the dashboard: its terminal hung up (the window closed, an ssh connection dropped).
    SIGHUP asks for a stop, but a redraw can meet the dead terminal before the loop sees the
    request, and leaving the alternate screen always does: writes to it fail with EIO. That is a
    stop too (status 0, programs detached), not a traceback."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if isinstance(exc, OSError) and _reader_gone(exc, self.console.file):
            _silence(self.console.file)  # (rich may still hold the frame it could not write)
            raise Stop() from None
        return False


class BackgroundDump:
    """`d` on the dashboard: `ckptrace dump` of a namespace in the background (the tasks keep
    running; its notify stamp then resets the dirty counts here), and what became of it."""

    def __init__(self, argv0: list[str] | None = None):
        self.argv0 = argv0 or [sys.executable, "-m", "ckptrace"]
        self.proc = None
        self.what = ""

    def start(self, ino: int | None) -> str:
        import subprocess

        if ino is None:
            return "no namespace selected"
        if self.proc is not None and self.proc.poll() is None:
            return f"still {self.what}"
        path = f"/var/tmp/ckptrace-{ino}-{int(time.time())}.img"
        try:
            self.proc = subprocess.Popen([*self.argv0, "dump", "--pidns", str(ino), "-o", path, "-q"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return f"dump failed to start: {exc.strerror}"
        self.what = f"dumping {ino} to {path}"
        return self.what

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> str | None:
        """The outcome once the dump has ended (once), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        err = self.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        self.proc.stderr.close()
        ok, self.proc = self.proc.returncode == 0, None
        if ok:
            return self.what.replace("dumping", "dumped", 1)
        why = err[-1].removeprefix("ckptrace dump: ") if err else "no message"
        return f"dump failed: {why}"


class _Keys:
    """Single keystrokes from a terminal without echo or line buffering, read without blocking."""

    def __enter__(self):
        import termios

        self.fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        if self.fd is not None:
            self.saved = termios.tcgetattr(self.fd)
            self.single_keys()
        return self

    def __exit__(self, *exc):
        self.restore()

    def single_keys(self) -> None:
        """The terminal in cbreak mode: keys come one by one, unechoed (at start, and again after
        the job was continued: the shell had the terminal meanwhile, in its own modes)."""
        import termios
        import tty

        if self.fd is None:
            return
        while True:
            try:
                tty.setcbreak(self.fd)
                return
            except termios.error as exc:
                # Started, or continued, in a background job (`timeout 10 ckptrace watch`, `&`,
                # `bg`): the kernel stops us with SIGTTOU, and the call fails with EINTR once we
                # are continued.
                if exc.args[0] != errno.EINTR:
                    raise KernelError("setting the terminal to read single keys", exc.args[0]) from None
                if _stop_requested[0]:
                    raise Stop() from None

    def restore(self) -> None:
        """The terminal's modes as they were found (at the end, and while the job is stopped)."""
        import termios

        if self.fd is not None:
            # From a background job (Ctrl-Z, bg, kill %1) this would stop us with SIGTTOU, the
            # programs still attached, until someone runs fg: ignored, the call goes through.
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except termios.error as err:
                # a terminal that hung up has no modes left to restore (EIO): watch is ending
                # because of it, quietly
                if err.args[0] != errno.EIO:
                    raise
            finally:
                signal.signal(signal.SIGTTOU, old)

    def read(self) -> list[str]:
        import select

        if self.fd is None:
            return []
        out = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 64).decode("utf-8", "replace")
            if not data:
                break
            i = 0
            while i < len(data):
                if data.startswith("\x1b[", i) and i + 2 < len(data):
                    out.append({"A": "up", "B": "down", "C": "right", "D": "left"}.get(data[i + 2], "?"))
                    i += 3
                else:
                    out.append(data[i])
                    i += 1
        return out
