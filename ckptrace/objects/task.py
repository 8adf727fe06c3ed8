"""Tasks: TASK, comm, THREAD, CPU for every thread; credentials, signal handlers, rlimits and
per-process state for each thread-group leader.

What /proc does not show (kernel sigactions, sigaltstack, clear_child_tid, pdeath signal,
securebits, the exact brk) is read by injecting system calls into the stopped task. All
injections happen in `collect()`, right after the freeze and before any page is copied, so the
window in which a dumper killed by SIGKILL could leave a task with borrowed registers is as short
as possible (the Injector restores registers after each call, and runs each between syscall-stops,
which leave nothing behind: see kernel/ptrace.py's Injector).
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import struct
from collections import Counter
from dataclasses import dataclass, field

from ..image.records import (EXIT_ZOMBIE, PROC_CHILD_SUBREAPER, PROC_MCE_KILL_EARLY, PROC_MCE_KILL_SET,
                              PROC_MDWE_NO_INHERIT, PROC_MDWE_REFUSE_EXEC_GAIN, PROC_MEMORY_MERGE, THREAD_TSC_SIGSEGV, PROC_THP_DISABLE, RLIMIT_NAMES, TASK_COMM_LEN, TASK_DEAD,
                              TASK_STOPPED, NSIG, SI_KERNEL, RecType, siginfo_code, siginfo_signo, siginfo_timer,
                              signal_name)
from ..kernel import procfs
from ..kernel.prctl import (PR_GET_CHILD_SUBREAPER, PR_GET_DUMPABLE, PR_GET_MDWE, PR_GET_MEMORY_MERGE, PR_GET_PDEATHSIG, PR_GET_THP_DISABLE,
                           PR_GET_TID_ADDRESS, PR_GET_TSC, PR_TSC_SIGSEGV, PR_GET_SECUREBITS, PR_MCE_KILL_DEFAULT, PR_MCE_KILL_EARLY, PR_MCE_KILL_GET,
                           PR_MDWE_NO_INHERIT, PR_MDWE_REFUSE_EXEC_GAIN)
from ..kernel.ptrace import Injector, Tracee, checked
from ..kernel.sys import get_robust_list, ioprio_get, sched_getattr
from ..kernel.sysno import SYS_brk, SYS_mmap, SYS_munmap, SYS_prctl, SYS_rt_sigaction, SYS_sigaltstack
from ..errors import CkptError, Unsupported
from . import nsinfo, seccomp, timers
from .context import DumpContext, kill_refused
from .objhash import KCMP_FILES, KCMP_FS, kcmp

SIGACTION = struct.Struct("<QQQQ")  # kernel struct sigaction: handler, flags, restorer, mask
STACK_T = struct.Struct("<Qi4xQ")  # stack_t: ss_sp, ss_flags, ss_size
U64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class ThreadState:
    hostpid: int
    hosttid: int
    tracee: Tracee | None  # None: a zombie's (no one can attach to it)
    nstid: int = 0
    nstgid: int = 0
    comm: bytes = b""
    state: int = 0
    exit_signal: int = 0
    blocked: int = 0
    pending: int = 0
    clear_child_tid: int = 0
    altstack: tuple[int, int, int] = (0, 0, 0)  # sp, flags, size
    rseq: tuple[int, int, int] = (0, 0, 0)  # area, length, signature (0s: not registered)
    robust_list: tuple[int, int] = (0, 0)  # head, length (get_robust_list)
    ioprio: int = 0  # ioprio_get(IOPRIO_WHO_PROCESS): class << 13 | level
    seccomp_mode: int = 0
    no_new_privs: int = 0
    seccomp_filters: list[tuple[int, bytes]] = field(default_factory=list)  # oldest first
    sched: dict[str, int] = field(default_factory=dict)  # sched_getattr fields
    siginfo: list[bytes] = field(default_factory=list)  # its own queued signals' siginfo_t
    affinity: bytes = b""  # CPU bitmask, bit n = CPU n
    status: procfs.Status | None = None  # its own /proc/PID/task/TID/status: ids, groups, capabilities
    securebits: int = 0  # prctl(PR_GET_SECUREBITS), injected: per thread like the rest of its creds
    tsc: int = 0  # prctl(PR_GET_TSC), injected: PR_TSC_ENABLE or PR_TSC_SIGSEGV, per thread (TIF_NOTSC)
    regs: list[int] = field(default_factory=list)
    xstate: bytes = b""


@dataclass
class ProcState:
    hostpid: int
    threads: list[ThreadState]
    nspid: int = 0
    nsppid: int = 0
    nspgid: int = 0
    nssid: int = 0
    status: procfs.Status | None = None
    sigactions: list[tuple[int, int, int, int]] = field(default_factory=list)
    securebits: int = 0
    pdeath_signal: int = 0
    flags: int = 0  # TASK_PROC.flags: PROC_CHILD_SUBREAPER | PROC_THP_DISABLE | ...
    dumpable: int = 1
    itimers: dict[str, int] = field(default_factory=dict)  # TASK_ITIMERS fields, µs
    posix_timers: list[dict[str, int]] = field(default_factory=list)  # TASK_POSIX_TIMERS entries
    own_ns: int = 0  # CLONE_NEW* bits of the namespaces not shared with the dumper
    ns_flags: int = 0  # init's NS_LO_DOWN (nsinfo.collect_net), NS_OWN_PROC (nsinfo.collect_mnt); NS_TIME_CHILDREN
    net_missing: bytes = b""  # and what a new network namespace with only lo lacks, in words
    mnt_missing: bytes = b""  # and the mounts only its own mount namespace has, in words
    time_offsets: bytes = b""  # and the clock offsets of its own time namespace, in words
    cgroup_ns: bytes = b""  # and of its own cgroup namespace, the first sharer's pid (nsinfo.collect_cgroup)
    cgroup_ns_roots: bytes = b""  # and that namespace's root per hierarchy, as /proc/PID/cgroup lines
    # and of its own time namespace: (inode, offsets) of the one it is in and of its children's
    # (nsinfo._collect_time; inode 0: the dumper's), then as TASK_NS's lines (nsinfo.collect_time)
    time_seen: tuple = ()
    time_ns: bytes = b""
    shared_pending: int = 0  # process-wide pending mask (ShdPnd), read with shared_siginfo (pending_snapshot)
    shared_siginfo: list[bytes] = field(default_factory=list)  # process-wide queued signals' siginfo_t
    held_locks: list[tuple] = field(default_factory=list)  # (fd, kind, mode, start, end) from fdinfo
    nodename: bytes = b""
    domainname: bytes = b""
    brk: int = 0
    def_flags: int = 0  # MM.def_flags: VM_LOCKED (| VM_LOCKONFAULT) after mlockall(MCL_FUTURE)
    syscall_insn: int = 0
    maps: list[procfs.Mapping] = field(default_factory=list)  # smaps, read once while frozen
    zombie: bool = False  # exited, not reaped: only its ids, comm, status and owner are left
    exit_code: int = 0  # a zombie's wait status

    @property
    def leader(self) -> ThreadState:
        return self.threads[0]


# What a thread may have of its own that the image keeps once per process: kcmp kind, in words,
# and how a thread comes to have it.
_PER_PROCESS = ((KCMP_FILES, "a file table", "unshare(CLONE_FILES)"),
                (KCMP_FS, "a root, working directory and umask", "unshare(CLONE_FS)"))


def check_shared(p: ProcState, ns_pid: dict[int, int]) -> None:
    """Refuse a thread that does not share its leader's file table or fs struct (cwd, root,
    umask): the image has one of each per process (the leader's), and restore clones every
    thread with CLONE_FILES|CLONE_FS, so the thread's own fds, cwd... would be lost without a
    word. Asked of the kernel (kcmp), before anything is written. `ns_pid`: host tid -> tid
    inside the namespace."""
    for t in p.threads[1:]:
        for kind, what, how in _PER_PROCESS:
            if not kcmp(p.hostpid, t.hosttid, kind):
                raise Unsupported(f"thread {ns_pid.get(t.hosttid, '?')} (host tid {t.hosttid}) of process {p.nspid} "
                                  f"(host pid {p.hostpid}) has {what} of its own, not its process's ({how} in "
                                  "that thread): the image keeps one per process, and ckptrace cannot checkpoint it")


def pdeath_notes(procs: list[ProcState], proc: str) -> list[str]:
    """Processes with a pdeath signal (PR_SET_PDEATHSIG, collected) forked by a thread other than
    their parent's main thread: the kernel sends the signal when that thread exits, but restore
    forks every child from its parent's main thread (the image names parent processes only), so
    it will come when the whole parent process exits. Said, not refused: /proc/PID/task/TID/
    children tells which thread forked a child."""
    by_pid = {p.hostpid: p for p in procs}
    notes = []
    for p in procs:
        if p.zombie or not p.pdeath_signal or p.status is None or (parent := by_pid.get(p.status.ppid)) is None:
            continue
        for t in parent.threads[1:]:
            try:
                forked = p.hostpid in procfs.thread_children(parent.hostpid, t.hosttid, proc)
            except CkptError:
                continue
            if forked:
                notes.append(f"pid {p.nspid} (host pid {p.hostpid}) asked for {signal_name(p.pdeath_signal)} when its "
                             f"parent dies (PR_SET_PDEATHSIG) and was forked by thread {t.nstid} (host tid {t.hosttid}) "
                             f"of pid {parent.nspid}, not by its main thread: once restored, it gets the signal when "
                             f"pid {parent.nspid} exits, not when that thread does")
    return notes


ITIMER_SIGNALS = {signal.SIGALRM: "real", signal.SIGVTALRM: "virtual", signal.SIGPROF: "prof"}
# what SIG_DFL ignores (the kernel's sig_kernel_ignore)
DEFAULT_IGNORED = {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH}


def _bits(mask: int) -> set[int]:
    return {sig for sig in range(1, NSIG + 1) if mask >> (sig - 1) & 1}


def _from_own_timer(p: ProcState, info: bytes) -> bool:
    """A signal one of the process's own timers queued: the image has that timer with the time
    it had left when read, and the restored timer sends it again. One firing while the dump
    holds the process is no loss (a 10 ms periodic timer fires in every dump)."""
    if (timerid := siginfo_timer(info)) is not None:
        return any(t["id"] == timerid for t in p.posix_timers)
    signo = siginfo_signo(info)
    if siginfo_code(info) == SI_KERNEL and signo in ITIMER_SIGNALS:
        return bool(p.itimers.get(f"{ITIMER_SIGNALS[signo]}_value"))
    return False


def _discarded(p: ProcState, signo: int, blocked: int) -> bool:
    """Whether the kernel would have dropped this signal had the process not been traced: it
    queues even an ignored signal for a traced task (the tracer may want it), and discards an
    unblocked one whose action is to ignore it once the task takes it."""
    if blocked >> (signo - 1) & 1 or not p.sigactions:
        return False
    handler = p.sigactions[signo - 1][0]
    return handler == signal.SIG_IGN or (handler == signal.SIG_DFL and signo in DEFAULT_IGNORED)


def signals_since_read(p: ProcState, proc: str) -> Counter:
    """The signals process `p`, still held, got after the dump read its pending signals:
    {signo: how many}. Its threads' own queues and its shared one are peeked again
    (PTRACE_PEEKSIGINFO) and compared, entry by entry, with what the image holds; so are the
    pending masks (SigPnd, ShdPnd), for a signal pending without a queue entry. A standard
    signal sent while it was already pending merges with it in the kernel: no difference. The
    signals the dump itself took from a thread while it injected calls (a SIGSTOP, which cannot
    be blocked; kept for the detach) count as still pending. Not counted: the signals of the
    process's own timers (_from_own_timer) and those the kernel would have discarded
    (_discarded)."""
    leader = p.leader
    assert p.status is not None
    image: Counter = Counter()
    now: Counter = Counter()
    new_entries: list[tuple[bytes, int]] = []  # (siginfo, mask of the thread it is queued to)
    image_bits = p.shared_pending
    now_bits = procfs.status(p.hostpid, None, proc).hex("ShdPnd")
    queues = [(t.siginfo, t.tracee.peek_siginfo(shared=False) + [info for _, info in t.tracee.owed], t.blocked)
              for t in p.threads]
    queues.append((p.shared_siginfo, leader.tracee.peek_siginfo(shared=True), leader.blocked))
    for t in p.threads:
        image_bits |= t.pending
        now_bits |= procfs.status(t.hostpid, t.hosttid, proc).hex("SigPnd")
    timer_signals: set[int] = set()
    for old, new, blocked in queues:
        image.update(info for info in old if not _from_own_timer(p, info))
        for info in new:
            if _from_own_timer(p, info):
                timer_signals.add(siginfo_signo(info))
            else:
                now[info] += 1
                new_entries.append((info, blocked))
    got: Counter = Counter()
    added = now - image
    for info, blocked in new_entries:
        if added[info] > 0:
            added[info] -= 1
            if not _discarded(p, siginfo_signo(info), blocked):
                got[siginfo_signo(info)] += 1
    known = _bits(image_bits) | {siginfo_signo(i) for i in image} | timer_signals | set(got)
    for sig in sorted(_bits(now_bits) - known):
        if not _discarded(p, sig, leader.blocked):
            got[sig] += 1  # (pending without a queue entry: the kernel was out of queue space)
    return got


def check_kill_signals(procs: list[ProcState], ns: int, proc: str) -> None:
    """`dump --kill`, just before the kill: refuse when a process got a signal after the dump
    read its pending signals. The kernel queued it to the held process and would deliver it once
    let go; the image lacks it, and the kill would lose it for good (a sender's sigqueue said
    it was accepted). The namespace is left running, and takes those signals."""
    for p in procs:
        if p.zombie:
            continue
        if got := signals_since_read(p, proc):
            sigs = ", ".join(signal_name(s) + (f" (x{n})" if n > 1 else "") for s, n in sorted(got.items()))
            raise kill_refused(ns, f"pid {p.nspid} (host pid {p.hostpid}) got {sigs} after its state was read, "
                                   "which the image does not have",
                               "the namespace is left running, with them (dump again)", transient=True)


def _comm(pid: int, tid: int, proc: str) -> bytes:
    return procfs.comm_bytes(pid, tid, proc)[:TASK_COMM_LEN - 1].ljust(TASK_COMM_LEN, b"\0")


def collect_zombie(p: ProcState, proc: str) -> None:
    """What an unreaped process still shows in /proc: ids (p.status, read by the caller), comm,
    exit signal and wait status (stat), masks and owner (status)."""
    t = p.leader
    st = p.status
    assert st is not None
    t.nstid = t.nstgid = p.nspid
    t.state = TASK_DEAD
    t.comm = _comm(p.hostpid, p.hostpid, proc)
    fields = procfs.stat_fields(p.hostpid, proc)
    t.exit_signal = int(fields[procfs.STAT_EXIT_SIGNAL]) & 0xFFFFFFFF
    p.exit_code = int(fields[procfs.STAT_EXIT_CODE])
    t.blocked, t.pending = st.hex("SigBlk"), st.hex("SigPnd")


def collect_thread(t: ThreadState, insn: int, proc: str) -> None:
    """Everything per thread: ptrace register sets and injected reads."""
    st = procfs.status(t.hostpid, t.hosttid, proc)
    t.status = st
    t.nstid = st.nspid[-1]
    t.nstgid = procfs.status(t.hostpid, None, proc).nspid[-1] if t.hostpid != t.hosttid else t.nstid
    # TASK.state: the task's state as the restorer should recreate it, not the ptrace stop we
    # hold it in: 0 (running) or 4 (__TASK_STOPPED) for a task that was in a job-control stop.
    t.state = TASK_STOPPED if t.tracee.group_stopped else 0
    t.comm = _comm(t.hostpid, t.hosttid, proc)
    fields = procfs.stat_fields(t.hosttid, proc)
    t.exit_signal = int(fields[procfs.STAT_EXIT_SIGNAL]) & 0xFFFFFFFF
    tr = t.tracee
    t.regs = tr.get_regs()
    t.xstate = tr.get_xstate()
    t.blocked = tr.get_sigmask()
    t.rseq = tr.get_rseq()
    # Both per thread and readable from here by host tid: no injection. glibc registers every
    # thread's robust list head (in its TCB) at thread start, and nothing would after a restore.
    t.robust_list = get_robust_list(t.hosttid)
    t.ioprio = ioprio_get(t.hosttid)
    t.pending, t.siginfo = pending_snapshot(lambda: procfs.status(t.hostpid, t.hosttid, proc).hex("SigPnd"),
                                            lambda: tr.peek_siginfo(shared=False))
    # sched_getattr gives the nice value of a SCHED_OTHER/BATCH/IDLE thread only (0 for a
    # real-time or deadline one), but every task keeps one: it shows again when the thread goes
    # back to SCHED_OTHER. /proc's stat shows it for any policy.
    t.sched = dict(sched_getattr(t.hosttid), nice=int(fields[procfs.STAT_NICE]),
                   timer_slack=procfs.timerslack(t.hosttid, proc))
    t.affinity = cpu_mask(os.sched_getaffinity(t.hosttid))
    seccomp.collect(t, st)
    with Injector(tr, insn, hold_signals=True) as inj, inj.scratch(32) as (addr, mem):
        checked(inj.syscall(SYS_prctl, PR_GET_TID_ADDRESS, addr), f"prctl(PR_GET_TID_ADDRESS) in {t.hosttid}")
        mem.seek(addr)
        t.clear_child_tid = struct.unpack("<Q", mem.read(8))[0]
        checked(inj.syscall(SYS_sigaltstack, 0, addr), f"sigaltstack in {t.hosttid}")
        mem.seek(addr)
        t.altstack = STACK_T.unpack(mem.read(STACK_T.size))
        # The kernel keeps credentials per thread (a raw setresuid, capset or PR_SET_SECUREBITS
        # changes the calling thread only; glibc's setuid makes every thread call it).
        t.securebits = checked(inj.syscall(SYS_prctl, PR_GET_SECUREBITS), f"prctl(PR_GET_SECUREBITS) in {t.hosttid}")
        checked(inj.syscall(SYS_prctl, PR_GET_TSC, addr), f"prctl(PR_GET_TSC) in {t.hosttid}")
        mem.seek(addr)
        t.tsc = struct.unpack("<i", mem.read(4))[0]


def pending_snapshot(read_mask, peek_queue) -> tuple[int, list[bytes]]:
    """A pending mask and a queue of siginfo that agree with each other, from `read_mask()`
    (SigPnd or ShdPnd) and `peek_queue()` (PTRACE_PEEKSIGINFO). Signals keep arriving at a held
    task (a timer firing, a kill from outside), and the restore queues a signal again only when
    both show it: an entry missing from a mask read before it arrived was dropped (a periodic
    ITIMER_REAL whose SIGALRM was lost so stopped for good). The task dequeues nothing while held
    (its injected calls run with every signal blocked), so pending signals only add up: a mask
    read unchanged before and after the peek holds every entry the peek saw, and any entry of a
    standard signal it shows was there to be seen."""
    for _ in range(20):
        before = read_mask()
        queue = peek_queue()
        after = read_mask()
        if after == before:
            return after, queue
    # (a storm of signals: every queued entry is pending all the same)
    return after | sum(1 << (sig - 1) for sig in {siginfo_signo(i) for i in queue} if 0 < sig <= NSIG), queue


def collect_process(p: ProcState, proc: str, ns_pid: dict[int, int]) -> None:
    """`ns_pid`: host pid/tid -> pid inside the namespace, for what names other tasks."""
    leader = p.leader
    p.status = procfs.status(p.hostpid, None, proc)
    p.syscall_insn = _vdso_syscall(p.hostpid)
    with Injector(leader.tracee, p.syscall_insn, hold_signals=True) as inj:
        with inj.scratch(NSIG * SIGACTION.size) as (addr, mem):
            for sig in range(1, NSIG + 1):
                checked(inj.syscall(SYS_rt_sigaction, sig, 0, addr + (sig - 1) * SIGACTION.size, 8),
                         f"rt_sigaction({sig}) in {p.hostpid}")
            mem.seek(addr)
            data = mem.read(NSIG * SIGACTION.size)
            p.sigactions = list(SIGACTION.iter_unpack(data))
            checked(inj.syscall(SYS_prctl, PR_GET_PDEATHSIG, addr), f"prctl(PR_GET_PDEATHSIG) in {p.hostpid}")
            mem.seek(addr)
            p.pdeath_signal = struct.unpack("<i", mem.read(4))[0]
            checked(inj.syscall(SYS_prctl, PR_GET_CHILD_SUBREAPER, addr), f"prctl(PR_GET_CHILD_SUBREAPER) in {p.hostpid}")
            mem.seek(addr)
            subreaper = struct.unpack("<i", mem.read(4))[0]
        thp_off = checked(inj.syscall(SYS_prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0), f"prctl(PR_GET_THP_DISABLE) in {p.hostpid}")
        p.flags = (PROC_CHILD_SUBREAPER if subreaper else 0) | (PROC_THP_DISABLE if thp_off else 0)
        # (EINVAL without CONFIG_KSM: then it is off)
        if inj.syscall(SYS_prctl, PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1:
            p.flags |= PROC_MEMORY_MERGE
        mce = checked(inj.syscall(SYS_prctl, PR_MCE_KILL_GET, 0, 0, 0, 0), f"prctl(PR_MCE_KILL_GET) in {p.hostpid}")
        if mce != PR_MCE_KILL_DEFAULT:
            p.flags |= PROC_MCE_KILL_SET | (PROC_MCE_KILL_EARLY if mce == PR_MCE_KILL_EARLY else 0)
        # (EINVAL before Linux 6.3: then it is off)
        mdwe = inj.syscall(SYS_prctl, PR_GET_MDWE, 0, 0, 0, 0)
        if mdwe > 0:
            p.flags |= (PROC_MDWE_REFUSE_EXEC_GAIN if mdwe & PR_MDWE_REFUSE_EXEC_GAIN else 0) | \
                       (PROC_MDWE_NO_INHERIT if mdwe & PR_MDWE_NO_INHERIT else 0)
        p.dumpable = checked(inj.syscall(SYS_prctl, PR_GET_DUMPABLE), f"prctl(PR_GET_DUMPABLE) in {p.hostpid}")
        # The timers before the pending signals: an ITIMER_REAL that fired shows no time left
        # until its SIGALRM is dequeued, which cannot happen while the process is held, so that
        # SIGALRM is then in the snapshot below (restorer/timers.py apply).
        timers.collect(p, inj, ns_pid, proc)
        nsinfo.collect(p, inj, proc)
        p.shared_pending, p.shared_siginfo = pending_snapshot(
            lambda: procfs.status(p.hostpid, None, proc).hex("ShdPnd"), lambda: leader.tracee.peek_siginfo(shared=True))
        p.securebits = checked(inj.syscall(SYS_prctl, PR_GET_SECUREBITS), f"prctl(PR_GET_SECUREBITS) in {p.hostpid}")
        # brk(0) returns the current break: /proc/PID/stat has only start_brk.
        p.brk = checked(inj.syscall(SYS_brk, 0), f"brk(0) in {p.hostpid}")
        p.def_flags = _mlockall_future(p, inj, proc)
    for t in p.threads:
        collect_thread(t, p.syscall_insn, proc)


def _mlockall_future(p: ProcState, inj: Injector, proc: str) -> int:
    """mlockall(MCL_FUTURE) sets the mm's def_flags, which no interface reads; every mapping made
    afterwards gets them, so one is made to see: a page mapped in the frozen process, its VmFlags
    read, and unmapped again. Shared anonymous memory, so that it is a VMA of its own (private
    PROT_NONE memory would merge with a neighbour, a thread's guard or a malloc reserve, and show
    that one's flags). Without CAP_IPC_LOCK over RLIMIT_MEMLOCK, only a locking mapping is refused."""
    from ..image.records import PAGE_SIZE, VM_FLAG_BITS

    locked = VM_FLAG_BITS["lo"] | VM_FLAG_BITS["lf"]
    addr = inj.syscall(SYS_mmap, 0, PAGE_SIZE, 0, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
    if addr == -errno.EAGAIN:
        return VM_FLAG_BITS["lo"]
    checked(addr, f"mmap of a probe page in {p.hostpid}")
    try:
        flags = next((m.vmflags for m in procfs.smaps(p.hostpid, proc) if m.start == addr), ())
    finally:
        checked(inj.syscall(SYS_munmap, addr, PAGE_SIZE), f"munmap of the probe page in {p.hostpid}")
    return sum(VM_FLAG_BITS.get(f, 0) for f in flags) & locked


def _vdso_syscall(pid: int) -> int:
    from ..kernel.ptrace import find_syscall_insn

    return find_syscall_insn(pid)


# -- records -------------------------------------------------------------------------------------

def write_task_head(ctx: DumpContext, t: ThreadState, exit_code: int | None = None) -> None:
    """TASK, comm, THREAD; `exit_code` is a zombie's wait status (None: a live task)."""
    ctx.w.record(RecType.TASK, dict(state=t.state, exit_state=0 if exit_code is None else EXIT_ZOMBIE,
                                    exit_code=exit_code or 0, exit_signal=t.exit_signal,
                                    set_child_tid=0, clear_child_tid=t.clear_child_tid))
    ctx.w.record(RecType.STRING, payload=t.comm)
    sp, flags, size = t.altstack
    ctx.w.record(RecType.THREAD, dict(tid=t.nstid, tgid=t.nstgid, blocked=t.blocked, pending=t.pending,
                                      sas_ss_sp=sp, sas_ss_size=size, sas_ss_flags=flags & 0xFFFFFFFF,
                                      flags=THREAD_TSC_SIGSEGV if t.tsc == PR_TSC_SIGSEGV else 0,
                                      rseq_ptr=t.rseq[0], rseq_len=t.rseq[1], rseq_sig=t.rseq[2],
                                      robust_list=t.robust_list[0], robust_len=t.robust_list[1],
                                      ioprio=t.ioprio))


def cpu_mask(cpus) -> bytes:
    """{0, 3} -> b"\x09": a little-endian bitmask, as cpu_set_t holds it, without trailing zeros."""
    n = sum(1 << c for c in cpus)
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "little")


def write_siginfo(ctx: DumpContext, queue: list[bytes], shared: bool) -> None:
    """TASK_SIGINFO, only for a non-empty queue."""
    if queue:
        ctx.w.record(RecType.TASK_SIGINFO, dict(shared=int(shared), nsiginfo=len(queue)), payload=b"".join(queue))


def write_sched(ctx: DumpContext, t: ThreadState) -> None:
    ctx.w.record(RecType.TASK_SCHED, t.sched, payload=t.affinity)


def write_cpu(ctx: DumpContext, t: ThreadState, xstate_size: int) -> None:
    from ..image.records import REG_NAMES

    xs = t.xstate[:xstate_size].ljust(xstate_size, b"\0")
    ctx.w.record(RecType.CPU, dict(zip(REG_NAMES, t.regs)), payload=xs)


def write_zombie(ctx: DumpContext, p: ProcState) -> None:
    """A zombie's records: TASK (exit_state EXIT_ZOMBIE, its wait status), comm, THREAD and its
    credentials (ps shows its owner), as the seed's successors wrote one: nothing else is left."""
    write_task_head(ctx, p.leader, p.exit_code)
    _write_creds(ctx, p)


def _creds(st: procfs.Status, securebits: int) -> tuple[dict[str, int], list[int]]:
    """TASK_CREDS fields and supplementary groups, from a task's status and securebits."""
    uid, euid, suid, fsuid = st.ints("Uid")
    gid, egid, sgid, fsgid = st.ints("Gid")
    groups = st.ints("Groups")
    return dict(uid=uid, euid=euid, suid=suid, fsuid=fsuid, gid=gid, egid=egid, sgid=sgid, fsgid=fsgid,
                ngroups=len(groups), securebits=securebits, cap_inh=st.hex("CapInh"), cap_prm=st.hex("CapPrm"),
                cap_eff=st.hex("CapEff"), cap_bnd=st.hex("CapBnd"), cap_amb=st.hex("CapAmb")), groups


def _write_creds(ctx: DumpContext, p: ProcState) -> None:
    """The process's credentials: its leader's (/proc/PID/status shows the leader's)."""
    assert p.status is not None
    fields, groups = _creds(p.status, p.securebits)
    ctx.w.record(RecType.TASK_CREDS, fields, payload=[{"gid": g} for g in groups])


def write_thread_creds(ctx: DumpContext, p: ProcState, t: ThreadState) -> None:
    """A thread's own TASK_CREDS, for a thread that is not its process's leader and whose
    credentials differ from the leader's (a raw setresuid, capset, PR_SET_SECUREBITS or
    PR_CAPBSET_DROP in that thread alone): readers give every other thread the leader's. Its
    securebits are compared too, and they were read in the thread (collect_thread)."""
    if t is p.leader:
        return
    assert t.status is not None and p.leader.status is not None
    own = _creds(t.status, t.securebits)
    if own != _creds(p.leader.status, p.leader.securebits):
        ctx.w.record(RecType.TASK_CREDS, own[0], payload=[{"gid": g} for g in own[1]])


def write_proc(ctx: DumpContext, p: ProcState) -> None:
    st = p.status
    assert st is not None
    _write_creds(ctx, p)
    ctx.w.record(RecType.TASK_SIGHAND, dict(nsig=NSIG), payload=[
        dict(handler=h, flags=f, restorer=r, mask=m) for h, f, r, m in p.sigactions])
    limits = [dict(cur=cur, max=mx) for cur, mx in procfs.limits(p.hostpid, ctx.proc)[:len(RLIMIT_NAMES)]]
    ctx.w.record(RecType.TASK_RLIMITS, dict(nlimits=len(limits)), payload=limits)
    cwd = ctx.path(_readlink(f"{ctx.proc}/{p.hostpid}/cwd"))
    root = ctx.path(_readlink(f"{ctx.proc}/{p.hostpid}/root"))
    ctx.w.record(RecType.TASK_PROC, dict(
        umask=st.umask, personality=procfs.personality(p.hostpid, ctx.proc), shared_pending=p.shared_pending,
        pdeath_signal=p.pdeath_signal, flags=p.flags, oom_score_adj=procfs.oom_score_adj(p.hostpid, ctx.proc),
        dumpable=p.dumpable),
        payload=b"".join(s.encode("utf-8", "surrogateescape") + b"\0"
                         for s in (cwd, root, procfs.cgroup_text(p.hostpid, ctx.proc),
                                   *((ctx.ns_root,) if p.nspid == 1 else ()))))


def _readlink(path: str) -> str:
    from ..errors import from_oserror

    try:
        return os.readlink(path)
    except OSError as exc:
        raise from_oserror(exc, f"readlink {path}") from None
