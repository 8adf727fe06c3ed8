"""Credentials and signal state of restored tasks.

Signal handlers are installed from inside the new process (raw rt_sigaction: a handler address is
just a number there, its code arrives with the memory later). Credentials are applied by the
controller once every thread exists (the injected clone3(set_tid) of threads needs the task's
root capabilities), masks and pending signals at the very end (pending ones queued by each
task to itself, so that they keep their sender).
"""

from __future__ import annotations

import ctypes
import os
import struct

from ..image.records import NSIG, SIGINFO_SIZE, siginfo_plain, siginfo_signo, siginfo_timer
from ..kernel.prctl import PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAPBSET_DROP, PR_SET_DUMPABLE, PR_SET_SECUREBITS
from ..kernel.ptrace import Injector, Tracee
from ..kernel.sys import libc
from .memory import check
from ..kernel.sysno import (SYS_capset, SYS_prctl, SYS_rt_sigaction, SYS_rt_sigqueueinfo,
                            SYS_rt_tgsigqueueinfo, SYS_setgroups, SYS_setresgid, SYS_setresuid)

SIGRTMIN = 32  # the kernel's: every signal from here on queues one instance per send
SECBIT_KEEP_CAPS, SECBIT_KEEP_CAPS_LOCKED = 0x10, 0x20
SECBIT_NO_CAP_AMBIENT_RAISE_BITS = 0xC0  # the bit and its lock
# <linux/securebits.h> SECURE_ALL_BITS | SECURE_ALL_LOCKS: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and
# NO_CAP_AMBIENT_RAISE with their locks; Linux 6.14 added EXEC_RESTRICT_FILE and
# EXEC_DENY_INTERACTIVE (bits 8 and 10) and theirs. PR_SET_SECUREBITS refuses any other bit (EPERM).
SECUREBITS_KNOWN, SECUREBITS_KNOWN_6_14 = 0xFF, 0xFFF


def securebits_known(release: str | None = None) -> int:
    """The securebits the kernel of `release` (uname -r; this one by default) lets a task have."""
    release = os.uname().release if release is None else release
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return SECUREBITS_KNOWN
    return SECUREBITS_KNOWN_6_14 if version >= (6, 14) else SECUREBITS_KNOWN


def early_securebits(target: int) -> int:
    """The securebits a thread gets before its ids change, while it still has CAP_SETPCAP: the
    image's, with KEEP_CAPS (the capabilities must survive the uid change), but not yet what would
    stop the ambient raises that follow (NO_CAP_AMBIENT_RAISE) or lock KEEP_CAPS off. The rest is
    set after the ids changed, with the capabilities KEEP_CAPS kept (CAP_SETPCAP among them)."""
    early = (target | SECBIT_KEEP_CAPS) & ~SECBIT_NO_CAP_AMBIENT_RAISE_BITS
    if not target & SECBIT_KEEP_CAPS:
        early &= ~SECBIT_KEEP_CAPS_LOCKED
    return early
CAP_LAST = 63  # bits the image can name; the kernel's last is lower and unknown ones are skipped
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_HEADER = struct.Struct("<Ii")  # struct __user_cap_header_struct: version, pid (0: self)
CAP_DATA = struct.Struct("<III")  # struct __user_cap_data_struct: effective, permitted, inheritable
SIGKILL, SIGSTOP = 9, 19


class _KSigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("restorer", ctypes.c_uint64), ("mask", ctypes.c_uint64)]


def install_sigactions(entries: list[dict]) -> None:
    """Install the image's kernel sigactions (entry i is signal i+1) in the calling process."""
    for i, e in enumerate(entries):
        sig = i + 1
        if sig in (SIGKILL, SIGSTOP):
            continue
        act = _KSigaction(e["handler"], e["flags"], e["restorer"], e["mask"])
        ctypes.set_errno(0)
        if libc.syscall(ctypes.c_long(SYS_rt_sigaction), ctypes.c_long(sig), ctypes.byref(act),
                        ctypes.c_void_p(0), ctypes.c_long(8)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"rt_sigaction({sig}): {os.strerror(err)}")


ID_FIELDS = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")


def creds_problems(t, release: str | None = None) -> list[str]:
    """Ids no process can have: (u32)-1 is "leave it unchanged" to setresuid, setresgid and
    setgroups' callers, so an image holding it would come back with the restorer's (root's) id.
    And securebits the kernel (of `release`, this one by default) does not know: apply_creds'
    PR_SET_SECUREBITS would fail with a bare EPERM after every process exists."""
    bad = [k for k in ID_FIELDS if t.creds and t.creds[k] == 0xFFFFFFFF]
    bad += ["a supplementary group" for g in t.groups if g == 0xFFFFFFFF][:1]
    who = "process" if t.tid == t.tgid else "thread"
    out = [f"{who} {t.tid}'s credentials hold -1 as {', '.join(bad)}: not an id"] if bad else []
    bits, known = (t.creds or {}).get("securebits", 0), securebits_known(release)
    if bits & ~known:
        out.append(f"{who} {t.tid}'s securebits {bits:#x} hold bits this kernel does not know "
                   f"({bits & ~known:#x}; it knows {known:#x})")
    return out


