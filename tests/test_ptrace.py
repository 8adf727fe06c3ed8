"""ptrace primitives on a real child: stop, registers, injection leaves no trace, faults are errors."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ckptrace.errors import KernelError
from ckptrace.kernel.ptrace import REG_INDEX, Injector, Tracee, xcr0_from_xstate


@pytest.fixture
def stopped_child(root):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        while True:
            time.sleep(0.01)
    t = Tracee(pid)
    t.seize()
    t.interrupt()
    t.wait_stop()
    yield t
    t.detach()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.kernel
def test_injection_returns_the_result_and_restores_registers(stopped_child):
    t = stopped_child
    before = t.get_regs()
    inj = Injector(t)
    assert inj.syscall(39) == t.tid  # getpid, seen from inside the child
    assert inj.syscall(62, 0, 0) == 0  # kill(0, 0): signal 0 to its own group, a harmless probe
    assert inj.syscall(3, 100000) == -9  # close of a bad fd: -EBADF comes back raw
    assert t.get_regs() == before
    with open(f"/proc/{t.tid}/status") as f:
        assert "TracerPid:\t%d" % os.getpid() in f.read()


@pytest.mark.kernel
def test_injection_through_a_bad_address_raises(stopped_child):
    t = stopped_child
    before = t.get_regs()
    with pytest.raises(KernelError, match="faulted"):
        Injector(t, insn=0x1000).syscall(39)
    assert t.get_regs() == before  # and the task is left as it was


@pytest.mark.kernel
def test_a_sigtrap_sent_to_the_task_is_kept_not_taken_for_the_calls_own_stop(stopped_child):
    """A single-step's stop was a SIGTRAP signal-delivery-stop like the one for a SIGTRAP someone
    sent the held task: the injector took that for the step, returned the call's number as
    its result (the call had not run) and dropped the signal. Syscall-stops report
    SIGTRAP|0x80 (PTRACE_O_TRACESYSGOOD, which every seize asks for)."""
    t = stopped_child
    before = t.get_regs()
    os.kill(t.tid, signal.SIGTRAP)
    with Injector(t) as inj:
        assert inj.syscall(39) == t.tid
        assert inj.syscall(39) == t.tid
    assert [sig for sig, _ in t.owed] == [signal.SIGTRAP]
    assert t.get_regs() == before
    t.owed = []  # (not given back: its default action would kill the child before the teardown)


@pytest.mark.kernel
def test_xstate_is_the_cpus_full_area(stopped_child):
    xs = stopped_child.get_xstate()
    assert len(xs) >= 576 and len(xs) % 64 == 0
    xcr0 = xcr0_from_xstate(xs)
    assert xcr0 & 0x3 == 0x3  # x87 and SSE state are always enabled on x86_64
    assert stopped_child.get_regs()[REG_INDEX["cs"]] == 0x33


@pytest.mark.kernel
def test_signals_taken_at_a_step_reach_the_task_after_the_detach_with_their_siginfo(root, tmp_path):
    """A step back to user mode meets the signals pending for the task, and the tracer takes
    them (signal-delivery-stops). They must come back at the detach, which happens in an
    event-stop, where the kernel ignores PTRACE_DETACH's own signal: the first one was lost that
    way, and every one after it was not even kept. sigqueue's value comes back as it was sent;
    kill's SI_USER, which only the task itself may forge, as SI_TKILL."""
    import ctypes
    import select
    import subprocess

    exe = str(tmp_path / "sigcatch")
    subprocess.run(["gcc", "-O1", "-o", exe, os.path.join(os.path.dirname(__file__), "workloads", "sigcatch.c")],
                   check=True)
    p = subprocess.Popen([exe], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        t = Tracee(p.pid)
        t.seize()
        t.interrupt()
        t.wait_stop()
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.sigqueue(p.pid, signal.SIGUSR1, ctypes.c_void_p(1234)) == 0
        os.kill(p.pid, signal.SIGUSR2)
        inj = Injector(t)
        assert inj.syscall(39) == p.pid
        inj.settle()
        assert sorted(sig for sig, _ in t.owed) == [signal.SIGUSR1, signal.SIGUSR2]
        t.detach()
        lines: set[bytes] = set()
        deadline = time.monotonic() + 15
        while len(lines) < 2 and select.select([p.stdout], [], [], max(0, deadline - time.monotonic()))[0]:
            lines |= set(os.read(p.stdout.fileno(), 100).splitlines())
        assert lines == {b"%d -1 1234" % signal.SIGUSR1, b"%d -6 0" % signal.SIGUSR2}
        with open(f"/proc/{p.pid}/status") as f:
            assert "TracerPid:\t0" in f.read()
    finally:
        p.kill()
        p.wait()


class _FakeTracee:
    """Registers only; `fail_set` makes SETREGSET fail from the given call on (ESRCH, as for a
    task that is not in a ptrace-stop)."""

    def __init__(self, fail_set: int):
        self.tid = 1 << 22
        self.owed = []
        self.sets = 0
        self.fail_set = fail_set

    def get_regs(self):
        return [0] * len(REG_INDEX)

    def set_regs(self, regs):
        self.sets += 1
        if self.sets >= self.fail_set:
            from ckptrace.errors import NoSuchProcess

            raise NoSuchProcess(f"ptrace SETREGSET of {self.tid}: no such process or file")

    def wait(self):
        raise KeyboardInterrupt  # Ctrl-C while the task runs the injected call


def test_an_interruption_during_an_injected_call_is_not_replaced_by_the_register_restore(monkeypatch):
    from ckptrace.errors import NoSuchProcess
    from ckptrace.kernel import ptrace

    monkeypatch.setattr(ptrace, "_ptrace", lambda *a, **kw: 0)
    t = _FakeTracee(fail_set=2)  # the call's registers go in; putting the saved ones back fails
    with pytest.raises(KeyboardInterrupt):
        Injector(t, insn=0x1000).syscall(39)
    assert t.sets == 2  # it was tried
    # In the normal path a failure to put the registers back is still an error.
    t = _FakeTracee(fail_set=2)
    t.wait = lambda: 0x857f  # stopped by SIGTRAP|0x80: the syscall-stops
    with pytest.raises(NoSuchProcess, match="SETREGSET"):
        Injector(t, insn=0x1000).syscall(39)


def test_system_call_numbers_are_the_abis():
    """ckptrace.kernel.sysno against the C library's header: a wrong number would inject another
    call into a frozen task."""
    import re

    from ckptrace.kernel import sysno

    header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    with open(header) as f:
        abi = {m[1]: int(m[2]) for m in re.finditer(r"^#define __NR_(\w+) (\d+)$", f.read(), re.M)}
    ours = {n[4:]: v for n, v in vars(sysno).items() if n.startswith("SYS_")}
    assert len(ours) > 40
    assert {n: v for n, v in ours.items() if abi.get(n) != v} == {}


def test_prctl_options_are_the_abis():
    """ckptrace.kernel.prctl against the C library's <linux/prctl.h>: a wrong number would make an
    injected prctl set or read something else. The options newer than the header are named, so
    that a newer header checks them too."""
    import re

    from ckptrace.kernel import prctl

    header = "/usr/include/linux/prctl.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    with open(header) as f:
        abi = {m[1]: int(m[2], 0) for m in re.finditer(r"^#\s*define\s+(PR_\w+)\s+(0x[0-9a-fA-F]+|\d+)U?L?\b", f.read(), re.M)}
    ours = {n: v for n, v in vars(prctl).items() if n.startswith("PR_")}
    assert len(ours) > 25
    assert {n for n in ours if n not in abi} == prctl.NEWER_THAN_6_1 - set(abi)
    assert {n: v for n, v in ours.items() if n in abi and abi[n] != v} == {}


def test_terminal_ioctls_and_structs_are_the_kernels(tmp_path):
    """ckptrace.kernel.ttyio's own numbers and struct sizes against the C headers (the rest come
    from Python's termios module): a wrong one would ask a terminal something else."""
    import shutil
    import subprocess

    from ckptrace.kernel import ttyio

    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to read the headers")
    names = ("TIOCGSID", "TCGETS2", "TCSETS2", "TIOCGPTN", "TIOCSPTLCK", "TIOCGDEV", "TIOCGPKT", "TIOCGPTLCK",
             "TIOCGEXCL", "TIOCGPTPEER")
    src = tmp_path / "t.c"
    src.write_text("#include <stdio.h>\n#include <asm/termios.h>\n"
                   "int main(void) {\n"
                   + "".join(f'  printf("{n} %lu\\n", (unsigned long){n});\n' for n in names)
                   + '  printf("TERMIOS2 %zu\\nWINSIZE %zu\\n", sizeof(struct termios2), sizeof(struct winsize));\n'
                     "  return 0;\n}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "t"), str(src)], check=True)
    got = dict(line.split() for line in subprocess.run([str(tmp_path / "t")], capture_output=True, text=True,
                                                          check=True).stdout.splitlines())
    ours = {n: getattr(ttyio, n) for n in names} | {"TERMIOS2": ttyio.TERMIOS2.size, "WINSIZE": ttyio.WINSIZE.size}
    assert {k: int(v) for k, v in got.items()} == ours
