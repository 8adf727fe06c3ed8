"""`ckptrace dump` and `ckptrace ls`.

The pipeline: find the namespace's init, freeze every task (kernel/freeze.py), check everything
that would make the dump refuse (before a byte is written), collect what needs injected system
calls, then stream the image: HEADER, TREE, per task TASK ... CPU (+ process records), TAIL.
Tasks are released in a `finally`, whatever happened. See docs/dump.md.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import select
import signal
import socket
import stat
import sys
import tempfile
import termios
import time
from dataclasses import dataclass
from typing import Any

from . import notify
from .stdfds import closed_at_start
from .errors import (AccessDenied, CkptError, KernelError, NoSuchProcess, OutputClosed, Terminated, Unsupported, UsageError,
                     errno_text)
from .progress import ProgressLine
from .image.records import RecType, wait_status_text
from .image.render import plural, shown_path
from .image.stream import ImageFile, ImageWriter, write_header, write_tail
from .kernel import procfs
from .kernel.freeze import Freezer, find_init
from .kernel.ptrace import xcr0_from_xstate
from .kernel.sys import ioctl_int
from .objects import files, locks, mm, nsinfo, pipe, seccomp, task, timers, tty
from .objects.socket import arm_for_kill, release_held, unaccepted
from .objects.socket import check_kill as check_unaccepted
from .objects.context import DumpContext, Stats, kill_refused


@dataclass
class Options:
    max_file_data: int = 64 << 20
    leave_stopped: bool = False
    kill: bool = False
    proc: str = procfs.PROC
    image: str = ""  # the image file's absolute path, for watchers (notify); "" when it is not a file


@dataclass
class Summary(Stats):
    """The dump's counters (Stats, kept while dumping) plus what only the whole run knows."""

    ns: int = 0
    bytes: int = 0
    frozen_s: float = 0.0
    elapsed_s: float = 0.0
    tries: int = 1  # dumps made, the refused ones (--retry) and this one
    notes: list[str] = dataclasses.field(default_factory=list)  # what the user should know although the dump worked (stderr)

    @property
    def mb_s(self) -> float:
        """Image bytes per second of frozen time: the copy happens while the tasks are frozen."""
        return self.bytes / 1e6 / self.frozen_s if self.frozen_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(pidns=self.ns, tasks=self.tasks, processes=self.processes, zombies=self.zombies, vmas=self.vmas,
                    pages=self.pages, files=self.files, bytes=self.bytes,
                    frozen_ms=round(self.frozen_s * 1000, 3), elapsed_ms=round(self.elapsed_s * 1000, 3),
                    mb_per_s=round(self.mb_s, 1), tries=self.tries)

    def line(self) -> str:
        zombies = f", {plural(self.zombies, 'zombie')}" if self.zombies else ""
        tries = f" (try {self.tries})" if self.tries > 1 else ""
        return (f"dumped pidns {self.ns}{tries}: {plural(self.tasks, 'task')} ({plural(self.processes, 'process')}{zombies}), "
                f"{plural(self.vmas, 'VMA')}, {plural(self.pages, 'page')}, {self.bytes} bytes; frozen {self.frozen_s * 1000:.1f} ms, "
                f"{self.mb_s:.0f} MB/s")


def resolve_ns(pidns: int | None, pid: int | None, proc: str = procfs.PROC) -> int:
    if pidns is not None:
        return pidns
    assert pid is not None
    if pid == 1:
        # the init of our own pid namespace, whose link the kernel may not show even to root (a
        # container's init): its namespace is ours, which check_target refuses by name
        return procfs.ns_inode(os.getpid(), "pid", proc)
    path = f"{proc}/{pid}/ns/pid"
    try:
        link = os.readlink(path)
    except OSError as exc:
        # Both say why, as the kernel put it: EACCES for host pid 1 even as root in some
        # containers, or for another user's process without root.
        why = errno_text(exc.errno or 0)
        if exc.errno in (errno.ENOENT, errno.ESRCH) and not os.path.exists(f"{proc}/{pid}"):
            raise UsageError(f"no process {pid} ({path}): {why}") from None
        raise UsageError(f"cannot read the pid namespace of process {pid} ({path}): {why}") from None
    ns = procfs.parse_ns_link(link)
    if ns is None:
        raise UsageError(f"cannot read the pid namespace of process {pid} ({path}): not a namespace link: {link!r}")
    return ns


