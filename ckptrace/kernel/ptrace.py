"""ptrace for x86_64: seize/interrupt/detach, register sets, and syscall injection.

Why ptrace to hold tasks still: when the tracer dies, even by SIGKILL, the kernel detaches its
tracees and they run on; a cgroup freezer would stay frozen. Constants and behaviour measured on
this kernel are in KERNEL-NOTES (shared/).

A `Tracee` must be driven from the thread that seized it (ptrace is per tracer thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct
import time

from ..errors import AccessDenied, KernelError, NoSuchProcess, from_oserror
from ..image.records import SI_TKILL, SIGINFO_SIZE, siginfo_code
from . import sysno
from .sys import iovec, libc
from .sys import syscall as host_syscall

PTRACE_CONT = 7
PTRACE_SYSCALL = 24
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_PEEKSIGINFO_SHARED = 1
PEEKSIGINFO_ARGS = struct.Struct("<QIi")  # struct ptrace_peeksiginfo_args: off, flags, nr
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
RSEQ_CONF = struct.Struct("<QIII4x")  # struct ptrace_rseq_configuration: pointer, size, signature, flags
PTRACE_SETSIGMASK = 0x420B
PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_EXITKILL = 0x100000
# Injected system calls must not meet the task's seccomp filters (a filter may kill the task for
# a prctl it never makes itself). Needs CAP_SYS_ADMIN and CONFIG_CHECKPOINT_RESTORE.
PTRACE_O_SUSPEND_SECCOMP = 0x200000
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_SECCOMP_GET_METADATA = 0x420D
SECCOMP_METADATA = struct.Struct("<QQ")  # struct seccomp_metadata: filter_off, flags
SOCK_FILTER_SIZE = 8  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128
SYSCALL_STOP = signal.SIGTRAP | 0x80  # WSTOPSIG of a syscall-entry/exit-stop with TRACESYSGOOD
NT_PRSTATUS = 1
NT_X86_XSTATE = 0x202
WALL = 0x40000000

REGS = struct.Struct("<27Q")
REG_INDEX = {n: i for i, n in enumerate((
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
    "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
    "ds", "es", "fs", "gs"))}
_XSTATE_MAX = 64 << 10
RED_ZONE = 128
SYSCALL_INSN = b"\x0f\x05"
_FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)


def _ptrace_errno(req: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p | None = 0) -> tuple[int, int]:
    """ptrace returning (result, errno): for requests whose errors are answers (ENOENT: no more).
    errno is cleared first: PEEK requests may return -1 as data."""
    ctypes.set_errno(0)
    ret = libc.ptrace(req, pid, ctypes.c_void_p(addr), data if isinstance(data, ctypes.c_void_p)
                      else ctypes.c_void_p(data))
    return ret, (ctypes.get_errno() if ret == -1 else 0)


def _ptrace(req: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p | None = 0, what: str = "") -> int:
    ret, err = _ptrace_errno(req, pid, addr, data)
    if err:
        raise from_oserror(OSError(err, os.strerror(err)), f"ptrace {what or req} of {pid}")
    return ret


class Tracee:
    """One seized task (thread). Keeps the stop state and any signal owed back to the task."""

    def __init__(self, tid: int):
        self.tid = tid
        self.stopped = False
        # Signals we took from the task at a signal-delivery-stop (signal number, siginfo), to
        # give back at the detach.
        self.owed: list[tuple[int, bytes]] = []
        self.group_stopped = False  # the task was in a job-control stop (SIGSTOP) when seized
        self.seccomp_suspended = False  # seized with PTRACE_O_SUSPEND_SECCOMP

    # -- lifecycle -----------------------------------------------------------------------------
    def seize(self, options: int = 0) -> None:
        """Always with PTRACE_O_TRACESYSGOOD: the Injector's syscall-stops then report
        SIGTRAP|0x80, which no signal the task is sent can be taken for (threads auto-attached
        through PTRACE_O_TRACECLONE inherit the option)."""
        _ptrace(PTRACE_SEIZE, self.tid, 0, options | PTRACE_O_TRACESYSGOOD, "SEIZE")

    def seize_suspending_seccomp(self, options: int = 0) -> bool:
        """Seize with the task's seccomp filters suspended while we hold it; False when the kernel
        or our capabilities refuse that (the task is then seized with `options` alone)."""
        try:
            self.seize(options | PTRACE_O_SUSPEND_SECCOMP)
            return True
        except (AccessDenied, KernelError):
            self.seize(options)
            return False

    def interrupt(self) -> None:
        _ptrace(PTRACE_INTERRUPT, self.tid, 0, 0, "INTERRUPT")

    def wait(self, deadline: float | None = None) -> int | None:
        """waitpid for this task; raises NoSuchProcess if it exited. With a `deadline`
        (time.monotonic()), None once it passes with nothing to report."""
        while True:
            try:
                pid, status = os.waitpid(self.tid, WALL | (os.WNOHANG if deadline is not None else 0))
            except ChildProcessError as exc:
                raise NoSuchProcess(f"task {self.tid} is gone") from exc
            except InterruptedError:
                continue
            if pid == 0:  # WNOHANG: nothing yet
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.0005)
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.stopped = False
                raise NoSuchProcess(f"task {self.tid} exited while being checkpointed")
            return status

    def wait_stop(self, deadline: float | None = None, *, hold_signals: bool = False) -> bool:
        """Wait for the event-stop PTRACE_INTERRUPT asked for, passing on signals that came first
        (with `hold_signals`, once the task's state is being read: kept for the detach instead,
        and what it was seized in left as it was). False if `deadline` (time.monotonic()) passed
        first: the task is busy in the kernel where no stop can reach it (a vfork parent waiting
        for its child, an uninterruptible sleep)."""
        while True:
            status = self.wait(deadline)
            if status is None:
                return False
            if not os.WIFSTOPPED(status):
                continue
            sig = os.WSTOPSIG(status)
            event = status >> 16
            if event == PTRACE_EVENT_STOP:
                # Event-stop: after INTERRUPT (SIGTRAP) or a group-stop (SIGSTOP etc.).
                if not hold_signals:
                    self.group_stopped = sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
                self.stopped = True
                return True
            if event:
                # A ptrace event we asked for (clone etc.): resume to reach the pending interrupt.
                _ptrace(PTRACE_CONT, self.tid, 0, 0, "CONT")
                continue
            # Signal-delivery-stop: resuming with 0 would drop the signal; deliver it (or keep it
            # for the detach) and wait on for the interrupt's event-stop, which is still pending.
            if hold_signals:
                self.take_signal(sig)  # (a SIGTRAP too: injection makes none, see Injector)
                sig = 0
            _ptrace(PTRACE_CONT, self.tid, 0, sig, "CONT")

    def take_signal(self, sig: int) -> None:
        """Keep the signal the task is in a signal-delivery-stop for, with its siginfo, to give
        back at the detach; the caller resumes the task without it."""
        self.owed.append((sig, self.get_siginfo()))

    def get_siginfo(self) -> bytes:
        buf = ctypes.create_string_buffer(SIGINFO_SIZE)
        _ptrace(PTRACE_GETSIGINFO, self.tid, 0, ctypes.c_void_p(ctypes.addressof(buf)), "GETSIGINFO")
        return buf.raw

    def detach(self, sig: int = 0) -> None:
        """Let the task go, giving back the signals taken from it. Safe to call when it is
        already gone. `sig` is PTRACE_DETACH's own signal, which the kernel delivers only from a
        signal-delivery-stop and drops in the event-stop a held task is in: signals owed to the
        task are queued to it again instead, while it is still stopped, and it takes them as it
        runs on."""
        try:
            for owed in self.owed:
                self._requeue(*owed)
            self.owed = []
            _ptrace(PTRACE_DETACH, self.tid, 0, sig, "DETACH")
        except NoSuchProcess:
            pass
        self.stopped = False

    def _requeue(self, sig: int, info: bytes) -> None:
        """Queue `sig` to the thread again with the siginfo it came with where the kernel lets
        another process send that siginfo (rt_tgsigqueueinfo: a negative si_code other than
        SI_TKILL, as sigqueue and POSIX timers send), else by tgkill (the handler then sees
        SI_TKILL from pid 0: the kernel's own codes and kill's SI_USER can only be forged by the
        thread itself)."""
        from . import procfs

        tgid = procfs.status(self.tid).tgid
        code = siginfo_code(info)
        if code < 0 and code != SI_TKILL:
            buf = ctypes.create_string_buffer(info, SIGINFO_SIZE)
            try:
                host_syscall(sysno.SYS_rt_tgsigqueueinfo, tgid, self.tid, sig, ctypes.addressof(buf),
                            what=f"requeue signal {sig} to {self.tid}")
                return
            except AccessDenied:
                pass
        host_syscall(sysno.SYS_tgkill, tgid, self.tid, sig, what=f"requeue signal {sig} to {self.tid}")

    def cont(self, sig: int = 0) -> None:
        _ptrace(PTRACE_CONT, self.tid, 0, sig, "CONT")
        self.stopped = False

    # -- register sets -------------------------------------------------------------------------
    def _getregset(self, nt: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        iov = iovec(ctypes.addressof(buf), size)
        _ptrace(PTRACE_GETREGSET, self.tid, nt, ctypes.c_void_p(ctypes.addressof(iov)), "GETREGSET")
        return buf.raw[:iov.iov_len]

    def _setregset(self, nt: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        iov = iovec(ctypes.addressof(buf), len(data))
        _ptrace(PTRACE_SETREGSET, self.tid, nt, ctypes.c_void_p(ctypes.addressof(iov)), "SETREGSET")

    def get_regs(self) -> list[int]:
        return list(REGS.unpack(self._getregset(NT_PRSTATUS, REGS.size)))

    def set_regs(self, regs: list[int]) -> None:
        self._setregset(NT_PRSTATUS, REGS.pack(*regs))

    def get_xstate(self) -> bytes:
        """The whole XSAVE area, whatever size this CPU's features make it."""
        return self._getregset(NT_X86_XSTATE, _XSTATE_MAX)

    def set_xstate(self, data: bytes) -> None:
        self._setregset(NT_X86_XSTATE, data)

    def get_sigmask(self) -> int:
        mask = ctypes.c_uint64()
        _ptrace(PTRACE_GETSIGMASK, self.tid, 8, ctypes.c_void_p(ctypes.addressof(mask)), "GETSIGMASK")
        return mask.value

    def get_rseq(self) -> tuple[int, int, int]:
        """The thread's rseq registration: (area address, area length, signature); all 0 when it
        has none or the kernel predates PTRACE_GET_RSEQ_CONFIGURATION (5.13)."""
        conf = ctypes.create_string_buffer(RSEQ_CONF.size)
        try:
            _ptrace(PTRACE_GET_RSEQ_CONFIGURATION, self.tid, RSEQ_CONF.size,
                    ctypes.c_void_p(ctypes.addressof(conf)), "GET_RSEQ_CONFIGURATION")
        except KernelError:
            return 0, 0, 0
        ptr, size, sig, _flags = RSEQ_CONF.unpack(conf.raw)
        return (ptr, size, sig) if ptr else (0, 0, 0)

    def peek_siginfo(self, shared: bool) -> list[bytes]:
        """The queued siginfo_t (128 bytes each) of the thread's own pending signals, or of its
        process's shared ones, oldest first, without dequeuing them."""
        out: list[bytes] = []
        batch = 32
        buf = ctypes.create_string_buffer(batch * SIGINFO_SIZE)
        while True:
            args = ctypes.create_string_buffer(
                PEEKSIGINFO_ARGS.pack(len(out), PTRACE_PEEKSIGINFO_SHARED if shared else 0, batch), PEEKSIGINFO_ARGS.size)
            n = _ptrace(PTRACE_PEEKSIGINFO, self.tid, ctypes.addressof(args), ctypes.c_void_p(ctypes.addressof(buf)),
                        "PEEKSIGINFO")
            out += [buf.raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(n)]
            if n < batch:
                return out

    def get_seccomp_filters(self) -> list[tuple[int, bytes]]:
        """The thread's seccomp filter chain, oldest (first installed) first: (flags, the
        classic BPF program as struct sock_filter[]). The kernel's index 0 is the oldest filter
        (get_nth_filter counts back from the newest by chain length minus the index)."""
        chain = []
        index = 0
        while True:
            n, err = _ptrace_errno(PTRACE_SECCOMP_GET_FILTER, self.tid, index, 0)
            if err == errno.ENOENT:
                break
            if err:
                raise from_oserror(OSError(err, os.strerror(err)), f"ptrace SECCOMP_GET_FILTER of {self.tid}")
            buf = ctypes.create_string_buffer(n * SOCK_FILTER_SIZE)
            _ptrace(PTRACE_SECCOMP_GET_FILTER, self.tid, index, ctypes.c_void_p(ctypes.addressof(buf)),
                    "SECCOMP_GET_FILTER")
            meta = ctypes.create_string_buffer(SECCOMP_METADATA.pack(index, 0), SECCOMP_METADATA.size)
            _ptrace(PTRACE_SECCOMP_GET_METADATA, self.tid, SECCOMP_METADATA.size,
                    ctypes.c_void_p(ctypes.addressof(meta)), "SECCOMP_GET_METADATA")
            chain.append((SECCOMP_METADATA.unpack(meta.raw)[1], buf.raw))
            index += 1
        return chain

    def set_sigmask(self, mask: int) -> None:
        m = ctypes.c_uint64(mask)
        _ptrace(PTRACE_SETSIGMASK, self.tid, 8, ctypes.c_void_p(ctypes.addressof(m)), "SETSIGMASK")


