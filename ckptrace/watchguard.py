"""The guard of `watch --priority auto`: a small process at normal priority that raises the
controller to normal priority when the controller stops making progress at SCHED_IDLE.

Why a process: a SCHED_IDLE controller on saturated CPUs gets almost no CPU time (measured here:
over two seconds without a single slice with four busy tasks on two CPUs), so it cannot notice
by itself that it is falling behind. A thread of its own would not help either: it needs the
GIL, which the starved thread holds. The guard shares one page with the controller (a memfd):
the controller writes a heartbeat (CLOCK_MONOTONIC ns) whenever its loop comes round and every
few records it reads; the guard wakes every GUARD_SECONDS, and when the heartbeat is older than
`stale` seconds while the controller is at SCHED_IDLE, it puts every controller thread at
SCHED_OTHER and counts that in the page, where the controller sees it (CpuPriority.observe).
The guard exits when the controller does (PR_SET_PDEATHSIG, and the controller stops it).

Run by the controller as `python -m ckptrace.watchguard FD PID STALE READY-FD`, never by hand.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import subprocess
import sys
import time

from .errors import CkptError
from .kernel.prctl import PR_SET_PDEATHSIG
from .kernel import procfs
from .kernel.sys import libc, set_threads_policy

# the shared page, as 64-bit words: the controller's heartbeat (ns, CLOCK_MONOTONIC), the times
# the guard raised the controller
HEARTBEAT, RAISES = 0, 1
GUARD_SECONDS = 0.05


class Heartbeat:
    """The page the controller and its guard share."""

    def __init__(self, fd: int | None = None):
        """A new page (the controller), or the one behind `fd` (the guard)."""
        new = fd is None
        if new:
            fd = os.memfd_create("ckptrace-watch-heartbeat", os.MFD_CLOEXEC)
            os.ftruncate(fd, mmap.PAGESIZE)
        self.fd = fd
        self.page = mmap.mmap(fd, mmap.PAGESIZE)
        # Whole-word loads and stores: struct packs "<Q" a byte at a time, and the other side
        # could read a beat half written (seconds off when a carry crosses bytes). The page is
        # shared by two processes of one machine: native order is the order.
        self.words = memoryview(self.page).cast("Q")
        if new:
            self.beat()

    def beat(self) -> None:
        """The controller is making progress now. Each side writes only its own field."""
        self.words[HEARTBEAT] = time.monotonic_ns()

    def age(self) -> float:
        """Seconds since the last beat."""
        return (time.monotonic_ns() - self.words[HEARTBEAT]) / 1e9

    def raised(self) -> int:
        return self.words[RAISES]

    def count_raise(self) -> None:
        """The guard raised the controller (only the guard writes this field)."""
        self.words[RAISES] += 1

    def close(self) -> None:
        self.words.release()
        self.page.close()
        os.close(self.fd)


class Guard:
    """The guard process of the calling (controller) process; started before the controller
    lowers its priority (the guard would inherit it), and waited for, so that its start-up is
    over before the watched workload is."""

    START_SECONDS = 10.0

    def __init__(self, heartbeat: Heartbeat, stale: float):
        ready_r, ready_w = os.pipe()
        try:
            # the package may be a checkout nobody installed: tell the guard where it is
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ckptrace.watchguard", str(heartbeat.fd), str(os.getpid()), repr(stale),
                 str(ready_w)],
                pass_fds=(heartbeat.fd, ready_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                cwd="/", env=env)
            os.close(ready_w)
            ready_w = -1
            ready, _, _ = select.select([ready_r], [], [], self.START_SECONDS)
            if not ready or os.read(ready_r, 1) != b"1":
                self.stop()
                raise CkptError("the controller's priority guard did not start "
                                "(try --priority normal or --priority idle)")
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Staleness:
    """How long the controller has gone without a beat while it could run. A controller that was
    stopped (Ctrl-Z, SIGSTOP: state T) is not starved: its heartbeat ages all the while, and
    raising it then, or the moment it goes on, before its first beat, is a raise for nothing
    (and `watch` said it had fallen behind). So the time stopped does not count: staleness
    counts from the later of its last beat and when it was first seen running again."""

    def __init__(self):
        self.running_since: float | None = None  # when seen running after a stop

    def age(self, beat_age: float, stopped: bool, now: float) -> float:
        if stopped:
            self.running_since = None
            return 0.0
        if self.running_since is None:
            self.running_since = now
        return min(beat_age, now - self.running_since)


def _stopped(pid: int) -> bool:
    """Whether `pid` is stopped (state T, or t under a tracer); False if it is gone."""
    try:
        return procfs.status(pid).state in ("T", "t")
    except CkptError:
        return False


def guard(heartbeat: Heartbeat, pid: int, stale: float) -> None:
    """Watch `pid`'s heartbeat until `pid` is gone."""
    staleness = Staleness()
    while os.getppid() == pid:
        time.sleep(GUARD_SECONDS)
        if staleness.age(heartbeat.age(), _stopped(pid), time.monotonic()) <= stale:
            continue
        try:
            # threads already at normal priority are busy, not starved: left alone
            raised = set_threads_policy(pid, os.SCHED_OTHER, only=os.SCHED_IDLE)
        except FileNotFoundError:
            return  # the controller is gone
        if raised:
            heartbeat.count_raise()


def main(argv: list[str]) -> int:
    fd, pid, stale, ready = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the controller's to handle
    if os.getppid() != pid:
        return 0  # the controller went away before the death signal was armed
    heartbeat = Heartbeat(fd)
    os.write(ready, b"1")
    os.close(ready)
    guard(heartbeat, pid, stale)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