def check_target(ns: int, proc: str = procfs.PROC) -> int:
    """Refusals that need no freezing. Returns the init's host pid."""
    own = procfs.ns_inode(os.getpid(), "pid", proc)
    if own == ns:
        raise UsageError(f"pid namespace {ns} is ckptrace's own (the host's, or one ckptrace runs "
                         "inside): it cannot freeze itself; run ckptrace from outside the namespace")
    return find_init(ns, proc)


def _processes(frz: Freezer, proc: str) -> list[task.ProcState]:
    """Group the frozen tasks into processes, leader first, and order them parents-first."""
    by_pid: dict[int, list] = {}
    for t in frz.tasks.values():
        by_pid.setdefault(t.hostpid, []).append(t)
    procs: dict[int, task.ProcState] = {}
    for pid, ts in by_pid.items():
        ts.sort(key=lambda t: (t.hosttid != pid, t.hosttid))
        if ts[0].hosttid != pid:
            raise NoSuchProcess(f"process {pid}'s leader thread is gone (zombie leader)")
        procs[pid] = task.ProcState(pid, [task.ThreadState(t.hostpid, t.hosttid, t.tracee) for t in ts])
    for pid in frz.zombies:
        procs[pid] = task.ProcState(pid, [task.ThreadState(pid, pid, None)], zombie=True)
    parent: dict[int, int] = {}
    for pid, p in procs.items():
        st = procfs.status(pid, None, proc)
        p.status = st
        p.nspid = st.nspid[-1]
        p.nspgid = st.nspgid[-1] if st.nspgid else 0
        p.nssid = st.nssid[-1] if st.nssid else 0
        parent[pid] = st.ppid
    order: list[task.ProcState] = []
    kids: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        kids.setdefault(pp if pp in procs else 0, []).append(pid)
    todo = sorted(kids.get(0, []), key=lambda x: procs[x].nspid)
    while todo:
        pid = todo.pop(0)
        order.append(procs[pid])
        todo += sorted(kids.get(pid, []), key=lambda x: procs[x].nspid)
    for p in order:
        pp = parent[p.hostpid]
        p.nsppid = procs[pp].nspid if pp in procs else 0
    return order


