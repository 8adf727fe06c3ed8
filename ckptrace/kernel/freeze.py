"""Freeze every task of a pid namespace with PTRACE_SEIZE + PTRACE_INTERRUPT.

Why ptrace rather than the cgroup freezer: if the dumper dies, even by SIGKILL, the kernel detaches
its tracees and they run on; a frozen cgroup would stay frozen until someone thaws it. Why a rescan
loop: a task may fork or clone between our scan and its stop; a stopped task cannot, so once a
scan finds no task we have not stopped yet, the set is complete (the seed's freeze_pidns loop).

`Freezer.release()` must run whatever happens (success, error, signal): the dump command calls it
from a `finally`.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from ..errors import AccessDenied, CkptError, NoSuchProcess, Unsupported, UsageError
from . import procfs
from .ptrace import WALL, Tracee

MAX_ROUNDS = 1000
ZOMBIE_PATIENCE_SECONDS = 1.0  # a zombie seen that long is its parent's doing, not a passing state: kept
STOP_SECONDS = 0.5  # for a batch of interrupted tasks to stop
# and, past it, for one that is runnable (state R): it stops on its next way out of the kernel,
# which a saturated host may not give it the CPU for that soon; it is not stuck there
RUNNABLE_STOP_SECONDS = 15.0


@dataclass
class Task:
    hostpid: int  # tgid on the host
    hosttid: int
    tracee: Tracee
    nstid: int = 0  # the tid inside the namespace, read when seized (to name it once it is gone)


def find_init(ns: int, root: str = procfs.PROC) -> int:
    """Host pid of the namespace's init (pid 1 inside). Skips /proc entries it cannot read."""
    for pid in procfs.pids(root):
        if procfs.ns_inode(pid, "pid", root) != ns:
            continue
        try:
            nspid = procfs.status(pid, root=root).nspid
        except (NoSuchProcess, AccessDenied):
            continue
        if nspid and nspid[-1] == 1:
            return pid
    raise UsageError(f"no pid namespace {ns} (see `ckptrace ls`)")


def scan(ns: int, init: int, root: str = procfs.PROC) -> list[tuple[int, int]]:
    """(hostpid, hosttid) of every task of the namespace.

    Members are found by their ns link in /proc, not only by walking the tree from init: a task
    that joined with setns (nsenter) has its parent outside the namespace. Entries that cannot be
    read (gone, or EACCES like the host's pid 1) are skipped. A child living in another pid
    namespace is a nested namespace, which restore could not rebuild: refuse."""
    out: list[tuple[int, int]] = []
    members = [pid for pid in procfs.pids(root) if procfs.ns_inode(pid, "pid", root) == ns]
    if init not in members:
        raise NoSuchProcess(f"the init of pid namespace {ns} (host pid {init}) is gone")
    for pid in members:
        try:
            tids = procfs.tids(pid, root)
            kids = procfs.children(pid, root)
        except (NoSuchProcess, AccessDenied):
            continue
        out += [(pid, t) for t in tids]
        for k in kids:
            kns = procfs.ns_inode(k, "pid", root)
            if kns is not None and kns != ns:
                raise Unsupported(f"pid {k} (child of {pid}) lives in a nested pid namespace {kns}: "
                                  "nested pid namespaces are not supported")
    return out


