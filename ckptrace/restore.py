"""`ckptrace restore FILE|-`: recreate a dumped pid namespace and leave it running, detached.

Pipeline (details in docs/restore.md):
  validate   read and check the whole image before anything exists (spooling '-' to a 0600
             temp file first, since memory is restored from page offsets);
  files      the controller opens every file object once (restorer.files);
  tree       clone3(CLONE_NEWPID, set_tid=[1]) makes init, which forks the rest with their
             own pids; each sets its fds/cwd/umask/handlers/rlimits and reports (restorer.tree);
  cgroupns   once every process is seized, the image's own cgroup namespaces are made by the
             processes in them, by injected unshare/setns (restorer.cgroupns), and so are its
  timens     own time namespaces, with their clock offsets (restorer.timens);
  memory     the controller seizes each process and rebuilds its address space by syscall
             injection (restorer.memory), then registers, MM fields, threads (restorer.threads),
             masks, pending signals and credentials (restorer.creds);
             init's pdeath signal (SIGKILL, tying it to the controller until here) is cleared;
  detach     every task runs on from where it was dumped.
A failure at any point SIGKILLs the new init, which takes the whole new namespace with it; so
does the controller's death (init's pdeath signal before the seize, PTRACE_O_EXITKILL after).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import signal
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

from .errors import AccessDenied, CkptError, KernelError, NoSuchProcess, Passing, Terminated, TimedOut, Unsupported
from .image.render import plural, shown_path
from .image.reader import FileTable, Image, Mm, read_image
from .image.records import NSIG, REG_NAMES, TASK_STOPPED, siginfo_signo
from .image.stream import open_seekable
from .kernel.procfs import DELETED_SUFFIX
from .kernel.prctl import PR_SET_PDEATHSIG
from .kernel.ptrace import WALL, Tracee, read_memory
from .kernel.sysno import (SYS_exit_group, SYS_fcntl, SYS_personality, SYS_prctl, SYS_restart_syscall,
                           SYS_rt_sigtimedwait, SYS_setpgid, SYS_wait4)

ERESTARTNOINTR = -513
ERESTART_RESTARTBLOCK = -516
# the calls the kernel resumes through restart_syscall (a restart_block after -ERESTART_RESTARTBLOCK)
RESTART_BLOCK_CALLS = {7: "poll", 35: "nanosleep", 202: "futex", 230: "clock_nanosleep"}
REPORT_TIMEOUT = 20.0
WATCHDOG_S = 60.0
# Far below what restore does, so only a hang trips the watchdog: its time grows with each kind
# of work (bytes alone gave a 62 MB image of 840 000 VMAs a minute, and it needs more)
WATCHDOG_MIN_RATE = 50e6  # bytes/s
WATCHDOG_PER_VMA = 0.005  # s (about 0.2 ms each here: mmap, mprotect, pread injected)
WATCHDOG_PER_TASK = 0.05  # s (a process or thread made, seized, its state set)
WATCHDOG_PER_FD = 0.002  # s (each fd of each table)
KILL_REAP_S = 30.0  # at most, to reap what an abort killed (it takes milliseconds)


def _let_go(tr: Tracee) -> None:
    """Detach a restored task without the signals our injected steps took from it: they came
    while restore was making it (the SIGCHLD of a child it made, one sent to a pid not yet
    restored), not to the process the image holds, whose pending signals are queued from the
    image (restorer/creds.py)."""
    tr.owed = []
    tr.detach()


@dataclass
class Result:
    pidns: int
    init_pid: int
    processes: int
    threads: int
    bytes_restored: int
    seconds: float
    # what the user should know although the restore worked (stderr, not in --json's object)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "notes"}


def main(args) -> int:
    import sys

    from .progress import ProgressLine

    if os.geteuid() != 0:
        raise AccessDenied("restore needs root (a new pid namespace, ptrace, the image's credentials): "
                           "run with sudo")
    done = [False]

    def terminated(signum, _frame):
        if done[0]:
            return  # restored: the result line still goes out, and the status is 0
        # as an exception, so that the abort path kills what was made and removes its cgroups
        # (by default SIGTERM ended us on the spot, leaving them)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt("nothing was restored")
        raise Terminated(f"terminated by signal {signum}; nothing was restored")

    # (kept until the result is written: a signal then ended us with 143 or 130 while the
    # namespace ran, and a supervisor that retries on failure started a second copy)
    old = {sig: signal.signal(sig, terminated) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ProgressLine(enabled=sys.stderr.isatty() and not args.quiet) as progress:
            res = restore(args.image, progress, root=args.root, on_release=lambda: done.__setitem__(0, True))
        try:
            if args.json:
                import json

                print(json.dumps(res.as_dict()))
            elif not args.quiet:
                print(f"restored pid:[{res.pidns}]: init is host pid {res.init_pid}; "
                      f"{plural(res.processes, 'process')}, {plural(res.threads, 'thread')}, "
                      f"{res.bytes_restored / (1 << 20):.1f} MiB in {res.seconds:.3f} s")
            sys.stdout.flush()
            for note in res.notes:
                print(f"ckptrace restore: {note}", file=sys.stderr)
        except OSError as exc:
            # The namespace runs: say where, or whoever ran us is left to hunt for it
            raise KernelError(f"restored pid:[{res.pidns}] (init is host pid {res.init_pid}), but writing "
                              "the result failed", exc.errno or 0) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


def restore(path: str, progress=None, root: str | None = None, on_release=None) -> Result:
    """Restore the image at `path` ("-": standard input). `progress`: a ProgressLine to keep
    current (ckptrace.progress), or None. `root`: where the image's paths are (set_root).
    `on_release()`: called just before the last steps (cgroups, scheduling, timers, pending
    signals, the detach); from then on a signal must not abort the restore (the caller's
    handlers no longer turn it into one), though a failure of one of those steps still does."""
    start = time.monotonic()
    with open_seekable(path) as f:
        img = read_image(f)
        set_root(img, root)
        validate(img)
        return _Restore(img, f, progress, on_release).run(start)


def set_root(img: Image, root: str | None = None) -> None:
    """restore --root: the namespace's root, and the image's paths under it, are found in
    `root` (a copy of a container's files elsewhere) instead of where they were."""
    img.root = os.path.abspath(root) if root else ""


def validate(img: Image, *, bindings: bool = True) -> None:
    """Raise, naming every problem found, unless this host can restore the image. `bindings`:
    also whether the addresses and socket paths the image binds are free now (not for `dump
    --kill`'s check, made while the original still holds them; but an image whose init had a
    network namespace of its own gets a new one, where the original holds nothing: whether its
    sockets' addresses exist there is asked for `--kill` too). Likewise the shared memory files
    whose contents the image carries: without `bindings`, the original's own hold on them is not
    counted, a process outside the image's is."""
    from .kernel.ptrace import xstate_size
    from .restorer.files import binding_problems, check_files, held_file_problems, nofile_problem
    from .restorer.memory import (ROBUST_LIST_HEAD_SIZE, check_layout, check_mapped_files, check_vmas, mdwe_problems,
                                  special_maps)
    from .restorer.creds import creds_problems
    from .restorer.ownns import problems as unmade_ns_problems
    from .restorer.sched import sched_problems
    from .restorer.tree import tree_problems
    from .restorer.cgroup import frozen_problems as cgroup_frozen_problems
    from .restorer.cgroupns import problems as cgroup_ns_problems
    from .restorer.timens import problems as time_ns_problems
    from .kernel.procfs import cgroup_mounts

    problems: list[str] = []
    if img.root and not os.path.isdir(img.root):
        # alone: every path of the image is looked up under it, and each would be named missing
        how = "is not a directory" if os.path.lexists(img.root) else "does not exist"
        raise Unsupported(f"cannot restore this image: --root '{shown_path(img.root)}' {how}")
    xs = xstate_size()
    if img.arch["xstate_size"] != xs:
        problems.append(f"the image's XSAVE area is {img.arch['xstate_size']} bytes, this CPU's is {xs}")
    if not img.tree or img.tree[0]["pid"] != 1:
        problems.append("the image does not start with the namespace's init (pid 1)")
    leaders = {e["pid"] for e in img.tree if e["pid"] == e["tgid"]}
    orphans = [f"process {e['pid']} has no parent in the namespace (it entered from outside, e.g. with "
               "nsenter or setns): restore recreates a namespace's own process tree only"
               for e in img.tree if e["pid"] == e["tgid"] != 1 and e["ppid"] not in leaders]
    problems += orphans
    if not orphans and img.tree and img.tree[0]["pid"] == 1:
        problems += tree_problems(img)  # sessions and groups
    mm_owner: dict[int, int] = {}
    files_owner: dict[int, int] = {}
    for t in img.tasks:
        if t.zombie:
            problems += zombie_problems(img, t) + creds_problems(t)
            continue
        if not isinstance(img.obj(t.mm_objref), Mm):
            problems.append(f"task {t.tid} has no address space")
        problems += sched_problems(t) + (creds_problems(t) if t.is_leader or t.own_creds else [])
        problems += mdwe_problems(t) if t.is_leader else []
        if t.thread["robust_list"] and t.thread["robust_len"] != ROBUST_LIST_HEAD_SIZE:
            problems.append(f"task {t.tid}'s robust futex list is {t.thread['robust_len']} bytes long; "
                            f"the kernel takes {ROBUST_LIST_HEAD_SIZE} only")
        owner = mm_owner.setdefault(t.mm_objref, t.tgid)
        if owner != t.tgid:
            # (a vfork child not exec'd yet: it will, and its parent go on)
            problems.append(Passing(f"processes {owner} and {t.tgid} share one mm (vfork?); not supported"))
        owner = files_owner.setdefault(t.files_objref, t.tgid)
        if owner != t.tgid and t.is_leader:
            problems.append(f"processes {owner} and {t.tgid} share one file table (clone with CLONE_FILES "
                            "and without CLONE_VM); not supported")
        if t.is_leader:
            for what, p in (("cwd", t.cwd), ("root", t.root)):
                if os.path.isdir(img.at(p or "/")):
                    continue
                if p.endswith(DELETED_SUFFIX):  # as readlink showed it: the directory had been removed
                    problems.append(f"process {t.tid}'s {what} '{shown_path(img.at(p.removesuffix(DELETED_SUFFIX)))}' was deleted "
                                    "before the dump: restore cannot enter it")
                else:
                    how = "is not a directory" if os.path.lexists(img.at(p or "/")) else "does not exist"
                    problems.append(f"process {t.tid}'s {what} '{shown_path(img.at(p or '/'))}' {how} here")
        elif not isinstance(img.obj(t.files_objref), FileTable) or \
                t.files_objref != img.task(t.tgid).files_objref:
            problems.append(f"thread {t.tid} does not share its leader's file table; not supported")
    problems += unmade_ns_problems(img)
    problems += range_problems(img) + task_range_problems(img)
    mounts = cgroup_mounts()
    problems += cgroup_frozen_problems(img.processes(), mounts)
    problems += cgroup_ns_problems(img, mounts)
    problems += time_ns_problems(img)
    problems += check_files(img)
    problems += binding_problems(img, held=not bindings)
    problems += held_file_problems(img, original_runs=not bindings)
    if (why := nofile_problem(img)) is not None:
        problems.append(why)
    problems += check_layout(img, special_maps(os.getpid()))
    problems += check_vmas(img)
    problems += check_mapped_files(img)
    if problems:
        raise Unsupported(REFUSAL_PREFIX + "; ".join(problems),
                          transient=all(isinstance(p, Passing) for p in problems))


REFUSAL_PREFIX = "cannot restore this image: "  # (dump.restore_refusal takes it off)
OFF_MAX = (1 << 63) - 1  # loff_t: the largest file offset or size the kernel takes
OPEN_FLAGS_MAX = (1 << 31) - 1  # open(2)'s flags are an int


def range_problems(img: Image) -> list[str]:
    """Fields holding values the system calls that set them cannot take, which a dump never
    writes (a damaged or hostile image): each would fail the restore late, as a traceback
    (lseek, ftruncate and open overflow on them), after processes exist. Named here instead."""
    from .image.reader import File
    from .image.records import FileType, RecType

    out = []
    for obj in img.objects.values():
        if not isinstance(obj, File):
            continue
        what = f"file object {obj.objref}" + (f" ({shown_path(obj.name)})" if obj.name else "")
        f = obj.fields
        if f["f_pos"] > OFF_MAX:
            out.append(f"{what}'s offset {f['f_pos']} is past the largest file offset (2^63-1)")
        if f["f_flags"] > OPEN_FLAGS_MAX:
            out.append(f"{what}'s open flags {f['f_flags']:#x} are no open(2) flags")
        if obj.ftype in (FileType.MEMFD, FileType.DELETED):
            for r in obj.extra:
                if r.type == RecType.FILE_DATA and (r.fields["size"] > OFF_MAX or r.fields["offset"] > OFF_MAX):
                    out.append(f"{what}'s size {r.fields['size']} or data offset {r.fields['offset']} is past "
                               "the largest file size (2^63-1)")
                    break
    for t in img.processes():
        if t.proc is not None and t.proc["umask"] > 0o777:
            out.append(f"process {t.tid}'s umask {t.proc['umask']:#o} is not a umask (0-0777)")
    return out


PID_MAX_LIMIT = 1 << 22  # pid_max's ceiling, where the sysctl cannot be read


def task_range_problems(img: Image) -> list[str]:
    """Task values the kernel would refuse only once the processes exist (a bare EINVAL, or the
    failure of a clone3 named after the parent), which a dump never writes: a pid not below this
    host's pid_max (clone3's set_tid), an exit signal that is no signal, an I/O priority or
    oom_score_adj out of the kernel's ranges, memory layout fields PR_SET_MM_MAP refuses
    (kernel/sys.c validate_prctl_map_addr), a mapping past the user address space."""
    from .restorer.memory import TASK_SIZE, _mapped_by_restore
    from .restorer.cgroup import path_problem as cgroup_path_problem
    from .restorer.sched import ioprio_problem

    out = []
    from .kernel import procfs

    pid_max = procfs.sysctl_int("kernel/pid_max") or PID_MAX_LIMIT
    for e in img.tree:
        if e["pid"] >= pid_max:
            out.append(f"task {e['pid']}'s pid is not below this host's pid_max {pid_max} "
                       "(/proc/sys/kernel/pid_max)")
    for t in img.tasks:
        sig = t.fields["exit_signal"]
        if t.is_leader and sig > NSIG:
            out.append(f"process {t.tid}'s exit signal {sig} is not a signal (0-{NSIG})")
        if t.zombie:
            continue
        if why := ioprio_problem(t.thread.get("ioprio", 0)):
            out.append(f"thread {t.tid}'s {why}")
        if t.proc is not None and not -1000 <= t.proc["oom_score_adj"] <= 1000:
            out.append(f"process {t.tid}'s oom_score_adj {t.proc['oom_score_adj']} is not in -1000..1000")
        if t.is_leader:
            for _hid, controllers, path in t.cgroups:
                if why := cgroup_path_problem(path):
                    out.append(f"process {t.tid}'s {controllers or 'cgroup2'} cgroup {shown_path(path)} {why}")
        mm = img.obj(t.mm_objref) if t.is_leader else None
        if not isinstance(mm, Mm):
            continue
        m = mm.fields
        pairs = (("start_code", "end_code"), ("start_data", "end_data"), ("start_brk", "brk"),
                 ("arg_start", "arg_end"), ("env_start", "env_end"))
        bad = [f"{a} {m[a]:#x} > {b} {m[b]:#x}" for a, b in pairs if a in m and b in m and m[a] > m[b]]
        bad += [f"{k} {m[k]:#x} is past the user address space" for a, b in pairs for k in (a, b)
                if k in m and m[k] >= TASK_SIZE]
        if bad:
            out.append(f"process {t.tid}'s memory layout cannot be set (PR_SET_MM_MAP): {', '.join(bad)}")
        for v in mm.vmas:
            if _mapped_by_restore(v) and v.end > TASK_SIZE:
                out.append(f"process {t.tid}'s mapping {v.start:#x}-{v.end:#x} is not within the user address "
                           f"space (0-{TASK_SIZE:#x})")
    return out


# signals whose default action is not to end the process: no wait status names them
NOT_FATAL = {signal.SIGCHLD, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
             signal.SIGURG, signal.SIGWINCH}
SA_NOCLDWAIT = 2


def zombie_problems(img: Image, z) -> list[str]:
    """Why zombie `z` could not be made again: a wait status no exit gives, a parent that is not a
    live process of the image, or one that ignores SIGCHLD (the kernel reaps the child of such a
    parent as it exits: it had set SIG_IGN after this one died)."""
    out = []
    status = z.fields["exit_code"]
    sig = status & 0x7F
    if status >> 16 or (sig == 0 and status & 0xFF) or sig == 0x7F or sig > 64 or sig in NOT_FATAL:
        out.append(f"zombie {z.tid}'s wait status {status:#x} is not one an exit gives")
    parent = img.task(img.tree_entry(z.tid).get("ppid", 0))
    if parent is None or parent.zombie or not parent.is_leader:
        out.append(f"zombie {z.tid} has no live parent process in the image")
    elif z.fields["exit_signal"] == signal.SIGCHLD and len(parent.sighand) >= signal.SIGCHLD:
        act = parent.sighand[signal.SIGCHLD - 1]
        if act["handler"] == 1 or act["flags"] & SA_NOCLDWAIT:  # SIG_IGN
            out.append(f"zombie {z.tid}'s parent {parent.tid} ignores SIGCHLD (SIG_IGN or SA_NOCLDWAIT): "
                       "the kernel would reap the zombie as soon as it is made again")
    return out


def handler_first(img: Image, th) -> bool:
    """Whether thread `th` of the image takes a handled signal as soon as it is let go: a
    signal pending to it, or to its process when no other thread of the process can take it,
    that its mask lets through and whose action is a handler (not SIG_DFL, not SIG_IGN). The
    kernel delivers that before the thread returns to user mode (signals the kernel ignores are
    skipped, and a stop waits for SIGCONT first), and the handler's delivery decides how an
    interrupted call ends (fix_restart)."""
    leader = img.task(th.tgid) if not th.is_leader else th
    if leader is None or not leader.sighand:
        return False

    def signals(mask: int, queue: list[bytes]) -> set[int]:
        return ({sig for sig in range(1, NSIG + 1) if mask >> (sig - 1) & 1}
                | {siginfo_signo(info) for info in queue})

    def lets_through(t, sig: int) -> bool:
        return not t.thread["blocked"] >> (sig - 1) & 1

    own = signals(th.thread["pending"], th.siginfo)
    shared = signals(leader.proc["shared_pending"] if leader.proc else 0, leader.shared_siginfo)
    others = [t for t in img.threads_of(th.tgid) if t.tid != th.tid]
    mine = own | {sig for sig in shared if not any(lets_through(t, sig) for t in others)}
    return any(0 < sig <= len(leader.sighand) and sig not in (signal.SIGKILL, signal.SIGSTOP)
               and lets_through(th, sig) and leader.sighand[sig - 1]["handler"] not in (signal.SIG_DFL, signal.SIG_IGN)
               for sig in mine)


def fix_restart(regs: dict[str, int], code=None, handler_first: bool = False) -> list[int]:
    """The image's registers as a NT_PRSTATUS list, with syscall restart made self-contained.

    A task dumped inside e.g. clock_nanosleep shows orig_rax = the syscall and rax =
    -ERESTART_RESTARTBLOCK; resuming that runs restart_syscall(), which needs the kernel's
    restart_block the dumped task had and the new task lacks (it would return EINTR). Turning
    it into -ERESTARTNOINTR makes the kernel re-run the same syscall with the same arguments.

    A task stopped a second time in such a call (a dump that left it running, a SIGSTOP and
    SIGCONT: the kernel resumed it inside restart_syscall) has orig_rax = restart_syscall, and
    the call it restarts is in no register any more. Its wrapper's code says which: glibc's
    `mov $NR, %eax; syscall` right before rip, read by `code(addr, n)` from the restored
    memory. That call is re-run; for any other, the task gets the EINTR restart_syscall would
    give it anyway, without running it (what CRIU does for every such call).

    `handler_first`: the thread takes a handled signal as soon as it runs (handler_first()).
    The kernel then turns -ERESTART_RESTARTBLOCK into -EINTR as it delivers it (x86
    handle_signal): the interrupted call returns EINTR to the handler's caller and is not
    re-run, so the code is left as the kernel saw it."""
    out = [regs[n] for n in REG_NAMES]
    rax = out[REG_NAMES.index("rax")]
    orig = out[REG_NAMES.index("orig_rax")]
    if orig < (1 << 63) and rax == ERESTART_RESTARTBLOCK & 0xFFFFFFFFFFFFFFFF and not handler_first:
        out[REG_NAMES.index("rax")] = ERESTARTNOINTR & 0xFFFFFFFFFFFFFFFF
        if orig == SYS_restart_syscall:
            nr = _wrapped_syscall(code, out[REG_NAMES.index("rip")]) if code is not None else None
            if nr in RESTART_BLOCK_CALLS:
                out[REG_NAMES.index("orig_rax")] = nr
            else:
                out[REG_NAMES.index("rax")] = -errno.EINTR & 0xFFFFFFFFFFFFFFFF
    return out


def _wrapped_syscall(code, rip: int) -> int | None:
    """The number in `mov $NR, %eax` (b8 imm32) just before the `syscall` (0f 05) that ends at
    `rip`; None when the code there is not that, or cannot be read."""
    try:
        insns = code(rip - 7, 7)
    except (OSError, ValueError):
        return None
    if len(insns) == 7 and insns[0] == 0xB8 and insns[5:] == b"\x0f\x05":
        return int.from_bytes(insns[1:5], "little")
    return None


def _wait_stopped(host: int, timeout: float = 1.0) -> None:
    """Until host task `host`, let go with SIGSTOP in its own queue, has stopped: it has then
    begun its process's group stop, which every other thread joins before it takes any signal
    (a thread let go earlier could take a process-wide one first). Bounded: at worst that
    order is lost, nothing else."""
    from .kernel import procfs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if procfs.stat_fields(host)[procfs.STAT_STATE] in "TtZX":
                return
        except CkptError:
            return
        time.sleep(0.001)


def _wait_zombie(host: int, pid: int) -> None:
    """Until host pid `host` (image pid `pid`), let go to exit, is a zombie."""
    from .kernel import procfs

    deadline = time.monotonic() + 10
    while procfs.stat_fields(host)[procfs.STAT_STATE] != "Z":
        if time.monotonic() > deadline:
            raise KernelError(f"zombie {pid} (host pid {host}) did not exit within 10 s", errno.ETIMEDOUT)
        time.sleep(0.001)


def watchdog_limit(img: Image) -> float:
    """Seconds a restore of `img` is given before the watchdog ends it."""
    vmas = sum(len(o.vmas) for o in img.objects.values() if isinstance(o, Mm))
    fds = sum(len(o.fds) for o in img.objects.values() if isinstance(o, FileTable))
    return (WATCHDOG_S + img.size / WATCHDOG_MIN_RATE + vmas * WATCHDOG_PER_VMA
            + len(img.tasks) * WATCHDOG_PER_TASK + fds * WATCHDOG_PER_FD)


def _timed_out(signum, frame):
    raise TimedOut("restore did not end within the time given to an image of this size "
                   "(a task stuck during injection?); nothing was restored")


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _Restore:
    def __init__(self, img: Image, f: BinaryIO, progress=None, on_release=None):
        self.img = img
        self.f = f
        self.progress = progress
        self.on_release = on_release
        self.init = 0
        self.tracees = []
        self.made_cgroups: list[str] = []  # cgroup directories this restore created
        self.host: dict[int, int] = {}  # in-namespace pid -> host pid
        self.stand_ins: dict[int, tuple[int, int]] = {}  # group stand-in's pid -> (parent, host pid)
        self.stand_in_parents: dict[int, int] = {}  # group stand-in's pid -> its parent's (tree.plan)

    def run(self, start: float) -> Result:
        from .kernel.netns import maybe_entered
        from .restorer import mnt, net, tty
        from .restorer.files import FileSet, fd_base
        from .restorer.memory import MemoryRestorer

        files = FileSet(self.img, base=fd_base(self.img), image=self.f)
        netns = None
        # A watchdog: a task stuck in an injected call would have the injector wait for it
        # forever; the alarm's exception unwinds into _abort instead.
        limit = watchdog_limit(self.img)
        watchdog = True
        try:
            old_handler = signal.signal(signal.SIGALRM, _timed_out)
            signal.setitimer(signal.ITIMER_REAL, limit)
        except ValueError:
            watchdog = False  # not the main thread: signals cannot be handled here
        try:
            shown = ["files"]
            self._show(shown[0], None, force=True)
            # every socket is made in the namespace the tasks will be in (restorer/net.py)
            netns = net.make(self.img)
            with maybe_entered(netns):
                files.create()
            files.notes += net.notes(self.img) + mnt.notes(self.img)
            mem = MemoryRestorer(self.img, self.f, files)
            mem.tick = lambda: self._show(shown[0], mem)  # (within a process too: VMAs, GiB runs)
            shown[0] = f"the tree of {plural(len(self.img.tasks), 'task')}"
            self._show(shown[0], mem, force=True)
            with maybe_entered(netns):  # (init is clone3'd in it, and forks the rest there)
                self._spawn(files, netns.ino if netns is not None else 0)
            self._seize_all()
            self._set_groups()
            # every group exists now: a pty's foreground group can be set (by its session's leader)
            files.notes += tty.set_foreground(self.img, files, self.injectors,
                                              {e["pgid"] for e in self.img.tree if e["pid"] == e["tgid"]})
            self._end_zombies()
            self._make_cgroup_namespaces()
            self._make_time_namespaces()
            procs = self.img.processes()
            for i, t in enumerate(procs):
                shown[0] = f"process {i + 1}/{len(procs)} (pid {t.tid})"
                self._show(shown[0], mem)
                self._process(t, mem, files)
            files.add_late_seals()  # every shared mapping exists now (memfd seals, files._seal)
            files.set_owners(self._owner_host, lambda objref: self._set_async(files, objref))  # every thread exists now
            self._show("finishing", mem)
            # The point of no return: no watchdog may abort what is let go now, and the caller's
            # handlers stop turning signals into an abort (a SIGTERM after this used to kill a
            # namespace already running, or report "nothing was restored" while it ran).
            if watchdog:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if self.on_release is not None:
                self.on_release()
            self._finish(files)
            ns = int(os.readlink(f"/proc/{self.init}/ns/pid")[5:-1])
            res = Result(ns, self.init, len(self.img.processes()) + len(self.img.zombies()), len(self.img.tasks),
                         mem.bytes_written, round(time.monotonic() - start, 6), files.notes)
        except BaseException:
            self._abort(files)
            raise
        finally:
            if watchdog:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
            files.close()
            if netns is not None:
                netns.close()  # (init holds it now; or, on a failure, nothing does, and it goes)
        return res

    def _set_async(self, files, objref: int) -> None:
        """O_ASYNC on file `objref`, through the fd of the first process holding it (see
        FileSet.set_owners)."""
        from .restorer.memory import check

        pid, fd = files.holder(objref)
        inj = self.injectors[pid]
        flags = check(inj.syscall(SYS_fcntl, fd, fcntl.F_GETFL), f"fcntl(F_GETFL) of fd {fd} in {pid}")
        check(inj.syscall(SYS_fcntl, fd, fcntl.F_SETFL, flags | os.O_ASYNC), f"fcntl(F_SETFL, O_ASYNC) of fd {fd} in {pid}")

    def _owner_host(self, owner_type: int, ns_id: int) -> int | None:
        """The host id of an I/O signal owner: a thread, a process, or a process group (named
        by its id, which a member's host pgid gives even if its leader is gone)."""
        if owner_type == 0:  # F_OWNER_TID
            tr = self.by_tid.get(ns_id)
            return tr.tid if tr is not None else None
        if owner_type == 2:  # F_OWNER_PGRP
            member = next((e["pid"] for e in self.img.tree if e["pgid"] == ns_id and e["pid"] in self.host), None)
            return os.getpgid(self.host[member]) if member is not None else None
        # F_OWNER_PID names a process, or a thread when F_SETOWN was given a tid
        tr = self.by_tid.get(ns_id)
        return self.host.get(ns_id) or (tr.tid if tr is not None else None)

    def _show(self, what: str, mem, force: bool = False) -> None:
        p = self.progress
        if p is not None and (force or p.due()):
            mib, el = (mem.bytes_written if mem is not None else 0) / (1 << 20), p.elapsed()
            p.show(f"[bold]restoring[/] {what}  {len(self.img.tasks)} tasks  {mib:.0f} of "
                   f"{self.img.page_count * 4096 / (1 << 20):.0f} MiB of pages written  {el:.1f} s")

    # -- tree ----------------------------------------------------------------------------------
    def _spawn(self, files, net_ino: int = 0) -> None:
        """Make init and, from it, every process. `net_ino`: the new network namespace the
        controller's thread is in meanwhile, which init must be in (0: the controller's own)."""
        from .restorer import mnt, tree

        root = tree.plan(self.img, files)
        root.net_ino = net_ino
        root.proc_mount = mnt.proc_mount(self.img)  # (and so a new mount namespace: tree.spawn_init)
        r, w = os.pipe()
        w = files.place(w)
        self.report_fd = w
        try:
            self.init = tree.spawn_init(root, w)
        except OSError as exc:
            os.close(r)
            os.close(w)
            raise KernelError(f"clone3 of the new namespace's init: {exc.strerror}", exc.errno) from None
        os.close(w)
        try:
            self.stand_in_parents = {h.pid: h.ppid for h in tree.group_stand_ins(root)}
            self._read_reports(r, len(self.img.processes()) + len(self.img.zombies()))
        finally:
            os.close(r)

    def _read_reports(self, r: int, n: int) -> None:
        buf = b""
        deadline = time.monotonic() + REPORT_TIMEOUT
        while len(self.host) < n or len(self.stand_ins) < len(self.stand_in_parents):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                helpers = len(self.stand_in_parents)
                also = f" (and {len(self.stand_ins)} of {helpers} group stand-ins)" if helpers else ""
                raise KernelError(f"only {len(self.host)} of {n} processes{also} came up in time", errno.ETIMEDOUT)
            chunk = os.read(r, 4096)
            if not chunk:
                raise NoSuchProcess(f"the new processes exited before all {n} came up "
                                    f"({len(self.host)} did)")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith("ERR "):
                    raise CkptError(f"setting up process {text[4:]}")
                if text.startswith("STANDIN "):
                    pid, host = (int(x) for x in text.split()[1:])
                    self.stand_ins[pid] = (self.stand_in_parents[pid], host)
                    continue
                pid, host = (int(x) for x in text.split())
                self.host[pid] = host

    def _seize_all(self) -> None:
        from .kernel.ptrace import PTRACE_O_EXITKILL, PTRACE_O_TRACECLONE

        self.by_tid = {}
        for t in self.img.processes() + self.img.zombies():
            tr = Tracee(self.host[t.tid])
            # EXITKILL: should we die mid-restore, the half-made tasks die with us.
            # SUSPEND_SECCOMP (when we may): the filters the image gives the tasks do not apply to
            # the calls injected after they are installed.
            tr.seccomp_suspended = tr.seize_suspending_seccomp(PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL)
            tr.interrupt()
            self.tracees.append(tr)
            self.by_tid[t.tid] = tr
        for tr in self.tracees:
            tr.wait_stop()

    def _set_groups(self) -> None:
        """Join process groups led by others, now that every leader exists. A group led from
        outside the namespace (pgid 0) is the restored init's (tree.restored_groups): joined only
        by a process that is in init's session (a forked process is in its parent's)."""
        from .kernel.ptrace import Injector
        from .restorer import tree
        from .restorer.memory import check

        self.injectors = {}
        for e in self.img.tree:
            if e["pid"] != e["tgid"]:
                continue
            inj = self.injectors[e["pid"]] = Injector(self.by_tid[e["pid"]])
            pgid, sid = tree.restored_groups(e)
            if pgid == e["pid"] or sid == e["pid"]:
                continue  # it made its own group or session when forked (tree._become)
            host = self.host[e["pid"]]
            leader = self.host.get(pgid) or self.stand_ins.get(pgid, (0, None))[1]
            if os.getpgid(host) == leader:
                continue  # in it already, from its parent
            if e["pgid"] == 0 and os.getsid(host) != os.getsid(self.init):
                continue
            check(inj.syscall(SYS_setpgid, 0, pgid), f"setpgid(0, {pgid}) in {e['pid']}")
        # The groups have members now: the stand-ins go, reaped by their parents (they have no
        # exit signal, so no SIGCHLD the image did not have)
        for pid, (parent, host) in self.stand_ins.items():
            os.kill(host, signal.SIGKILL)
            check(self.injectors[parent].syscall(SYS_wait4, pid, 0, WALL, 0), f"wait4({pid}) in {parent}")
        self.stand_ins.clear()

    def _end_zombies(self) -> None:
        """The image's zombies were made as processes like the others (forked by their parents, in
        their sessions and groups, which live processes have joined by now): each takes its owner
        and exits with its wait status. Their parents, held with every signal blocked, cannot reap
        them; the exit signal each parent gets is taken back from it at once (it had that signal
        long ago: raise_pending gives back what the image has pending)."""
        from .kernel.ptrace import REG_INDEX
        from .restorer import creds, memory

        for z in self.img.zombies():
            host, tr, inj = self.host[z.tid], self.by_tid[z.tid], self.injectors[z.tid]
            with inj:
                memory.set_comm(inj, z.comm)
                creds.apply_creds(inj, z.creds, z.groups)
                creds.set_dumpable(inj, 0)  # again: a uid change gives it fs.suid_dumpable's
            status = z.fields["exit_code"]
            # The mask /proc shows for the zombie is the one it died with: the image's (its
            # killing signal let through: its handlers are all default, tree._setup_inner, and
            # nothing else is pending to it that would end it first).
            creds.set_mask(tr, z.thread["blocked"] & ~(1 << (status & 0x7F) - 1 if status & 0x7F else 0))
            if not status & 0x7F:
                # its next instruction: exit_group(status), at the syscall instruction injections use
                regs = tr.get_regs()
                for name, value in (("rip", inj.insn), ("rax", SYS_exit_group), ("rdi", status >> 8),
                                    ("orig_rax", (1 << 64) - 1)):
                    regs[REG_INDEX[name]] = value
                tr.set_regs(regs)
            # Let go before it dies: a traced task's death is reported to its tracer, and its
            # parent would hear of it (or find it with wait) only once we reaped it.
            _let_go(tr)
            self.tracees.remove(tr)
            del self.by_tid[z.tid], self.injectors[z.tid]
            if status & 0x7F:
                os.kill(host, status & 0x7F)
            _wait_zombie(host, z.tid)
            if z.fields["exit_signal"]:
                self._drain_signal(self.img.tree_entry(z.tid)["ppid"], z.fields["exit_signal"])

    def _make_cgroup_namespaces(self) -> None:
        """The image's own cgroup namespaces (restorer/cgroupns.py): now, while every process is
        one thread with the controller's credentials, before _process sets its own."""
        from .kernel.procfs import cgroup_mounts
        from .restorer import cgroupns

        cgroupns.make(self.img, self.host, self.injectors, cgroup_mounts(), self.made_cgroups)

    def _make_time_namespaces(self) -> None:
        """The image's own time namespaces (restorer/timens.py): now, for the same reasons as
        _make_cgroup_namespaces (setns into one needs a single-threaded caller too)."""
        from .restorer import timens

        timens.make(self.img, self.host, self.injectors)

    def _drain_signal(self, pid: int, sig: int) -> None:
        """Take every pending `sig` back from held process `pid` (rt_sigtimedwait, no wait)."""
        from .restorer.memory import check

        inj = self.injectors[pid]
        with inj, inj.scratch(24) as (addr, mem):
            mem.seek(addr)
            mem.write(struct.pack("<Qqq", 1 << (sig - 1), 0, 0))  # sigset, then timespec {0, 0}
            while True:
                ret = inj.syscall(SYS_rt_sigtimedwait, addr, 0, addr + 8, 8)
                if ret == -errno.EAGAIN:
                    break
                check(ret if ret < 0 else 0, f"rt_sigtimedwait({sig}) in {pid}")

    # -- one process ---------------------------------------------------------------------------
    def _process(self, t, mem, files) -> None:
        from .kernel.ptrace import Injector
        from .restorer import creds, memory, seccomp, threads, tree
        from .restorer.memory import check

        host = self.host[t.tid]
        tr = self.by_tid[t.tid]
        inj = self.injectors[t.tid]
        mm = self.img.obj(t.mm_objref)
        mem.rebuild(inj, host, mm, t.tid)
        code = functools.partial(read_memory, host)  # (for fix_restart)
        tr.set_regs(fix_restart(t.regs, code, handler_first(self.img, t)))
        tr.set_xstate(t.xsave)
        exe = self.img.obj(mm.fields["exe_objref"]) if mm.fields["exe_objref"] else None
        exe_fd = files.exe_fd(exe) if exe is not None and exe.name else None
        if exe_fd is not None and _same_file(exe_fd, f"/proc/{host}/exe"):
            # Already right (the image runs the interpreter we forked from); asking again gives
            # EBUSY since the kernel refuses while the old exe is mapped, and it now is.
            exe_fd = None
        memory.set_mm(inj, mm, exe_fd)
        memory.lock_future(inj, mm)
        memory.close_fds(inj, tree.map_fds_of(self.img, t, files) + files.extra + [self.report_fd])
        if t.proc["personality"] & tree.READ_IMPLIES_EXEC:  # only now: see tree._setup_inner
            check(inj.syscall(SYS_personality, t.proc["personality"]), f"personality in {t.tid}")
        memory.set_thread_state(inj, t)
        known: dict[int, int] = {}
        for th in self.img.threads_of(t.tgid):
            if th.is_leader:
                continue
            tt = threads.clone_thread(inj, host, th.tid, known)
            self.tracees.append(tt)
            self.by_tid[th.tid] = tt
            tt.seccomp_suspended = tr.seccomp_suspended  # auto-attached with the leader's options
            tt.set_regs(fix_restart(th.regs, code, handler_first(self.img, th)))
            tt.set_xstate(th.xsave)
            memory.set_thread_state(Injector(tt, insn=inj.insn), th, inherited=t.thread["flags"])
        # Once every thread exists (a clone inherits filters and credentials, and clone3's set_tid
        # needs the leader's root capabilities), each thread gets its seccomp state, then its own
        # credentials (the image's for that thread, else its leader's): the kernel keeps them per
        # thread (glibc's setuid() makes every thread call it; a raw setresuid changes one), and
        # installing a filter without no_new_privs needs the CAP_SYS_ADMIN the credentials may
        # drop. Each thread's are set by the thread itself, so one that dropped its privileges
        # takes nothing from another; what is injected into a thread afterwards (its pending
        # signals, queued to itself) needs none, and the controller, root, may still trace it.
        for th in self.img.threads_of(t.tgid):
            tinj = inj if th.is_leader else Injector(self.by_tid[th.tid], insn=inj.insn)
            seccomp.apply(tinj, th)
            creds.apply_creds(tinj, th.creds, th.groups)
        creds.set_dumpable(inj, t.proc["dumpable"])
        if t.tgid != 1 and t.proc["pdeath_signal"]:
            # set in _setup_inner, but the kernel clears it when euid, egid, fsuid or fsgid
            # change (commit_creds), as they just may have (init's: see _finish)
            check(inj.syscall(SYS_prctl, PR_SET_PDEATHSIG, t.proc["pdeath_signal"]),
                  f"prctl(PR_SET_PDEATHSIG) in {t.tgid}")
        # Last of what the process's memory needs (the seccomp filters' own mappings above, which
        # a READ_IMPLIES_EXEC personality makes writable and executable); nothing injected after
        # maps or mprotects memory.
        memory.deny_write_exec(inj, t.tgid, t.proc["flags"])

    def _finish(self, files) -> None:
        from .kernel.procfs import cgroup_mounts
        from .kernel.ptrace import Injector
        from .restorer import cgroup, creds, locks, sched, timers
        from .restorer.memory import check

        mounts = cgroup_mounts()
        for t in self.img.processes():  # before the affinity, which a cpuset bounds
            cgroup.place(self.host[t.tid], t.cgroups, mounts, self.made_cgroups, name=t.tid)
        live = [t for t in self.img.tasks if not t.zombie]
        for t in live:
            sched.apply(self.by_tid[t.tid].tid, t)
            sched.set_ioprio(self.by_tid[t.tid].tid, t)
            if t.is_leader and t.proc:
                sched.set_oom_score_adj(self.host[t.tid], t.proc["oom_score_adj"])
                sched.set_coredump_filter(self.host[t.tid], self.img.obj(t.mm_objref).fields["flags"])
        # init has died with us since it was made (tree.spawn_init's PR_SET_PDEATHSIG); it must
        # not once we let it go and exit. (The image's own pdeath signal for init is not restored:
        # its parent is us. Until init's detach, PTRACE_O_EXITKILL still ties it to us.)
        check(self.injectors[1].syscall(SYS_prctl, PR_SET_PDEATHSIG, 0), "prctl(PR_SET_PDEATHSIG, 0) in init")
        # The last injected calls but the pending signals' (queued after them, or an injected
        # call could meet one the mask lets through): the timers start counting as close to the
        # detach as can be.
        # A POSIX timer whose own signal the image has pending is armed after the pending
        # signals, which leave its entry out (timers.fire_pending).
        timer_pending = {t.tid: timers.pending_timers(t.posix_timers, [t.shared_siginfo] + [
                             th.siginfo for th in self.img.threads_of(t.tid)]) for t in self.img.processes()}
        for t in self.img.processes():
            locks.apply(self.injectors[t.tid], t.tid, t.locks, self.host[t.tid])
            timers.apply(self.injectors[t.tid], t.itimers, alarm_pending=any(
                pending >> (signal.SIGALRM - 1) & 1 for pending in
                [t.proc["shared_pending"]] + [th.thread["pending"] for th in self.img.threads_of(t.tid)]))
            timers.apply_posix(self.injectors[t.tid], t.tid, t.posix_timers, timer_pending[t.tid])
        for t in live:
            creds.set_mask(self.by_tid[t.tid], t.thread["blocked"])
        # Each thread queues its own pending signals to itself, and the leader its process's
        # (creds.raise_pending: so they keep their sender); nothing is injected into a thread after.
        # Leaders last: a process-wide signal its other threads do not block would be taken by
        # one of them in an injected call of its own, its siginfo lost.
        for t in sorted(live, key=lambda t: t.is_leader):
            leader = self.injectors[t.tgid]
            inj = leader if t.is_leader else Injector(self.by_tid[t.tid], insn=leader.insn)
            creds.raise_pending(inj, t.tgid, t.tid, t.thread["blocked"], t.thread["pending"],
                                t.proc["shared_pending"] if t.proc else None, t.siginfo, t.shared_siginfo,
                                timer_pending[t.tgid])
        for t in self.img.processes():
            if timer_pending[t.tid]:
                self._fire_pending_timers(t, timer_pending[t.tid])
        # A process dumped in a job-control stop (TASK state 4, __TASK_STOPPED) comes back stopped:
        # SIGSTOP queued while its threads are still held stops each of them as it is let go,
        # before it runs an instruction (as `dump --leave-stopped` does). Queued to its main
        # thread's own queue, which the kernel reads before the process's: the stop comes before
        # a process-wide signal pending since before the dump (a handled one stays pending while
        # stopped, as it was, rather than being taken, its handler's frame made, then the stop);
        # the other threads are let go once the main thread has stopped (_let_go_stopped).
        from .kernel.sys import syscall as host_syscall
        from .kernel.sysno import SYS_tgkill

        stopped = {self.host[tgid] for tgid in {t.tgid for t in live if t.fields["state"] == TASK_STOPPED}}
        for host in sorted(stopped):
            host_syscall(SYS_tgkill, host, host, signal.SIGSTOP, what=f"tgkill(SIGSTOP) of {host}")
        # TCP connections leave repair mode last, once nothing but the detach can fail: a failure
        # before kills the tasks with their connections still in repair mode, which closes them
        # without a FIN or a RST (the peer has seen nothing, and another try can pick them up);
        # one in the detach puts them back into repair mode first (_abort). (The watchdog is off:
        # nothing here may be cut short half-way.)
        files.finish_tcp()
        # init last: until its detach, EXITKILL still ties the whole namespace to us, so dying
        # midway through this loop kills it all rather than leaving part of it traced-and-killed.
        for tr in sorted(self.tracees, key=lambda tr: tr.tid == self.init):
            _let_go(tr)
            if tr.tid in stopped:
                _wait_stopped(tr.tid)
        self.tracees = []

    def _fire_pending_timers(self, t, ids: set[int]) -> None:
        """Process `t`'s timers `ids` pend their own signals again (timers.fire_pending), by calls
        injected into its leader with every signal blocked meanwhile: a pending one its mask lets
        through would be taken at a call's return. Its mask is set again after; nothing more is
        injected into it."""
        from .kernel.procfs import SIGEV_THREAD_ID
        from .restorer import creds, timers

        def peek(timer: dict) -> list[bytes]:
            if timer["notify"] & SIGEV_THREAD_ID:
                return self.by_tid[timer["target"]].peek_siginfo(shared=False)
            return self.by_tid[t.tid].peek_siginfo(shared=True)

        tr = self.by_tid[t.tid]
        creds.set_mask(tr, (1 << 64) - 1)
        try:
            timers.fire_pending(self.injectors[t.tid], t.tid, [x for x in t.posix_timers if x["id"] in ids], peek)
        finally:
            creds.set_mask(tr, t.thread["blocked"])

    def _abort(self, files) -> None:
        """SIGKILL the new init: the kernel then kills every task of its namespace. Our tracees'
        deaths are reported to us as their tracer, and init cannot finish dying until they are
        reaped, so reap them before init. A second Ctrl-C must not cut this short (the
        cgroups made would stay), so SIGINT and SIGTERM wait until it is done. TCP connections
        that left repair mode already go back into it first, so that they close silently. The
        socket files the restore bound at their paths are removed (FileSet.unbind)."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            files.repair_tcp_again()
            try:
                self._kill_made()
            finally:
                files.unbind()  # (the tasks' copies of those sockets are closed by now)
                files.remove_made()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _kill_made(self) -> None:
        """SIGKILL everything made (init takes its namespace with it) and reap it."""
        if self.init:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init, signal.SIGKILL)
            # Reaped in whatever order they become reapable, never by waiting for one: a leader is
            # not reported dead while a traced thread of its process is unreaped, and the last
            # thread of init to exit waits in the kernel (zap_pid_ns_processes) until every other
            # task of the namespace is reaped, which, traced, only we do. Waiting for one of
            # them waited for ever (a failure after a multi-threaded process, or init, was made).
            pending = {tr.tid for tr in self.tracees} | {self.init}
            for tid in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(tid, signal.SIGKILL)
            deadline = time.monotonic() + KILL_REAP_S
            while pending and time.monotonic() < deadline:
                # and any tracee not on the list (a thread an abort cut off between its clone and
                # its Tracee): unreaped, it holds init's exit, which holds the rest
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-1, WALL | os.WNOHANG)[0]:
                        pass
                for tid in list(pending):
                    try:
                        if os.waitpid(tid, WALL | os.WNOHANG)[0]:
                            pending.discard(tid)
                    except ChildProcessError:  # (not ours to reap any more: gone)
                        pending.discard(tid)
                if pending:
                    time.sleep(0.005)
        self.tracees = []
        if self.made_cgroups:
            from .restorer import cgroup

            cgroup.remove(self.made_cgroups)