class Dumper:
    def __init__(self, ns: int, init: int, out_fd: int, opts: Options, on_progress=None, shadow_fd: int | None = None):
        self.ns = ns
        self.init = init
        self.out_fd = out_fd
        self.opts = opts
        self.on_progress = on_progress
        self.shadow_fd = shadow_fd  # ImageWriter's sparse copy, for check_restorable
        self.ctx: DumpContext | None = None
        self.procs: list[task.ProcState] = []

    def _stage(self, what: str) -> None:
        """Where the dump is before it writes (the frozen namespace is read first: seconds for
        a thousand processes, with nothing else to show)."""
        if self.on_progress is not None:
            self.on_progress(what)

    def run(self, frz: Freezer) -> DumpContext:
        proc = self.opts.proc
        procs = _processes(frz, proc)
        self.procs = procs
        ns_pid = {}
        for p in procs:
            for t in p.threads:
                ns_pid[t.hosttid] = procfs.status(p.hostpid, t.hosttid, proc).nspid[-1]
        ns_root = os.readlink(f"{proc}/{self.init}/root")
        w = ImageWriter(self.out_fd, self.shadow_fd)
        ctx = DumpContext(w, ns_root, ns_pid, self.opts.max_file_data, proc=proc, on_progress=self.on_progress,
                          tcp_held=[] if self.opts.kill else None)
        self.ctx = ctx
        live = [p for p in procs if not p.zombie]
        zombies = [p for p in procs if p.zombie]
        for p in zombies:
            task.collect_zombie(p, proc)
        ctx.image_notes += _zombie_notes(zombies)
        # Refusals first, while nothing is written and nothing injected.
        nsinfo.check(live, proc)
        nsinfo.check_threads(live, ns_pid, proc)
        for p in live:
            task.check_shared(p, ns_pid)
        ctx.image_notes += nsinfo.collect_net(procs[0], proc)
        ctx.image_notes += nsinfo.collect_mnt(procs[0], ns_root, proc)
        for p in live:
            p.maps = procfs.smaps(p.hostpid, proc)
            for m in p.maps:
                mm.check_mapping(p.nspid, p.hostpid, m)
            locks.collect(ctx, p)
            for t in p.threads:
                seccomp.check_thread(p, t, proc)
        # Only once no process holds a lease: check_fds opens deleted files and memfds to measure
        # their data, and an open breaks a lease, which the frozen holder cannot give up (the
        # open waited out fs.lease-break-time, 45 s, and changed the lease before the refusal).
        for i, p in enumerate(live):
            self._stage(f"checking process {i + 1}/{len(live)}")
            files.check_fds(ctx, p.hostpid, p.nspid)
            files.check_shared_tmpfs(ctx, p)
        for i, p in enumerate(live):
            self._stage(f"reading the state of process {i + 1}/{len(live)}")
            task.collect_process(p, proc, ns_pid)
        ctx.image_notes += task.pdeath_notes(procs, proc)
        nsinfo.collect_cgroup(live, proc)  # (restore's validation names a root none knew)
        nsinfo.collect_time(live)
        xs = procs[0].leader.xstate
        uts = os.uname()
        ctx.header_time = int(time.time())
        write_header(w, time=ctx.header_time, uts=(uts.release, uts.version, uts.machine),
                     xstate_size=len(xs), xcr0=xcr0_from_xstate(xs))
        entries = []
        for p in procs:
            for t in p.threads:
                entries.append(dict(pid=t.nstid, tgid=p.nspid, ppid=p.nsppid, pgid=p.nspgid, sid=p.nssid,
                                    hostpid=t.hosttid))
        w.record(RecType.TREE, dict(nr_tasks=len(entries)), payload=entries)
        ctx.totals = (len(procs), len(entries))
        copier = mm.PageCopier.create()
        try:
            for p in procs:
                ctx.stats.processes += 1
                if p.zombie:
                    task.write_zombie(ctx, p)
                    ctx.stats.tasks += 1
                    ctx.stats.zombies += 1
                    ctx.progress()
                    continue
                for t in p.threads:
                    task.write_task_head(ctx, t)
                    files_ref = files.dump_table(ctx, p.hostpid)
                    mm_ref = mm.dump_mm(ctx, p, copier, files)
                    w.record(RecType.TASK_OBJS, dict(files_objref=files_ref, mm_objref=mm_ref))
                    task.write_cpu(ctx, t, len(xs))
                    task.write_sched(ctx, t)
                    seccomp.write(ctx, t)
                    task.write_thread_creds(ctx, p, t)
                    task.write_siginfo(ctx, t.siginfo, shared=False)
                    if t.hosttid == p.hostpid:
                        task.write_proc(ctx, p)
                        timers.write(ctx, p)
                        locks.write(ctx, p)
                        nsinfo.write(ctx, p)
                        task.write_siginfo(ctx, p.shared_siginfo, shared=True)
                    ctx.stats.tasks += 1
                    ctx.progress()
        finally:
            copier.close()
        # With --kill the TAIL is held back until nothing can refuse the kill any more (see
        # dump()): a reader of a refused dump's stream must not get an image it can restore.
        write_tail(w, hold=self.opts.kill)
        ctx.unaccepted = unaccepted(ctx)
        return ctx


ZOMBIE_NOTES = 3  # zombies named one per line; more make one line


def _zombie_notes(zombies: list[task.ProcState]) -> list[str]:
    if len(zombies) > ZOMBIE_NOTES:
        pids = ", ".join(str(p.nspid) for p in zombies[:10]) + (", ..." if len(zombies) > 10 else "")
        return [f"{len(zombies)} zombies (pids {pids}) that their parents have not reaped: the image keeps "
                "them as such, and restore makes them again (`ckptrace show` lists them with their statuses)"]
    return [f"pid {p.nspid} is a zombie ({wait_status_text(p.exit_code)}) that its parent, pid {p.nsppid}, "
            "has not reaped: the image keeps it as one, and restore makes it again" for p in zombies]


# -- command -------------------------------------------------------------------------------------

# SIGINT/SIGTERM seen during a dump (set by _raise_on_signal). The exception the handler raises
# can land inside a step that takes a failed read for a task gone (`except CkptError`) and be
# swallowed there; the dump asks again before it declares success, and before a --kill.
_stop_signals: list[int] = []
# Set once the image is complete (and the namespace released, or killed with --kill): a signal
# then undoes nothing, and saying "tasks released" after a kill would be false. What is left
# (waiting for the killed init, the advisory check, the summary) runs to its end, status 0, as a
# restore does once it is past its point of no return.
_image_complete = [False]


def _raise_on_signal(signum, _frame):
    _stop_signals.append(signum)
    if _image_complete[0]:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt("tasks released")
    raise Terminated(f"terminated by signal {signum}; tasks released")


def _stop_if_signalled() -> None:
    if _stop_signals:
        _raise_on_signal(_stop_signals[-1], None)