class Freezer:
    """Holds every task of one namespace stopped under ptrace."""

    def __init__(self, ns: int, init: int, root: str = procfs.PROC):
        self.ns = ns
        self.init = init
        self.root = root
        self.tasks: dict[int, Task] = {}  # by host tid
        # host pid -> its status: unreaped processes, part of the image but not held (the kernel
        # lets nobody attach to a zombie); their parents, held, cannot reap them meanwhile
        self.zombies: dict[int, procfs.Status] = {}
        self._cgroups_seen: set[int] = set()  # host pids whose cgroups were checked (_check_cgroups)
        self._cgroup_mounts: dict[str, str] | None = None

    def freeze(self) -> None:
        """Seize and stop every task, rescanning until no new task appears.

        Two passing states are waited out rather than refused, by letting go of the task that
        holds things up (the tasks stop again in a later round; nothing is collected yet):
        - a zombie, usually a child that just exited and that its parent is about to reap; if we
          hold the parent it cannot, so the parent is let go until the zombie is gone
          (ZOMBIE_PATIENCE_SECONDS at most; then it is the parent's way, a zombie the image keeps
          in `zombies`: an init that never reaps, a parent busy elsewhere);
        - a task that does not stop, usually a vfork parent, which sleeps in the kernel where no
          ptrace stop reaches it until its child execs; if we hold the child it never will, so
          the children are let go; a task that still does not stop is refused, not waited for.
        A shell running commands in a loop (dash uses vfork) otherwise failed a third of the
        dumps, or hung the dumper for good."""
        zombies: dict[int, float] = {}  # tid -> when first seen
        for _ in range(MAX_ROUNDS):
            found = scan(self.ns, self.init, self.root)
            new = [(p, t) for p, t in found if t not in self.tasks and t not in self.zombies]
            if not new:
                now = {t for _, t in found}
                for t in set(self.tasks) - now:
                    self.tasks.pop(t)
                for t in set(self.zombies) - now:  # reaped while its parent was let go
                    self.zombies.pop(t)
                return
            fresh = []
            waiting = False  # for a zombie to be reaped
            for pid, tid in new:
                try:
                    st = procfs.status(pid, tid, self.root)
                except NoSuchProcess:
                    continue
                if st.state not in ("Z", "X"):
                    self._check_cgroups(pid, st)
                if st.state in ("Z", "X") or not self._seize(pid, tid, st, fresh):
                    waiting |= not self._wait_out_zombie(pid, tid, st, zombies)
            self._wait_stops(fresh)
            if waiting:
                time.sleep(0.001)  # let the parents get to it
        raise Unsupported(f"pid namespace {self.ns} keeps creating tasks; could not freeze it")

    def _seize(self, pid: int, tid: int, st, fresh: list[Task]) -> bool:
        """Seize and interrupt one task (appended to `fresh`); False if it turned out to be a
        zombie (the kernel refuses to attach to a task that has begun to exit: EPERM)."""
        if st.tracer:
            raise Unsupported(f"task {tid} (pid {st.nspid[-1] if st.nspid else '?'} inside the namespace) is "
                              f"already traced by {self._who(st.tracer)}: refusing to checkpoint a task "
                              "someone else controls")
        tr = Tracee(tid)
        try:
            tr.seccomp_suspended = tr.seize_suspending_seccomp()
            tr.interrupt()
        except NoSuchProcess:
            return True  # gone: the next scan will not list it
        except AccessDenied:
            try:
                if procfs.status(pid, tid, self.root).state in ("Z", "X"):
                    return False
            except NoSuchProcess:
                return True
            raise
        task = Task(pid, tid, tr, st.nspid[-1] if st.nspid else 0)
        self.tasks[tid] = task
        fresh.append(task)
        return True

    def _check_cgroups(self, pid: int, st) -> None:
        """Refuse a process in a frozen cgroup (v2 cgroup.freeze, v1 freezer), once per process.
        Such a task stops for PTRACE_INTERRUPT, but every injected call then waits for a thaw:
        resumed, it goes back into the cgroup's freeze before it reaches the call, and the
        dump waited for good (v2), or it never stopped and was named as a task waiting in the
        kernel (v1)."""
        if pid in self._cgroups_seen:
            return
        self._cgroups_seen.add(pid)
        if self._cgroup_mounts is None:
            self._cgroup_mounts = procfs.cgroup_mounts(self.root)
        try:
            lines = procfs.parse_cgroup(procfs.cgroup_text(pid, self.root))
        except CkptError:
            return  # (gone: the scan will say)
        for controllers, _, why in procfs.frozen_cgroups(lines, self._cgroup_mounts):
            inner = st.nspid[-1] if st.nspid else "?"
            thaw = "echo 0 >" if not controllers else "echo THAWED >"
            file = "cgroup.freeze" if not controllers else "freezer.state"
            raise Unsupported(f"pid {inner} (host pid {pid}) is in a frozen cgroup ({why}): a frozen task "
                              f"cannot run the calls the dump injects; thaw it first ({thaw} the {file} "
                              "named) and dump again")

    def _who(self, pid: int) -> str:
        """A host pid as the user knows it: "pid 3 inside the namespace (host pid 4242)" for one of
        its tasks (strace -f run inside it), "host pid 4242" for one outside."""
        try:
            if procfs.ns_inode(pid, "pid", self.root) == self.ns:
                return f"pid {procfs.status(pid, None, self.root).nspid[-1]} inside the namespace (host pid {pid})"
        except CkptError:
            pass
        comm = procfs.comm(pid, self.root)
        return f"host pid {pid}" + (f" ({comm})" if comm else "")

    def _wait_out_zombie(self, pid: int, tid: int, st, zombies: dict[int, float]) -> bool:
        """True once the zombie `tid` is kept (in self.zombies); False while it is waited out."""
        now = time.monotonic()
        if now - zombies.setdefault(tid, now) <= ZOMBIE_PATIENCE_SECONDS:
            self._let_go(lambda t: t.hostpid == st.ppid)  # its parent, if we hold it: it may reap now
            return False
        try:
            st = procfs.status(pid, tid, self.root)
        except NoSuchProcess:
            return True  # reaped at last: the next scan will not list it
        if st.state != "Z":
            return False  # being reaped (X), or a task that exits slowly: not yet a zombie
        why = self._zombie_refusal(pid, tid, st)
        if why:
            raise Unsupported(why)
        self.zombies[tid] = st
        return True

    def _zombie_refusal(self, pid: int, tid: int, st) -> str | None:
        """Why a task that stayed a zombie cannot be kept in the image; None when it can: an
        unreaped process whose parent is in the namespace. A zombie leader whose other threads
        live on is no unreaped child: its main thread exited (pthread_exit in main), the process
        did not, and no parent will reap it while those threads run."""
        inner = st.nspid[-1] if st.nspid else "?"
        if tid == pid:
            live = []  # (tid inside the namespace, host tid)
            for other in _tids(pid, self.root):
                try:
                    ost = procfs.status(pid, other, self.root)
                    if other != tid and ost.state not in ("Z", "X"):
                        live.append((ost.nspid[-1] if ost.nspid else "?", other))
                except NoSuchProcess:
                    pass
            if live:
                return (f"process {inner} (host pid {pid}) lives on in "
                        f"{'thread' if len(live) == 1 else 'threads'} {', '.join(str(n) for n, _ in live)} "
                        f"(host {', '.join(str(h) for _, h in live)}) after its main thread has exited "
                        "(pthread_exit in main?): ckptrace cannot checkpoint a process without its main thread")
        else:
            return (f"thread {tid} of process {pid} stays a zombie (pid {inner} inside the namespace; "
                    "traced by someone?): ckptrace cannot checkpoint a thread that is neither alive nor gone")
        if pid == self.init:
            return f"the namespace's init (host pid {pid}) has exited: the namespace is going away"
        try:
            inside = procfs.ns_inode(st.ppid, "pid", self.root) == self.ns
        except CkptError:
            inside = False
        if not inside:
            return (f"process {pid} (pid {inner} inside the namespace) is a zombie whose parent (host pid "
                    f"{st.ppid}) is outside the namespace: restore could not give it back to that parent")
        return None

    def _wait_stops(self, fresh: list[Task]) -> None:
        """Wait for the interrupted tasks to stop (interrupt all first, then wait for each: the
        stops overlap instead of queueing)."""
        deadline = time.monotonic() + STOP_SECONDS / 5
        late = []
        for task in fresh:
            try:
                if not task.tracee.wait_stop(deadline):
                    late.append(task)
            except NoSuchProcess:
                self.tasks.pop(task.hosttid, None)
        if not late:
            return
        # A vfork parent stops once its child execs or exits: let go of the children we hold.
        kids: set[int] = set()
        for task in late:
            try:
                kids.update(procfs.children(task.hostpid, self.root))
            except (NoSuchProcess, AccessDenied):
                pass
        self._let_go(lambda t: t.hostpid in kids)
        started = time.monotonic()
        deadline = started + STOP_SECONDS
        for task in late:
            try:
                while not task.tracee.wait_stop(deadline):
                    if self._runnable(task) and time.monotonic() < started + RUNNABLE_STOP_SECONDS:
                        deadline = time.monotonic() + STOP_SECONDS
                        continue
                    raise Unsupported(f"task {task.nstid or '?'} inside the namespace (host tid {task.hosttid}) does not "
                                      f"stop: it waits in the kernel "
                                      f"({procfs.wchan(task.hosttid, self.root) or 'unknown'}), e.g. a vfork "
                                      "parent for its child's exec, or an uninterruptible sleep")
            except NoSuchProcess:
                self.tasks.pop(task.hosttid, None)

    def _runnable(self, task: Task) -> bool:
        """Whether a task that has not stopped yet is merely waiting for a CPU (state R), not
        sleeping in the kernel."""
        try:
            return procfs.status(task.hostpid, task.hosttid, self.root).state == "R"
        except CkptError:
            return False

    def _let_go(self, which) -> None:
        """Detach the held, stopped tasks `which(task)` picks; a later round seizes them again."""
        for task in [t for t in self.tasks.values() if t.tracee.stopped and which(t)]:
            self.tasks.pop(task.hosttid)
            _detach(task)

    def release(self, *, leave_stopped: bool = False) -> None:
        """Detach every task (idempotent). With leave_stopped, each thread stays in a group-stop:
        SIGSTOP is queued to each process before the detach, so the detached threads stop."""
        # A second SIGINT/SIGTERM must not interrupt the release half-way (their handlers raise).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._release(leave_stopped)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _release(self, leave_stopped: bool) -> None:
        if leave_stopped:
            for pid in {t.hostpid for t in self.tasks.values()}:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
        # Stopped tasks first: only a stopped tracee can be detached, and one still on its way to
        # the stop (a vfork parent) gets there once its child, detached here, has exec'd.
        for task in sorted(self.tasks.values(), key=lambda t: not t.tracee.stopped):
            try:
                # Bounded: one that never stops is let go by the kernel when this process exits.
                if task.tracee.stopped or task.tracee.wait_stop(time.monotonic() + STOP_SECONDS):
                    _detach(task)
            except CkptError:  # one failing task must not keep the others stopped
                pass
        # A held task that was killed stays a zombie reported to us, its tracer, and its parent
        # (init, for one) hears of it only once we reap it: do, rather than when we exit.
        for task in self.tasks.values():
            try:
                os.waitpid(task.hosttid, os.WNOHANG | WALL)
            except ChildProcessError:  # detached: no longer ours to wait for
                pass
        self.tasks.clear()

    def exited(self) -> list[Task]:
        """The held tasks that have exited (killed: a stopped task cannot exit by itself) or are
        exiting, leaders first. For an error's explanation: a dump fails when one dies under it."""
        out = []
        for task in self.tasks.values():
            try:
                gone = procfs.status(task.hostpid, task.hosttid, self.root).state in ("Z", "X")
            except CkptError:
                gone = True
            if gone:
                out.append(task)
        return sorted(out, key=lambda t: (t.hostpid, t.hosttid != t.hostpid, t.hosttid))


def _tids(pid: int, root: str) -> list[int]:
    try:
        return procfs.tids(pid, root)
    except CkptError:
        return []


def _detach(task: Task) -> None:
    """Let one stopped task go, as it was: one seized in a job-control stop stays stopped."""
    try:
        task.tracee.detach(signal.SIGSTOP if task.tracee.group_stopped else 0)
    except CkptError:  # one failing detach must not keep the others stopped
        pass
