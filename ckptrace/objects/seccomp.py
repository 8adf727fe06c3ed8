"""Seccomp: a thread's mode, no_new_privs and filter chain (TASK_SECCOMP, TASK_SECCOMP_FILTER).

Containers usually run under a seccomp filter and with no_new_privs; a restore that dropped them
would quietly hand the workload back every system call. Filters are read as installed (classic
BPF) with PTRACE_SECCOMP_GET_FILTER. The dumper holds every task with PTRACE_O_SUSPEND_SECCOMP so
its injected calls never meet the filters (one that kills on prctl would otherwise kill the task
being checkpointed). Strict mode (only read/write/exit/sigreturn) cannot be restored by injecting
calls, and is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import Unsupported
from ..image.records import RecType
from ..kernel import procfs
from .context import DumpContext

if TYPE_CHECKING:
    from .task import ProcState, ThreadState

MODE_STRICT, MODE_FILTER = 1, 2


def mode_of(st: procfs.Status) -> tuple[int, int]:
    """(seccomp mode, no_new_privs) from /proc/PID/task/TID/status."""
    return int(st.raw.get("Seccomp", "0")), int(st.raw.get("NoNewPrivs", "0"))


def check_thread(p: "ProcState", t: "ThreadState", proc: str) -> None:
    """Refuse, before anything is injected or written, what cannot be restored or dumped safely."""
    st = procfs.status(p.hostpid, t.hosttid, proc)
    mode, _ = mode_of(st)
    where = f"pid {p.nspid} (thread {st.nspid[-1] if st.nspid else '?'} inside the namespace, host tid {t.hosttid})"
    if mode == MODE_STRICT:
        raise Unsupported(f"{where} runs in seccomp strict mode: it may only read, write and exit, "
                          "so it can be neither inspected nor restored by injected system calls")
    if mode == MODE_FILTER and not t.tracee.seccomp_suspended:
        raise Unsupported(f"{where} has seccomp filters and this kernel would not suspend them for "
                          "ptrace (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN and "
                          "CONFIG_CHECKPOINT_RESTORE): injected calls could trip them")


def collect(t: "ThreadState", st: procfs.Status) -> None:
    t.seccomp_mode, t.no_new_privs = mode_of(st)
    if t.seccomp_mode == MODE_FILTER:
        t.seccomp_filters = t.tracee.get_seccomp_filters()


def write(ctx: DumpContext, t: "ThreadState") -> None:
    """Nothing for a thread with neither a mode nor no_new_privs (the usual case outside containers)."""
    if not t.seccomp_mode and not t.no_new_privs:
        return
    ctx.w.record(RecType.TASK_SECCOMP, dict(mode=t.seccomp_mode, no_new_privs=t.no_new_privs,
                                            nfilters=len(t.seccomp_filters)))
    for flags, insns in t.seccomp_filters:
        ctx.w.record(RecType.TASK_SECCOMP_FILTER, dict(flags=flags, ninsns=len(insns) // 8), payload=insns)
