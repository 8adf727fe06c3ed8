"""Timers back in each restored process, by injected calls, as the last thing before the tasks
run (the time left when dumped is the time left when let go): setitimer(2) for the interval
timers (TASK_ITIMERS), and for POSIX timers (TASK_POSIX_TIMERS) timer_create under the old id
(PR_TIMER_CREATE_RESTORE_IDS) then timer_settime.

setitimer adds one scheduler tick to the time left it is given for ITIMER_VIRTUAL and
ITIMER_PROF (set_cpu_itimer adds TICK_NSEC: CPU time is accounted by ticks, so that the timer
never fires early), not to their interval nor to ITIMER_REAL, and getitimer shows that tick: set
as dumped, the value would grow by a tick per generation. The tick is taken off before setting;
it is measured on the controller itself (cpu_itimer_tick), as HZ is not visible to user space."""

from __future__ import annotations

import functools
import signal
import struct
import time

from ..errors import HostUnsupported
from ..image.records import siginfo_timer
from ..kernel.prctl import PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON
from ..kernel.ptrace import Injector
from ..objects.timers import ITIMERS, ITIMERSPEC, ITIMERVAL
from .memory import check
from ..kernel.sysno import SYS_clock_gettime, SYS_prctl, SYS_setitimer, SYS_timer_create, SYS_timer_settime

SIGEVENT = struct.Struct("<Qiii44x")  # struct sigevent (64 bytes): value, signo, notify, _tid
NS = 1_000_000_000
TIMER_ABSTIME = 1
PENDING_WAIT_S = 1.0  # for a timer armed in the past to queue its signal (microseconds, usually)


def pending_timers(timers: list[dict], queues) -> set[int]:
    """The ids of the process's timers (recreated by apply_posix) whose own signal the image has
    pending: an SI_TIMER entry naming them in one of `queues` (lists of siginfo)."""
    ids = {t["id"] for t in timers}
    return {tid for queue in queues for info in queue if (tid := siginfo_timer(info)) in ids}


def timerfd_abs_rearm(deadline: int, interval: int, ticks: int, now: int) -> tuple[int | None, int]:
    """A realtime TFD_TIMER_ABSTIME timerfd due at `deadline` (ns since the epoch) with `ticks`
    unread expirations, restored at `now`: (the date to arm it at with TFD_TIMER_ABSTIME, None
    for none; the ticks to set). A date still ahead is kept. One already past with no unread
    expirations is kept too: the kernel fires it at once and its next read counts every period
    since (hrtimer_forward_now). One past with unread expirations is counted here instead, since
    TFD_IOC_SET_TICKS replaces the count and would drop the expiration the kernel counts between
    timerfd_settime and the ioctl: the expirations due by `now` are added to `ticks`, and the
    timer armed at its first date after `now` (periodic) or left disarmed (one-shot, fired)."""
    if deadline > now or not ticks:
        return deadline, ticks
    if not interval:
        return None, ticks + 1
    n = 1 + (now - deadline) // interval
    return deadline + n * interval, ticks + n


@functools.cache
def cpu_itimer_tick() -> int:
    """The µs setitimer adds to a CPU-time interval timer's value on this kernel (one tick:
    4000 at HZ=250; 0 should a kernel stop adding it), measured once on the controller: its own
    ITIMER_VIRTUAL set to a value far off and read back, then put back as it was (disarmed: the
    controller arms none). The CPU time the controller spends in between can only lower what is
    read back (by a tick, when one lands there), so the largest excess of a few tries is the tick."""
    probe = 1000  # s: never reached meanwhile
    old = signal.getitimer(signal.ITIMER_VIRTUAL)
    excess = 0
    try:
        for _ in range(3):
            signal.setitimer(signal.ITIMER_VIRTUAL, probe)
            excess = max(excess, round(signal.getitimer(signal.ITIMER_VIRTUAL)[0] * 1_000_000) - probe * 1_000_000)
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, *old)
    return excess


