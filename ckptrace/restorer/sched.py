"""Scheduling of each restored thread (policy, nice, real-time priority, CPU affinity, I/O
priority) and each process's oom_score_adj and core dump filter. All are set from the controller
by host tid/pid: none needs injection.

Affinity is narrowed to the CPUs the controller itself may use (the restored tasks live in its
cpuset): an image from a bigger machine keeps what still exists, and a thread whose CPUs are all
gone keeps the default. Lowering oom_score_adj below the controller's own needs CAP_SYS_RESOURCE;
without it the value stays the inherited one (as with hard rlimits, see docs/restore.md).
"""

from __future__ import annotations

import os

from ..errors import KernelError
from ..image.records import MMF_DUMP_FILTER_MASK, MMF_DUMP_FILTER_SHIFT, SCHED_POLICIES
from ..kernel import procfs
from ..kernel.sys import ioprio_get, ioprio_set, sched_setattr

FAIR_POLICIES = (os.SCHED_OTHER, os.SCHED_BATCH)


REALTIME_POLICIES = (os.SCHED_FIFO, os.SCHED_RR)
SCHED_DEADLINE, SCHED_EXT = 6, 7


def sched_problems(t) -> list[str]:
    """Scheduling the kernel would refuse with a bare EINVAL half-way through the restore, said
    beforehand with the thread and values."""
    s = t.sched
    if s is None:
        return []
    policy, prio, nice = s["policy"], s["priority"], s["nice"]
    if policy not in FAIR_POLICIES + REALTIME_POLICIES + (os.SCHED_IDLE, SCHED_DEADLINE, SCHED_EXT):
        return [f"thread {t.tid}'s scheduling policy {policy} is unknown"]
    if (policy in REALTIME_POLICIES) != (1 <= prio <= 99) or prio > 99:
        return [f"thread {t.tid}'s real-time priority {prio} does not go with policy "
                f"{SCHED_POLICIES.get(policy, policy)} (1-99 for SCHED_FIFO/SCHED_RR, else 0)"]
    if not -20 <= nice <= 19:
        return [f"thread {t.tid}'s nice {nice} is not in -20..19"]
    if policy == SCHED_EXT and not os.path.isdir("/sys/kernel/sched_ext"):
        return [f"thread {t.tid}'s scheduling policy SCHED_EXT is not in this kernel (no /sys/kernel/sched_ext)"]
    if policy == SCHED_DEADLINE and (why := _deadline_problem(s)):
        return [f"thread {t.tid}'s SCHED_DEADLINE {why}"]
    return []


DL_MIN_RUNTIME = 1 << 10  # ns: the kernel's DL_SCALE granularity, the least runtime it takes


def _deadline_problem(s) -> str:
    """Why sched_setattr would refuse `s`'s SCHED_DEADLINE parameters (kernel __checkparam_dl):
    runtime <= deadline <= period (0: the deadline), a runtime of at least 1024 ns, a period
    within this host's kernel.sched_deadline_period_{min,max}_us. ("" when it would take them;
    the bandwidth admission test is the kernel's alone, made when it is set.)"""
    runtime, deadline, period = s["runtime"], s["deadline"], s["period"] or s["deadline"]
    if not DL_MIN_RUNTIME <= runtime <= deadline <= period < 1 << 63:
        return (f"runtime {runtime}, deadline {deadline}, period {s['period']} (ns) are not "
                f"{DL_MIN_RUNTIME} <= runtime <= deadline <= period")
    lo, hi = (procfs.sysctl_int(f"kernel/sched_deadline_period_{w}_us") for w in ("min", "max"))
    if lo is None or hi is None:
        return ""
    lo, hi = lo * 1000, hi * 1000
    if not lo <= period <= hi:
        return f"period {period} ns is not within this host's {lo}..{hi} (kernel.sched_deadline_period_*_us)"
    return ""


def ioprio_problem(ioprio: int) -> str:
    """Why ioprio_set would refuse I/O priority `ioprio` (block/ioprio.c ioprio_check_cap): a
    16-bit value of class 0 (none, level 0), 1 (RT), 2 (BE) or 3 (IDLE). "" when it would not."""
    cls, level = ioprio >> 13, ioprio & 7
    if ioprio >> 16 or cls > 3 or (cls == 0 and level):
        return f"I/O priority {ioprio:#x} is not one the kernel takes (class 0-3 << 13 | level)"
    return ""


def mask_cpus(mask: bytes) -> set[int]:
    n = int.from_bytes(mask, "little")
    return {i for i in range(n.bit_length()) if n >> i & 1}


def apply(host_tid: int, task) -> None:
    if task.sched is None:
        return
    usable = mask_cpus(task.affinity) & os.sched_getaffinity(0)
    if usable:
        try:
            os.sched_setaffinity(host_tid, usable)
        except OSError as exc:
            raise KernelError(f"sched_setaffinity of thread {task.tid} to CPUs {sorted(usable)}", exc.errno) from None
    sched_setattr(host_tid, {k: v for k, v in task.sched.items() if k != "timer_slack"})
    if task.sched["policy"] not in FAIR_POLICIES:
        # sched_setattr takes the nice value for SCHED_OTHER and SCHED_BATCH only; the others
        # keep one too, shown in /proc and used again when the thread switches back
        try:
            os.setpriority(os.PRIO_PROCESS, host_tid, task.sched["nice"])
        except OSError as exc:
            raise KernelError(f"setpriority of thread {task.tid} to {task.sched['nice']}", exc.errno) from None
    if task.sched.get("timer_slack"):
        try:
            with open(f"/proc/{host_tid}/timerslack_ns", "w") as f:
                f.write(str(task.sched["timer_slack"]))
        except OSError as exc:
            raise KernelError(f"write timerslack_ns of thread {task.tid}", exc.errno) from None


def set_ioprio(host_tid: int, task) -> None:
    """The thread's I/O priority (THREAD.ioprio), unless it already has it (a fork or clone
    inherits the controller's; 0, no class set, is the default). Per thread, as CLONE_IO is
    never used by the restorer; threads the workload made with CLONE_IO share one value anyway."""
    want = task.thread["ioprio"]
    if ioprio_get(host_tid) != want:
        ioprio_set(host_tid, want)


def set_coredump_filter(host_pid: int, mm_flags: int) -> None:
    """The core dump filter MM.flags holds (0: an older image, which does not say: left as the
    restorer's fork gave it)."""
    if not mm_flags:
        return
    value = mm_flags >> MMF_DUMP_FILTER_SHIFT & MMF_DUMP_FILTER_MASK
    try:
        with open(f"/proc/{host_pid}/coredump_filter", "w") as f:
            f.write(f"{value:#x}")
    except OSError as exc:
        raise KernelError(f"write coredump_filter {value:#x} of {host_pid}", exc.errno) from None


def set_oom_score_adj(host_pid: int, value: int) -> None:
    try:
        with open(f"/proc/{host_pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except PermissionError:
        pass  # lowering it needs CAP_SYS_RESOURCE (module docstring)
    except OSError as exc:
        raise KernelError(f"write oom_score_adj {value} of {host_pid}", exc.errno) from None