def _complete(ns: int, on_complete, image: str) -> None:
    """The image is whole: the caller's `on_complete` (dump -o FILE names the file), then the
    stamp that tells a watcher of the dump, while the tasks are still frozen: it resets its dirty
    pages at the stamp (ckptrace/notify.py), and every page it has by then was written before the
    release or the kill."""
    if on_complete is not None:
        on_complete()
    notify.dump_done(ns, image=image)


def _complete_and_kill(w: ImageWriter, out_fd: int, init: int, ns: int, on_complete,
                       image: str) -> tuple[int | None, list[int]]:
    """The end of `dump --kill`, once every check that could refuse the kill has passed: the
    TAIL the image was kept incomplete without (until now a reader of the stream, such as `restore
    -` in a migration pipe, had an image it would refuse), its delivery, the file named, the kill.
    Returns init's pidfd and the SIGINT/SIGTERM that came meanwhile.

    Once the TAIL is written the reader may restore the namespace, so the original must die:
    SIGINT and SIGTERM wait from the TAIL to the kill, and are then taken without effect
    (noted). Only a failure of the TAIL's own delivery or of naming the file stops it (the reader
    then lacks the TAIL or the file its name)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    killed = False
    try:
        w.write_held()
        _check_delivered(out_fd, w.bytes_written, wait=True)
        _complete(ns, on_complete, image)
        # Kill while still held: released first, the tasks would run on for a moment and change
        # files the image already describes (a migrated log would repeat lines).
        init_fd = _kill_namespace(init)
        killed = True
    finally:
        late = []
        if killed:
            while (sig := signal.sigtimedwait(sigs, 0)) is not None:
                late.append(sig.si_signo)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # (not killed: a pending one now raises)
    return init_fd, late


def _kill_namespace(init: int) -> int | None:
    """SIGKILL the namespace's init (the kernel then kills every task of the namespace); returns
    a pidfd of init to wait on, or None when it is already gone."""
    from .kernel.sys import pidfd_open

    try:
        fd = pidfd_open(init)
        os.kill(init, signal.SIGKILL)
    except (ProcessLookupError, NoSuchProcess):
        return None
    return fd


def _reaped(pidfd: int) -> bool:
    """Init is gone for good, zombie no more: through its pidfd (a pid may be someone else's by
    now; signal 0 to a zombie works, to a reaped process ESRCH)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _wait_exit(pidfd: int, init: int, timeout: float = 10.0, proc: str = procfs.PROC) -> str:
    """Wait until the namespace is gone, so that `dump --kill` returns only when it can be restored
    elsewhere: init has exited (its pidfd turns readable) and its parent has reaped it. Returns ""
    then, else what is left (a note for the user)."""
    import select

    from .kernel.ptrace import WALL

    deadline = time.monotonic() + timeout
    exited = False
    try:
        while time.monotonic() < deadline:
            # Killed tracees could not be detached (they were no longer stopped): their exit is
            # reported to us, the tracer, first, and neither init (reaping its children) nor a
            # thread-group leader (waiting for its threads) can finish until we collect it.
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG | WALL)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
            # (once init has exited the pidfd stays readable: the wait is the sleep, else this
            # loop spun a CPU, a second or more whenever init's parent reaps slowly)
            if exited:
                time.sleep(0.01)
            else:
                exited = bool(select.select([pidfd], [], [], 0.01)[0])
            if exited and _reaped(pidfd):
                return ""
    finally:
        os.close(pidfd)
    if not exited:
        return f"init (host pid {init}) had not exited {timeout:.0f} s after SIGKILL"
    try:
        parent = procfs.status(init, root=proc).ppid
    except CkptError:
        return ""  # reaped just now
    return (f"init (host pid {init}) has exited, but its parent (host pid {parent}) has not reaped it "
            "yet: it stays a zombie until it does (the image restores meanwhile)")


