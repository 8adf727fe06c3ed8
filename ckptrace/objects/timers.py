"""Timers of each process: the interval timers ITIMER_REAL (alarm, setitimer), ITIMER_VIRTUAL and
ITIMER_PROF (TASK_ITIMERS, by injected getitimer: nothing in /proc shows them), and POSIX timers
(TASK_POSIX_TIMERS: /proc/PID/timers for id, clock and notification, injected timer_gettime for
what is left). A process whose timer vanished would wait for a signal that never comes; restore
recreates each POSIX timer under its old id (PR_TIMER_CREATE_RESTORE_IDS).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import Unsupported
from ..image.records import RecType
from ..kernel import procfs
from ..kernel.ptrace import Injector, checked
from .context import DumpContext
from ..kernel.sysno import SYS_getitimer, SYS_timer_gettime

if TYPE_CHECKING:
    from .task import ProcState

ITIMERS = ("real", "virtual", "prof")  # ITIMER_REAL 0, ITIMER_VIRTUAL 1, ITIMER_PROF 2
ITIMERVAL = struct.Struct("<qqqq")  # struct itimerval: it_interval {sec, usec}, it_value {sec, usec}
ITIMERSPEC = struct.Struct("<qqqq")  # struct itimerspec: it_interval {sec, nsec}, it_value {sec, nsec}


def collect(p: "ProcState", inj: Injector, ns_pid: dict[int, int], proc: str) -> None:
    _collect_itimers(p, inj)
    timers = procfs.posix_timers(p.hostpid, proc)
    with inj.scratch(ITIMERSPEC.size) as (addr, mem):
        for t in timers:
            checked(inj.syscall(SYS_timer_gettime, t["id"], addr), f"timer_gettime({t['id']}) in {p.hostpid}")
            mem.seek(addr)
            isec, insec, vsec, vnsec = ITIMERSPEC.unpack(mem.read(ITIMERSPEC.size))
            t["interval"], t["value"] = isec * 1_000_000_000 + insec, vsec * 1_000_000_000 + vnsec
            if t["target"] not in ns_pid:
                raise Unsupported(f"pid {p.nspid}: POSIX timer {t['id']} notifies task {t['target']}, "
                                  "which is not in the namespace")
            t["target"] = ns_pid[t["target"]]
    p.posix_timers = timers


def _collect_itimers(p: "ProcState", inj: Injector) -> None:
    """getitimer of the three timers, in µs: {"real_interval": .., "real_value": .., ...}."""
    values: dict[str, int] = {}
    with inj.scratch(ITIMERVAL.size) as (addr, mem):
        for which, name in enumerate(ITIMERS):
            checked(inj.syscall(SYS_getitimer, which, addr), f"getitimer({name}) in {p.hostpid}")
            mem.seek(addr)
            isec, iusec, vsec, vusec = ITIMERVAL.unpack(mem.read(ITIMERVAL.size))
            values[f"{name}_interval"] = isec * 1_000_000 + iusec
            values[f"{name}_value"] = vsec * 1_000_000 + vusec
    p.itimers = values


def write(ctx: DumpContext, p: "ProcState") -> None:
    ctx.w.record(RecType.TASK_ITIMERS, p.itimers)
    if p.posix_timers:
        ctx.w.record(RecType.TASK_POSIX_TIMERS, dict(ntimers=len(p.posix_timers)), p.posix_timers)