def apply(inj: Injector, itimers: dict | None, alarm_pending: bool = False) -> None:
    """setitimer of the three timers as dumped. `alarm_pending`: the image has SIGALRM pending
    for the process.

    A periodic ITIMER_REAL that has fired and whose SIGALRM is still pending (blocked, or the
    process frozen before taking it) shows no time left: the kernel arms it again only when that
    SIGALRM is dequeued (dequeue_signal forwards it by its interval). Set with a value of 0 it
    would be disarmed and stop ticking after the pending signal; it is armed for one interval
    instead, and the pending SIGALRM, queued again, then leaves it as it is (it is queued). A
    value of 0 with an interval and no SIGALRM pending is a timer that died firing into an
    ignored SIGALRM: left disarmed, as it was."""
    if not itimers:
        return
    for which, name in enumerate(ITIMERS):
        value, interval = itimers[f"{name}_value"], itimers[f"{name}_interval"]
        if not value and which == signal.ITIMER_REAL and interval and alarm_pending:
            value = interval
        if not value:
            continue  # disarmed (an interval alone means nothing without a value)
        if which != signal.ITIMER_REAL:
            # less the tick setitimer adds (module docstring), but never 0, which would disarm it:
            # 1 µs for a value within a tick (getitimer shows a tick for one about to fire)
            value = max(1, value - cpu_itimer_tick())
        with inj.scratch(ITIMERVAL.size) as (addr, mem):
            mem.seek(addr)
            mem.write(ITIMERVAL.pack(interval // 1_000_000, interval % 1_000_000, value // 1_000_000, value % 1_000_000))
            check(inj.syscall(SYS_setitimer, which, addr, 0), f"setitimer({name}) in {inj.t.tid}")


def apply_posix(inj: Injector, pid: int, timers: list[dict], pending: set[int] = frozenset()) -> None:
    """timer_create each of the process's timers under its id, and arm it with what it had left;
    those in `pending` (their signal pending in the image) are left disarmed here: fire_pending
    arms them once the pending signals are queued."""
    if not timers:
        return
    ret = inj.syscall(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0)
    if -4096 < ret < 0:
        raise HostUnsupported(f"pid {pid} has POSIX timers, and this kernel cannot create a timer "
                              "under a given id (no PR_TIMER_CREATE_RESTORE_IDS)")
    try:
        with inj.scratch(SIGEVENT.size + 8 + ITIMERSPEC.size) as (addr, mem):
            id_addr, spec_addr = addr + SIGEVENT.size, addr + SIGEVENT.size + 8
            for t in timers:
                mem.seek(addr)
                mem.write(SIGEVENT.pack(t["sival"], t["signo"], t["notify"], t["target"]))
                mem.write(struct.pack("<i4x", t["id"]))
                mem.write(ITIMERSPEC.pack(t["interval"] // NS, t["interval"] % NS, t["value"] // NS, t["value"] % NS))
                check(inj.syscall(SYS_timer_create, t["clock"], addr, id_addr), f"timer_create(id {t['id']}) in {pid}")
                if t["value"] and t["id"] not in pending:
                    check(inj.syscall(SYS_timer_settime, t["id"], 0, spec_addr, 0), f"timer_settime({t['id']}) in {pid}")
    finally:
        inj.syscall(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0)


def fire_pending(inj: Injector, pid: int, timers: list[dict], peek) -> None:
    """Make each timer of `timers` (created by apply_posix, its signal pending in the image) pend
    its own signal, as the kernel had it, and leave it with its time left and interval.

    The image's SI_TIMER entry is not queued again (creds.raise_pending skips it): an ordinary
    queued copy beside the re-armed timer's own signal was two deliveries where the kernel had
    one (a periodic timer whose signal is pending is not re-armed until it is delivered, which
    then counts the overrun). Instead the timer is armed TIMER_ABSTIME at a date already past,
    on its own clock as the task reads it (injected clock_gettime: a CPU-time clock is the
    restored task's): it fires at once and its signal is pending, and being periodic it is
    re-armed when that signal is delivered, from that date on by its interval, so that its next
    expiry is the image's time left from now (date = now + left - interval). `peek(timer)`: the
    queue its signal goes to (PTRACE_PEEKSIGINFO), watched until the entry is there. The thread's
    mask must block the signal meanwhile (the caller blocks everything)."""
    with inj.scratch(ITIMERSPEC.size) as (addr, mem):
        for t in timers:
            check(inj.syscall(SYS_clock_gettime, t["clock"], addr), f"clock_gettime({t['clock']}) in {pid}")
            mem.seek(addr)
            sec, nsec = struct.unpack("<qq", mem.read(16))
            date = max(1, sec * NS + nsec + t["value"] - t["interval"])  # (0 would disarm it)
            mem.seek(addr)
            mem.write(ITIMERSPEC.pack(t["interval"] // NS, t["interval"] % NS, date // NS, date % NS))
            check(inj.syscall(SYS_timer_settime, t["id"], TIMER_ABSTIME, addr, 0), f"timer_settime({t['id']}) in {pid}")
            # Bounded: a standard signal already pending in that queue takes no second entry.
            deadline = time.monotonic() + PENDING_WAIT_S
            while not any(siginfo_timer(info) == t["id"] for info in peek(t)) and time.monotonic() < deadline:
                time.sleep(0.0005)
