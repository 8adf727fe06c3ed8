"""Interval timers back in each restored process (TASK_ITIMERS), by injected setitimer(2), as the
last thing before the tasks run: the time left when dumped is the time left when let go."""

from __future__ import annotations

from ..kernel.ptrace import Injector
from ..objects.timers import ITIMERS, ITIMERVAL
from .memory import check

SYS_setitimer = 38


def apply(inj: Injector, itimers: dict | None) -> None:
    if not itimers:
        return
    for which, name in enumerate(ITIMERS):
        value, interval = itimers[f"{name}_value"], itimers[f"{name}_interval"]
        if not value:
            continue  # disarmed (an interval alone means nothing without a value)
        with inj.scratch(ITIMERVAL.size) as (addr, mem):
            mem.seek(addr)
            mem.write(ITIMERVAL.pack(interval // 1_000_000, interval % 1_000_000, value // 1_000_000, value % 1_000_000))
            check(inj.syscall(SYS_setitimer, which, addr, 0), f"setitimer({name}) in {inj.t.tid}")
