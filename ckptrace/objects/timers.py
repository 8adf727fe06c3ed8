"""Interval timers: ITIMER_REAL (alarm, setitimer), ITIMER_VIRTUAL and ITIMER_PROF of each process
(TASK_ITIMERS), read by injected getitimer(2): nothing in /proc shows them.

POSIX timers (timer_create) are refused: /proc/PID/timers names them, but recreating one under
its old id needs kernel help this tool does not use yet, and a process whose timer silently
vanished would wait for a signal that never comes.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import KernelError, Unsupported
from ..image.records import RecType
from ..kernel import procfs
from ..kernel.ptrace import Injector
from .context import DumpContext

if TYPE_CHECKING:
    from .task import ProcState

SYS_getitimer = 36
ITIMERS = ("real", "virtual", "prof")  # ITIMER_REAL 0, ITIMER_VIRTUAL 1, ITIMER_PROF 2
ITIMERVAL = struct.Struct("<qqqq")  # struct itimerval: it_interval {sec, usec}, it_value {sec, usec}


def check_process(p: "ProcState", proc: str) -> None:
    ids = procfs.posix_timer_ids(p.hostpid, proc)
    if ids:
        raise Unsupported(f"pid {p.nspid} (host pid {p.hostpid}) has {len(ids)} POSIX timer(s) "
                          f"(timer_create, ids {ids[:8]}), which ckptrace cannot checkpoint yet")


def collect(p: "ProcState", inj: Injector) -> None:
    """getitimer of the three timers, in µs: {"real_interval": .., "real_value": .., ...}."""
    values: dict[str, int] = {}
    with inj.scratch(ITIMERVAL.size) as (addr, mem):
        for which, name in enumerate(ITIMERS):
            ret = inj.syscall(SYS_getitimer, which, addr)
            if -4096 < ret < 0:
                raise KernelError(f"getitimer({name}) in {p.hostpid}", -ret)
            mem.seek(addr)
            isec, iusec, vsec, vusec = ITIMERVAL.unpack(mem.read(ITIMERVAL.size))
            values[f"{name}_interval"] = isec * 1_000_000 + iusec
            values[f"{name}_value"] = vsec * 1_000_000 + vusec
    p.itimers = values


def write(ctx: DumpContext, p: "ProcState") -> None:
    ctx.w.record(RecType.TASK_ITIMERS, p.itimers)