def dump(ns: int, out_fd: int, opts: Options, on_progress=None, on_complete=None) -> Summary:
    """Dump namespace `ns` to `out_fd`. Raises CkptError; tasks are always released.
    `on_complete()` runs once the whole image is written, while the tasks are still held (before
    `--kill` kills them): `dump -o FILE` names the file there, so a failure to do so kills nothing."""
    started = time.monotonic()
    init = check_target(ns, opts.proc)
    from .kernel import sockdiag

    sockdiag.preload()
    frz = Freezer(ns, init, opts.proc)
    s = Summary(ns=ns)
    t0 = time.monotonic()
    ok = False
    killed = False  # the kill was sent: only then may TCP connections stay in repair mode
    init_fd = None
    late_signals: list[int] = []
    # --kill migrates: the namespace dies, so the image must be one restore can rebuild. Checked
    # on a sparse copy of what was written (the image itself may be going down a pipe). A plain
    # dump into a file checks that file, once the tasks run again (restore_refusal).
    shadow = tempfile.TemporaryFile(prefix="ckptrace-index-") if opts.kill else None
    dumper = Dumper(ns, init, out_fd, opts, on_progress, shadow.fileno() if shadow else None)
    try:
        if on_progress is not None:
            on_progress("freezing the namespace")
        frz.freeze()
        ctx = dumper.run(frz)
        if shadow is not None:
            if on_progress is not None:
                on_progress("checking that restore can rebuild the image (--kill)")
            check_restorable(shadow, ns)
            tty.check_kill(ctx, ns)  # (a pty's unread bytes: the image lacks them)
            check_unaccepted(ctx, ns)  # (connections no program had accepted yet: likewise)
        # Into a pipe or socket, "written" is not "read": a reader that stops early (`| head`)
        # leaves the last bytes in the pipe without any EPIPE. Killing on that would lose the
        # namespace, so --kill waits for the reader to take everything.
        _check_delivered(out_fd, ctx.w.bytes_written, wait=opts.kill)
        if ctx.tcp_held:
            # TCP connections back in repair mode (the kill then closes them without a FIN or
            # RST), and refused if data arrived since they were read: as late as can be
            arm_for_kill(ctx.tcp_held, ns)
        if opts.kill:
            # Likewise signals: one sent since a process's pending signals were read (while the
            # dump waited on a slow reader, say) is queued to the held process, not in the image
            task.check_kill_signals(dumper.procs, ns, opts.proc)
        _stop_if_signalled()
        if not opts.kill:
            _complete(ns, on_complete, opts.image)
            ok = _image_complete[0] = True
        else:
            init_fd, late_signals = _complete_and_kill(ctx.w, out_fd, init, ns, on_complete, opts.image)
            ok = killed = _image_complete[0] = True
    except OutputClosed as exc:
        raise OutputClosed(f"{exc}; {'not killing' if opts.kill else 'released'} pid:[{ns}]: its tasks run on") from None
    except (CkptError, OSError):
        # A task killed under the dump shows up as whatever read of it failed first (its pagemap,
        # its memory, a ptrace request), naming a host pid only: say what happened instead.
        gone = frz.exited()
        if not gone:
            raise
        raise NoSuchProcess(_exited_message(gone, ns, opts.kill)) from None
    finally:
        if dumper.ctx is not None and dumper.ctx.tcp_held:
            release_held(dumper.ctx.tcp_held, killed=killed)
        frz.release(leave_stopped=ok and opts.leave_stopped)
        s.frozen_s = time.monotonic() - t0
        if shadow is not None:
            shadow.close()
    if ok and not opts.kill and opts.image and os.path.isfile(opts.image):
        if on_progress is not None:
            on_progress("checking that restore can rebuild the image")
        if why := restore_refusal(opts.image):
            s.notes.append(why)
    if ok and opts.kill and init_fd is not None:
        if note := _wait_exit(init_fd, init, proc=opts.proc):
            s.notes.append(note)
    if ok:
        # (a scan of every fd on the host: once the tasks run again, not while they are frozen)
        s.notes += ctx.image_notes + ctx.pty_queued + ctx.unaccepted + pipe.outside_notes(ctx, ns)
        s.notes += files.shared_tmpfs_notes(ctx)
    if ok and not opts.kill:
        s.notes += ctx.notes  # (with --kill nothing runs on: they do not matter)
    if ok and _stop_signals:  # (before completion one ends the dump: _stop_if_signalled)
        s.notes += [f"{signal.Signals(sig).name} came once the image was complete: it undid nothing, the dump "
                    "finished" for sig in dict.fromkeys(_stop_signals)]
    if ok and opts.kill:
        s.notes += [f"{signal.Signals(sig).name} came once the image was complete and being delivered: "
                    "the namespace was killed as asked, the dump finished" for sig in late_signals]
    s.elapsed_s = time.monotonic() - started
    st = ctx.stats
    for f in dataclasses.fields(Stats):
        setattr(s, f.name, getattr(st, f.name))
    s.bytes = ctx.w.bytes_written
    return s


