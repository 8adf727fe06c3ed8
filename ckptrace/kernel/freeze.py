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
from dataclasses import dataclass

from ..errors import AccessDenied, CkptError, NoSuchProcess, Unsupported, UsageError
from . import procfs
from .ptrace import Tracee

MAX_ROUNDS = 1000


@dataclass
class Task:
    hostpid: int  # tgid on the host
    hosttid: int
    tracee: Tracee


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

    def freeze(self) -> None:
        for _ in range(MAX_ROUNDS):
            found = scan(self.ns, self.init, self.root)
            new = [(p, t) for p, t in found if t not in self.tasks]
            if not new:
                gone = set(self.tasks) - {t for _, t in found}
                for t in gone:
                    self.tasks.pop(t)
                return
            fresh = []
            for pid, tid in new:
                try:
                    st = procfs.status(pid, tid, self.root)
                except NoSuchProcess:
                    continue
                tracer = st.tracer
                if st.state in ("Z", "X"):
                    inner = st.nspid[-1] if st.nspid else "?"
                    raise Unsupported(f"task {tid} (pid {inner} inside the namespace) is a zombie its parent "
                                      "has not reaped: zombies cannot be checkpointed; retry once it is reaped")
                if tracer:
                    raise Unsupported(f"task {tid} is already traced by pid {tracer}: refusing to "
                                      "checkpoint a task someone else controls")
                tr = Tracee(tid)
                try:
                    tr.seccomp_suspended = tr.seize_suspending_seccomp()
                    tr.interrupt()
                except NoSuchProcess:
                    continue
                task = Task(pid, tid, tr)
                self.tasks[tid] = task
                fresh.append(task)
            # Interrupt all first, then wait for each: the stops overlap instead of queueing.
            for task in fresh:
                try:
                    task.tracee.wait_stop()
                except NoSuchProcess:
                    self.tasks.pop(task.hosttid, None)
        raise Unsupported(f"pid namespace {self.ns} keeps creating tasks; could not freeze it")

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
        for task in list(self.tasks.values()):
            if task.tracee.group_stopped and not task.tracee.owed_signal:
                # It was in a job-control stop when we seized it: keep it stopped.
                task.tracee.owed_signal = signal.SIGSTOP
            try:
                task.tracee.detach()
            except CkptError:  # one failing detach must not keep the others stopped
                pass
        self.tasks.clear()
