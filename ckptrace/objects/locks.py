"""File locks (TASK_LOCKS): what each process holds, from the `lock:` lines of its fdinfo.

A lock shows under the open file it was taken through. POSIX locks belong to the process; flock
and OFD locks belong to the open file description, shared across fork and dup, so those are
stored once, with the first process met. Leases and delegations are refused: they involve the
kernel breaking them on others' opens, which a restore cannot replay.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import Unsupported
from ..image.records import LOCK_FLOCK, LOCK_OFD, LOCK_POSIX, RecType
from ..kernel import procfs
from .context import DumpContext
from .objhash import KCMP_FILE

if TYPE_CHECKING:
    from .task import ProcState

KINDS = {"POSIX": LOCK_POSIX, "FLOCK": LOCK_FLOCK, "OFDLCK": LOCK_OFD}


def _held(ctx: DumpContext, pid: int):
    for fd in procfs.fds(pid, ctx.proc):
        for kind, mode, start, end in procfs.fd_locks(procfs.fdinfo(pid, fd, ctx.proc)):
            yield fd, kind, mode, start, end


def collect(ctx: DumpContext, p: "ProcState") -> None:
    """Read the locks once, in the refusal phase (the tasks are frozen: they cannot change)."""
    p.held_locks = list(_held(ctx, p.hostpid))
    for fd, kind, *_ in p.held_locks:
        if kind not in KINDS:
            raise Unsupported(f"pid {p.nspid} (host pid {p.hostpid}) fd {fd} holds a {kind} "
                              "(file lease or delegation), which ckptrace cannot checkpoint")


def write(ctx: DumpContext, p: "ProcState") -> None:
    entries = []
    for fd, kind, mode, start, end in p.held_locks:
        length = 0 if end is None else end - start + 1
        typ = 1 if mode == "WRITE" else 0
        if KINDS[kind] != LOCK_POSIX:
            st = os.stat(f"{ctx.proc}/{p.hostpid}/fd/{fd}")
            key = (ctx.objhash.lookup_kcmp(KCMP_FILE, p.hostpid, fd, (st.st_dev, st.st_ino)), kind, typ, start, length)
            if key in ctx.locks_seen:
                continue
            ctx.locks_seen.add(key)
        entries.append(dict(kind=KINDS[kind], type=typ, fd=fd, start=start, length=length))
    ctx.w.record(RecType.TASK_LOCKS, dict(nlocks=len(entries)), entries)