def apply_creds(inj: Injector, creds: dict, groups: list[int]) -> None:
    """The image's credentials inside one thread: ids, groups, and capability sets.

    A container's root usually runs with capabilities dropped: without this a restored one
    would get all of the controller's back. Order: keep capabilities across the uid change
    (SECBIT_KEEP_CAPS, with as many of the image's securebits as can be set this early: each
    change needs CAP_SETPCAP, which the image's sets may not have), set the inheritable set and
    shrink the bounding set while CAP_SETPCAP is still ours, change ids (which clears the
    effective set), make every permitted capability the uid change kept effective for a moment to
    raise the ambient ones and then set the image's securebits exactly, then capset the final
    permitted and effective sets. Capabilities the controller itself lacks (this host's root has
    no CAP_SYS_RESOURCE) cannot be given: every set is clamped to what the thread has.
    """
    tid = inj.t.tid
    ours = _capget(inj)
    prm = creds["cap_prm"] & ours["prm"]
    # With no permitted capability to keep (a thread dropped to nobody), the uid change may clear
    # them all: the image's securebits are set whole at once, while CAP_SETPCAP is still ours,
    # and KEEP_CAPS is not left on where the image had it off.
    early = early_securebits(creds["securebits"]) if prm else creds["securebits"]
    check(inj.syscall(SYS_prctl, PR_SET_SECUREBITS, early), f"prctl(PR_SET_SECUREBITS) in {tid}")
    # The inheritable set first, while CAP_SETPCAP is effective: capset then takes any subset of
    # the old inheritable and bounding sets; without it, of the old inheritable and permitted
    # sets only, which lost an inheritable capability the image had outside its permitted set
    # (setpriv --inh-caps) and one outside its bounding set. Later capsets keep it as it is.
    inh = creds["cap_inh"] & (ours["inh"] | ours["bnd"])
    if inh != ours["inh"]:
        _capset(inj, ours["eff"], ours["prm"], inh)
    for cap in range(CAP_LAST + 1):
        if not creds["cap_bnd"] >> cap & 1 and ours["bnd"] >> cap & 1:
            check(inj.syscall(SYS_prctl, PR_CAPBSET_DROP, cap), f"prctl(PR_CAPBSET_DROP, {cap}) in {tid}")
    if (creds["uid"], creds["euid"], creds["suid"], creds["gid"], creds["egid"], creds["sgid"]) != \
            (os.getuid(), os.geteuid(), os.getuid(), os.getgid(), os.getegid(), os.getgid()) \
            or sorted(groups) != sorted(os.getgroups()):
        with inj.scratch(4 * max(1, len(groups))) as (addr, mem):
            mem.seek(addr)
            mem.write(struct.pack(f"<{len(groups)}I", *groups))
            check(inj.syscall(SYS_setgroups, len(groups), addr), f"setgroups in {tid}")
        check(inj.syscall(SYS_setresgid, creds["gid"], creds["egid"], creds["sgid"]), f"setresgid in {tid}")
        check(inj.syscall(SYS_setresuid, creds["uid"], creds["euid"], creds["suid"]), f"setresuid in {tid}")
    # What the uid change left: all of the controller's permitted set when `early` kept it
    # (KEEP_CAPS), CAP_SETPCAP included, which the rest of the securebits need even where the
    # image's own permitted set lacks it; nothing for a thread with no permitted capability, whose
    # securebits are all set already.
    kept = _capget(inj)["prm"]
    _capset(inj, kept, kept, inh)
    # The ambient raises before the securebits: the image's may hold NO_CAP_AMBIENT_RAISE, set
    # after its ambient capabilities were raised, which refuses them.
    for cap in range(CAP_LAST + 1):
        if creds["cap_amb"] >> cap & 1 and prm >> cap & inh >> cap & 1:
            check(inj.syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
                   f"prctl(PR_CAP_AMBIENT_RAISE, {cap}) in {tid}")
    if creds["securebits"] != early:
        check(inj.syscall(SYS_prctl, PR_SET_SECUREBITS, creds["securebits"]), f"prctl(PR_SET_SECUREBITS) in {tid}")
    _capset(inj, creds["cap_eff"] & prm, prm, inh)  # (ambient capabilities stay: all in prm and inh)