def xstate_size() -> int:
    """Size of this CPU's XSAVE area, as the kernel's NT_X86_XSTATE regset reports it (CPUID 0xD)."""
    return _cpuid_xsave_size()


def _cpuid_xsave_size() -> int:
    # The kernel exposes xstate size in the regset length; measure it on a child of ours.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    try:
        os.waitpid(pid, os.WUNTRACED)
        t = Tracee(pid)
        t.seize()
        t.interrupt()
        t.wait_stop()
        size = len(t.get_xstate())
        return size
    finally:
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def xcr0_from_xstate(xsave: bytes) -> int:
    """XCR0 as the kernel stores it in the software-reserved bytes (offset 464) of NT_X86_XSTATE."""
    return struct.unpack_from("<Q", xsave, 464)[0] if len(xsave) >= 472 else 0


# -- syscall injection ---------------------------------------------------------------------------

def read_memory(pid: int, addr: int, n: int) -> bytes:
    """n bytes of task `pid`'s memory at addr (/proc/PID/mem: fewer at the end of a mapping;
    OSError for an address not mapped)."""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(addr)
        return mem.read(n)


def find_syscall_insn(pid: int) -> int:
    """Address of a `syscall` instruction inside the task's [vdso] (never write to its text)."""
    from . import procfs

    # (through procfs: the task's mapped files may have names that are not UTF-8)
    vdso = next((m for m in procfs.maps(pid) if m.path == "[vdso]"), None)
    if vdso is None:
        raise KernelError(f"task {pid} has no [vdso] to inject syscalls through", errno.ENOENT)
    start, end = vdso.start, vdso.end
    code = read_memory(pid, start, end - start)
    i = code.find(SYSCALL_INSN)
    if i < 0:
        raise KernelError(f"no syscall instruction in task {pid}'s vdso", errno.ENOENT)
    return start + i