def _exited_message(gone: list, ns: int, kill: bool) -> str:
    """One line for a dump that failed because tasks of the namespace (freeze.Task) exited under
    it: the processes, by their pid inside the namespace (the host pid too)."""
    procs: dict[int, int] = {}  # host pid -> pid inside, 0 when unknown
    for t in gone:
        if t.hosttid == t.hostpid or t.hostpid not in procs:
            procs[t.hostpid] = t.nstid if t.hosttid == t.hostpid else 0
    names = [f"{inner} (host pid {host})" if inner else f"with host pid {host}" for host, inner in procs.items()]
    if 1 in procs.values():
        return (f"the init of pid:[{ns}] (host pid {next(h for h, i in procs.items() if i == 1)}) exited "
                "during the dump (killed?), and the namespace with it: no complete image")
    what = f"{'process' if len(names) == 1 else 'processes'} {', '.join(names)}"
    return (f"{what} of pid:[{ns}] exited during the dump (killed?): no complete image"
            f"{', nothing killed' if kill else ''}; the other tasks are released and run on")


def _check_delivered(fd: int, written: int, *, wait: bool, timeout: float = 30.0) -> None:
    """Raise OutputClosed when `fd` is a pipe or socket whose reader went away leaving part of the
    image unread. With `wait` (before `--kill`), also wait until the reader has taken every byte
    (a pipe's FIONREAD, a socket's SIOCOUTQ reach 0), for at most `timeout` s; a file needs
    nothing. The tasks stay held meanwhile, as they are while a slow reader drains the pipe.
    A socket's count cannot be trusted alone: the kernel drops what a peer left unread when it
    closes (unix) or resets (TCP), and the count falls to 0 as if all had been taken; the
    socket's error says so."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return
    sock = None
    if stat.S_ISFIFO(mode):
        pending_req = termios.FIONREAD  # bytes in the pipe, asked on either end
    elif stat.S_ISSOCK(mode):
        pending_req = termios.TIOCOUTQ  # SIOCOUTQ: sent bytes the peer has not taken yet
        sock = socket.socket(fileno=fd)  # borrowed: detached below, never closed here
    else:
        return
    try:
        _wait_delivered(fd, sock, pending_req, written, wait, timeout)
    finally:
        if sock is not None:
            sock.detach()


def _wait_delivered(fd: int, sock, pending_req: int, written: int, wait: bool, timeout: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = ioctl_int(fd, pending_req)
        except OSError:
            return  # cannot tell (an odd socket family): trust the completed writes
        events = 0
        for _fd, ev in poller.poll(0):
            events |= ev
        if sock is not None:
            # A unix peer that closes with data unread, a TCP peer that resets, leave ECONNRESET
            # here (and the count at 0: the kernel dropped the rest); one that read everything
            # and closed leaves no error.
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OutputClosed(f"the image's reader closed its connection with part of the image "
                                   f"unread ({os.strerror(err)}), {written} bytes sent")
        if pending <= 0:
            return
        if events & (select.POLLERR | select.POLLHUP):
            raise OutputClosed(f"the image's reader went away with {pending} of its {written} bytes unread, "
                               "before the image was complete")
        if not wait:
            return
        if time.monotonic() >= deadline:
            raise OutputClosed(f"the image's reader has not taken its last {pending} of {written} bytes "
                               f"after {timeout:.0f} s")
        time.sleep(0.005)


def check_restorable(shadow, ns: int) -> None:
    """Raise Unsupported, before `--kill` kills anything, when restore would refuse the image
    (a TCP connection being closed, a process that entered from outside...)."""
    if exc := _validation(shadow):
        raise kill_refused(ns, str(exc), transient=exc.transient) from None


def restore_refusal(image: str) -> str | None:
    """For a plain dump into the file `image`, whose namespace runs on: a note saying why
    restore would refuse the image now, in restore's words, or None. The user learns it while
    the namespace can still be changed, not at the restore. Only advisory: the image is
    complete, and a check that cannot be made says so instead of failing the dump. (Into a pipe
    there is nothing to read back; a restore at its other end makes the same checks.)"""
    from .restore import REFUSAL_PREFIX

    try:
        with open(image, "rb") as f:
            exc = _validation(f)
    except (CkptError, OSError) as err:
        return f"whether restore can rebuild the image was not checked: {err}"
    return f"restore will refuse this image as things stand: {str(exc).removeprefix(REFUSAL_PREFIX)}" if exc else None


def _validation(shadow) -> Unsupported | None:
    """The checks `restore` makes, on the sparse copy of the image just written; what they
    refused. The original holds its ports and paths until killed, so those are not checked."""
    from .image.reader import read_image
    from .restore import set_root, validate

    shadow.seek(0)
    try:
        img = read_image(shadow, skip_pages=True)
        set_root(img)
        validate(img, bindings=False)
    except Unsupported as exc:
        return exc
    return None


# Character devices that take every write and keep nothing: mem 1:3 (/dev/null) and 1:5 (/dev/zero).
_DISCARDING_DEVICES = {(1, 3), (1, 5)}


def retry_wait(tries: int) -> float:
    """Seconds to wait after refused try number `tries` (1, 2, ...) before the next (`--retry`):
    0.1 s, doubling, at most 2 s. A connection waits to be accepted, or a signal to be taken, for
    a moment; a closing one may take a while."""
    return min(2.0, 0.1 * 2 ** (tries - 1))


def _regular_or_new(path: str) -> bool:
    """Whether `path` is a regular file (through symlinks) or none yet: one ImageFile writes as a
    temporary file, which --retry can empty (not a FIFO, device or socket: opening a FIFO would
    also wait for its reader)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return True  # (ImageFile says what is wrong with it)