def _capget(inj: Injector) -> dict[str, int]:
    """The thread's own sets, as /proc/TID/status shows them (no injection needed)."""
    from ..kernel import procfs

    st = procfs.status(inj.t.tid)  # (its Name may be any bytes: procfs decodes them safely)
    return {key[3:].lower(): st.hex(key) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def _capset(inj: Injector, eff: int, prm: int, inh: int) -> None:
    with inj.scratch(CAP_HEADER.size + 2 * CAP_DATA.size) as (addr, mem):
        mem.seek(addr)
        mem.write(CAP_HEADER.pack(LINUX_CAPABILITY_VERSION_3, 0))
        for half in (0, 32):
            mem.write(CAP_DATA.pack(eff >> half & 0xFFFFFFFF, prm >> half & 0xFFFFFFFF, inh >> half & 0xFFFFFFFF))
        check(inj.syscall(SYS_capset, addr, addr + CAP_HEADER.size), f"capset in {inj.t.tid}")


def set_dumpable(inj: Injector, dumpable: int) -> None:
    """PR_SET_DUMPABLE after the credentials: a uid change resets it (commit_creds). Only 0 and 1
    can be set; 2 (suid_dumpable's "root only") stays what the kernel gives."""
    if dumpable in (0, 1):
        check(inj.syscall(SYS_prctl, PR_SET_DUMPABLE, dumpable), f"prctl(PR_SET_DUMPABLE) in {inj.t.tid}")


def raise_pending(inj: Injector, tgid: int, tid: int, blocked: int, thread_pending: int,
                  shared_pending: int | None, thread_info: list[bytes] = (), shared_info: list[bytes] = (),
                  timers: set[int] = frozenset()) -> None:
    """Queue thread `tid`'s pending signals again (and, `shared_pending` not None, its process's:
    then `tid` is the leader), in their order, each with the very siginfo the image holds.

    The task queues them to itself, by injected rt_tgsigqueueinfo/rt_sigqueueinfo: the kernel
    takes any siginfo a thread sends its own tid (SI_USER, SI_TKILL, the kernel's own SIGCHLD
    CLD_EXITED...; from anyone else only si_code < 0 but SI_TKILL), and keeps its si_pid since
    the sender is in the target's pid namespace. Sent from the controller, in an ancestor
    namespace, every one came with si_pid 0. Standard signals hold one instance, RT signals
    each queued one; a pending bit without a queue entry (the kernel was out of queue space)
    is queued with what dequeuing it gave: SI_USER, no sender. `tgid`, `tid`: the image's
    (in-namespace) ids; `blocked`: the thread's mask, already set (set_mask). An entry a POSIX
    timer of `timers` queued (SI_TIMER, its si_timerid) is left out: that timer makes its own
    signal pending again (restorer/timers.py fire_pending), and a copy would be a second one."""
    sends: list[tuple[bytes, bool]] = []
    for pending, queue, shared in ((thread_pending, thread_info, False), (shared_pending, shared_info, True)):
        if pending is None:
            continue
        raised: set[int] = set()
        for info in queue:
            signo = siginfo_signo(info)
            if not 0 < signo <= NSIG or not pending >> (signo - 1) & 1 or signo in (SIGKILL, SIGSTOP):
                continue
            if siginfo_timer(info) in timers:
                raised.add(signo)  # (its timer's own: not one without a queue entry either)
                continue
            if signo >= SIGRTMIN or signo not in raised:
                sends.append((info, shared))
            raised.add(signo)
        for sig in range(1, NSIG + 1):  # pending without a queue entry (none expected)
            if pending >> (sig - 1) & 1 and sig not in raised and sig not in (SIGKILL, SIGSTOP):
                sends.append((siginfo_plain(sig), shared))
    if not sends:
        return
    # Each injected call is reached by a return to user mode: a signal the thread does not block
    # would be taken there, in a signal-delivery-stop where the injector could only keep its number
    # (its siginfo lost, and the calls after it disturbed). Such a signal (pending yet unblocked:
    # sent to a stopped process, or caught on its way) stays blocked while the queue is built;
    # the image's mask is set again after, and the thread takes it as soon as it is let go,
    # siginfo and all (a thread resumed from a ptrace stop looks for its pending signals; the
    # PTRACE_SETSIGMASK itself wakes nothing). No call may be injected into this thread after.
    unblocked = sum(1 << (sig - 1) for sig in {siginfo_signo(info) for info, _ in sends}) & ~blocked
    if unblocked:
        set_mask(inj.t, blocked | unblocked)
    with inj.scratch(SIGINFO_SIZE) as (addr, mem):
        for info, shared in sends:
            signo = siginfo_signo(info)
            mem.seek(addr)
            mem.write(info)
            if shared:
                ret = inj.syscall(SYS_rt_sigqueueinfo, tgid, signo, addr)
            else:
                ret = inj.syscall(SYS_rt_tgsigqueueinfo, tgid, tid, signo, addr)
            check(ret, f"rt_{'' if shared else 'tg'}sigqueueinfo({signo}) in {tid}")
    if unblocked:
        set_mask(inj.t, blocked)


def set_mask(t: Tracee, blocked: int) -> None:
    t.set_sigmask(blocked & ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1))))