def checked(ret: int, what: str) -> int:
    """An injected call's raw result, or its -errno raised as the ckptrace error it maps to."""
    if ret < 0:
        raise from_oserror(OSError(-ret, os.strerror(-ret)), what)
    return ret


class Injector:
    """Runs system calls inside a stopped tracee, leaving its registers as they were.

    Each call is run between syscall-stops (PTRACE_SYSCALL to its entry, again to its exit, where
    its result is read), never by single-stepping: a step's trap is a SIGTRAP the kernel forces
    on the task (force_sig_info_to_task), which sets the task's SIGTRAP action to SIG_DFL (and
    unblocks it) whenever the task blocks or ignores SIGTRAP. Every dump blocks all signals while
    it injects, so a dump alone took a caught or ignored SIGTRAP from the live process, and its
    image (read by injected rt_sigaction) had it as default. Syscall-stops are ptrace_notify stops:
    no signal is sent, no action touched. Tracee.seize asks for PTRACE_O_TRACESYSGOOD, so that a
    syscall-stop (SIGTRAP|0x80) is never taken for a SIGTRAP someone sent the task.

    Use it as a context manager: leaving the block puts the task back in an event-stop inside
    get_signal (see `settle`), where it was seized, so that a system call it was interrupted in
    is restarted by the kernel when it runs on. Until then it sits at the syscall-exit-stop of
    the last call, with its own registers back; a dumper dying then, even by SIGKILL, loses
    nothing (the implicit detach wakes the task with TIF_SIGPENDING, which restarts an
    interrupted call too). Only while a call is in flight (between putting its registers in and
    taking them out again: microseconds, but for a call that blocks) would the task run on with
    the injected registers, and most likely crash. (Settling after every call would add a third
    stop to its two.)

    `hold_signals`: every signal is blocked (PTRACE_SETSIGMASK) while the block runs, and the
    task's own mask put back at its end, once it is settled. Each call is reached by a return to
    user mode, where the kernel delivers any pending signal the mask lets through: the tracer
    then took it from the task (a SIGALRM a program pause()s for, lost for good; real-time
    signals queued to a running namespace, one per dump), and it was neither delivered nor in
    the image. Blocked, they stay pending: in the image, and delivered once the task runs
    again."""

    def __init__(self, tracee: Tracee, insn: int | None = None, *, hold_signals: bool = False):
        self.t = tracee
        self.insn = insn if insn is not None else find_syscall_insn(tracee.tid)
        self.injected = False  # the task was resumed for a call since it was last settled
        self.hold_signals = hold_signals
        self.saved_mask: int | None = None

    def __enter__(self) -> "Injector":
        if self.hold_signals:
            self.saved_mask = self.t.get_sigmask()
            self.t.set_sigmask((1 << 64) - 1)  # (SIGKILL and SIGSTOP cannot be blocked: ignored)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.injected:
                return
            if exc_type is None:
                self.settle()
            else:
                with contextlib.suppress(NoSuchProcess, KernelError, AccessDenied):
                    self.settle()  # the error that got us here is the one to report
        finally:
            if self.saved_mask is not None:
                mask, self.saved_mask = self.saved_mask, None
                if exc_type is None:
                    self.t.set_sigmask(mask)
                else:
                    with contextlib.suppress(NoSuchProcess, KernelError, AccessDenied):
                        self.t.set_sigmask(mask)

    def syscall(self, nr: int, *args: int) -> int:
        """Return the raw result (negative errno on failure), like the kernel's return value."""
        saved = self.t.get_regs()
        regs = list(saved)
        regs[REG_INDEX["rax"]] = nr
        for name, val in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            regs[REG_INDEX[name]] = val & 0xFFFFFFFFFFFFFFFF
        # orig_rax = -1: otherwise resuming from an interrupted syscall would rewind rip for a restart.
        regs[REG_INDEX["orig_rax"]] = 0xFFFFFFFFFFFFFFFF
        regs[REG_INDEX["rip"]] = self.insn
        self.t.set_regs(regs)
        self.injected = True
        try:
            self._to_syscall_stop(nr)  # entry: the task is at the instruction, in the kernel
            self._to_syscall_stop(nr)  # exit: the call is done, its result in rax
            out = self.t.get_regs()
            ret = out[REG_INDEX["rax"]]
        except BaseException:
            # Whatever got us here (Ctrl-C while the task sits in a long injected pread, a fault,
            # the watchdog) is what to report. The task may not be in a ptrace-stop then (it runs
            # the call), and SETREGSET's ESRCH would replace a KeyboardInterrupt with "no such
            # process": the caller kills or releases the task anyway.
            with contextlib.suppress(NoSuchProcess, KernelError, AccessDenied):
                self.t.set_regs(saved)
            raise
        self.t.set_regs(saved)
        return ret - (1 << 64) if ret >= 1 << 63 else ret

    def _to_syscall_stop(self, nr: int) -> None:
        """Resume the task (PTRACE_SYSCALL) until its next syscall-stop. Only the return to user
        mode before the entry meets signals; a ptrace event (PTRACE_EVENT_CLONE of an injected
        clone3, under TRACECLONE) comes between entry and exit."""
        while True:
            _ptrace(PTRACE_SYSCALL, self.t.tid, 0, 0, "SYSCALL")
            status = self.t.wait()
            if not os.WIFSTOPPED(status):
                continue
            sig = os.WSTOPSIG(status)
            if sig == SYSCALL_STOP:
                return
            if status >> 16:
                continue  # a ptrace event-stop: on to the syscall-stop
            if sig in _FAULTS:
                # The return to the instruction faulted (bad insn address or layout): resuming
                # would fault forever.
                raise KernelError(f"injected syscall {nr} faulted in task {self.t.tid} "
                                  f"({signal.Signals(sig).name})", errno.EFAULT)
            # An asynchronous signal arrived first (a SIGTRAP someone sent too): keep it for the
            # task and resume without it.
            self.t.take_signal(sig)

    def settle(self) -> None:
        """Leave the task in an event-stop inside get_signal again, as it was seized:
        PTRACE_INTERRUPT then PTRACE_CONT from the last call's syscall-exit-stop. The task traps
        again before it leaves the kernel (get_signal takes the pending interrupt first), so not
        one of its instructions runs, and when it does run on, the kernel still does the restart
        of a system call it was interrupted in (-ERESTARTSYS etc. in its own rax), which it does
        only after get_signal."""
        _ptrace(PTRACE_INTERRUPT, self.t.tid, 0, 0, "INTERRUPT")
        _ptrace(PTRACE_CONT, self.t.tid, 0, 0, "CONT")
        self.t.wait_stop(hold_signals=True)
        self.injected = False

    @contextlib.contextmanager
    def scratch(self, size: int):
        """A scratch area on the target's stack, below the red zone; its bytes are put back after."""
        rsp = self.t.get_regs()[REG_INDEX["rsp"]]
        addr = (rsp - RED_ZONE - size - 64) & ~0xF
        path = f"/proc/{self.t.tid}/mem"
        with open(path, "r+b", buffering=0) as mem:
            mem.seek(addr)
            old = mem.read(size)
            try:
                yield addr, mem
            finally:
                mem.seek(addr)
                mem.write(old)