def _discards_writes(target: str | int) -> bool:
    """Whether an output path (or an open fd) is /dev/null or /dev/zero, by device number, under
    whatever name (a symlink, a mknod copy in a container). A path that does not exist yet, a
    regular file, a pipe or a socket is not."""
    try:
        st = os.fstat(target) if isinstance(target, int) else os.stat(target)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) in _DISCARDING_DEVICES


def _standard_output_named() -> str:
    """"standard output (/dev/null)": a message about where the image goes names the file behind
    a redirection, which the user made outside ckptrace's command line and may not have in mind
    (the path as /proc shows the link; just "standard output" when it cannot be read)."""
    try:
        return f"standard output ({shown_path(procfs.fd_target(os.getpid(), 1))})"
    except CkptError:
        return "standard output"


def _private_if_file(fd: int) -> None:
    """`dump > ns.img`: the shell made the file with its umask (0644, as a rule), readable by
    every user, and the image holds process memory. A regular file as standard output is made
    0600, as `-o FILE` makes its own; a pipe, socket or device is left as it is."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError as exc:
            raise KernelError("standard output is a file others can read, and making it 0600 failed", exc.errno) from None


def main(args) -> int:
    if os.geteuid() != 0:
        raise AccessDenied("dump needs root (ptrace of other users' tasks, /proc/PID/mem): run with sudo")
    ns = resolve_ns(args.pidns, args.pid)
    to_stdout = args.output in ("-", "", None)
    if to_stdout and closed_at_start(1):  # before any freezing: every write would fail (EBADF)
        raise UsageError("standard output is closed (>&-): nowhere to write the image; use -o FILE or a pipe")
    if to_stdout and os.isatty(1):
        raise UsageError("refusing to write a binary image to a terminal: use -o FILE or a pipe")
    if args.kill and _discards_writes(1 if to_stdout else args.output):
        where = _standard_output_named() if to_stdout else args.output
        raise UsageError(f"refusing --kill with the image going to {where}, which keeps nothing written to it: "
                         "the namespace would be gone and no image kept")
    opts = Options(max_file_data=args.max_file_data, leave_stopped=args.leave_stopped, kill=args.kill,
                   image="" if to_stdout else os.path.abspath(args.output))
    if args.retry and (to_stdout or not _regular_or_new(args.output)):
        where = "standard output" if to_stdout else args.output
        raise UsageError(f"--retry needs -o FILE naming a regular file ({where} is not one): an image already "
                         "written there cannot be taken back to write it again")
    check_target(ns)  # fail on a bad target before creating the output file
    if to_stdout:
        _private_if_file(1)
    out = None if to_stdout else ImageFile(args.output)
    if out is not None and os.isatty(out.fd):  # -o /dev/stdout, /dev/tty: a terminal, as for -o -
        out.close(discard=True)
        raise UsageError(f"refusing to write a binary image to a terminal ({args.output}): use -o FILE or a pipe")
    _stop_signals.clear()
    _image_complete[0] = False
    old = {sig: signal.signal(sig, _raise_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    done = False
    try:
        for tries in range(1, args.retry + 2):
            progress = _Progress(enabled=sys.stderr.isatty() and not args.quiet)
            try:
                with progress:
                    s = dump(ns, 1 if out is None else out.fd, opts, progress.update, None if out is None else out.commit)
                break
            except Unsupported as exc:
                if not exc.transient or tries > args.retry:
                    raise
                wait = retry_wait(tries)
                if not args.quiet:
                    print(f"ckptrace dump: try {tries} of {args.retry + 1} refused: {exc}; dumping again in "
                          f"{wait:.1f} s", file=sys.stderr)
                out.rewind()
                time.sleep(wait)
                _stop_if_signalled()
        s.tries = tries
        done = True
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if out is not None:
            out.close(discard=not done)
    summary_to = sys.stderr if to_stdout or not args.json else sys.stdout
    try:
        if args.json:  # the summary, alone (on stderr when the image owns stdout)
            print(json.dumps(s.as_dict()), file=summary_to)
        elif not args.quiet:
            print(s.line(), file=summary_to)
        summary_to.flush()
        for note in s.notes:
            print(f"ckptrace dump: {note}", file=sys.stderr)
    except OSError as exc:
        where = "standard output" if to_stdout else args.output
        raise KernelError(f"the image is complete ({where}), but writing the summary failed",
                          exc.errno or 0) from None
    return 0


class _Progress(ProgressLine):
    """The dump's progress line (ckptrace.progress): where the dump is, against the namespace's
    totals."""

    def update(self, ctx: DumpContext | str) -> None:
        """`ctx`: where the writing is; or, before it begins, a stage in words (always shown)."""
        if isinstance(ctx, str):
            if self.live is not None:
                self.show(f"[bold]dumping[/] {ctx}  {self.elapsed():.1f} s")
            return
        if not self.due():
            return
        st = ctx.stats
        el = self.elapsed()
        mb = ctx.w.bytes_written / 1e6
        procs, tasks = ctx.totals
        # what matters first (an 80-column terminal cut the elapsed time off the end)
        self.show(f"[bold]dumping[/] {st.processes}/{procs} processes {st.tasks}/{tasks} tasks  {mb:.0f} MB  "
                  f"{mb / el if el else 0:.0f} MB/s  {el:.1f} s  {st.vmas} VMAs {st.pages} pages")


# -- ls ------------------------------------------------------------------------------------------

def list_namespaces(proc: str = procfs.PROC, unreadable: list[int] | None = None) -> list[dict[str, Any]]:
    """Every pid namespace visible in /proc, with init's host pid, task count and command.
    `unreadable` gets the pids whose namespace could not be read (another user's, without root;
    host pid 1 even with it), skipped."""
    nss: dict[int, dict[str, Any]] = {}
    for pid in procfs.pids(proc):
        ns = procfs.ns_inode(pid, "pid", proc)
        if ns is None:
            if unreadable is not None and os.path.exists(f"{proc}/{pid}"):
                unreadable.append(pid)
            continue  # (or gone)
        try:
            st = procfs.status(pid, None, proc)
            ntasks = len(procfs.tids(pid, proc))
        except CkptError:
            continue
        e = nss.setdefault(ns, dict(pidns=ns, init=0, tasks=0, processes=0, command=""))
        e["tasks"] += ntasks
        e["processes"] += 1
        if st.nspid and st.nspid[-1] == 1 and not e["init"]:
            e["init"] = pid
            e["command"] = _cmdline(pid, proc)
    own = procfs.ns_inode(os.getpid(), "pid", proc)
    out = sorted(nss.values(), key=lambda e: e["pidns"])
    for e in out:
        e["own"] = e["pidns"] == own
    return out


def _cmdline(pid: int, proc: str) -> str:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    if not raw:
        try:  # any bytes (PR_SET_NAME): not UTF-8 text
            return f"[{procfs.comm_bytes(pid, root=proc).strip().decode('utf-8', 'replace')}]"
        except OSError:
            return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def main_ls(args) -> int:
    unreadable: list[int] = []
    rows = list_namespaces(unreadable=unreadable)
    if unreadable and os.geteuid() != 0:
        # Without root most namespaces are other users' and unreadable: an empty list would
        # read as "nothing runs here".
        print(f"ckptrace ls: {plural(len(unreadable), 'process')} could not be read (not root): "
              f"their namespaces are not listed", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'PIDNS':>12} {'INIT':>8} {'TASKS':>6}  COMMAND")
    for e in rows:
        mark = "  (ckptrace's own)" if e["own"] else ""
        # a command line may hold newlines or escapes: one row each, as ps shows them
        command = "".join(c if c.isprintable() else "?" for c in e["command"])
        print(f"{e['pidns']:>12} {e['init'] or '-':>8} {e['tasks']:>6}  {command}{mark}")
    return 0
