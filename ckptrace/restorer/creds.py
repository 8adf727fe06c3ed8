"""Credentials and signal state of restored tasks.

Signal handlers are installed from inside the new process (raw rt_sigaction: a handler address is
just a number there, its code arrives with the memory later). Masks, pending signals and
credentials are applied by the controller at the end, credentials last of all because the
injected clone3(set_tid) of threads needs the task's root capabilities.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from ..kernel.ptrace import Injector, Tracee
from ..kernel.sys import libc
from .memory import check

SYS_rt_sigaction = 13
SYS_setgroups = 116
SYS_setresuid = 117
SYS_setresgid = 119
SYS_tgkill = 234
SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo = 129, 297
SI_TKILL = -6
SIGRTMIN = 32  # the kernel's: every signal from here on queues one instance per send
SYS_prctl = 157
SYS_capset = 126
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 24, 28, 47, 2
SECBIT_KEEP_CAPS, SECBIT_KEEP_CAPS_LOCKED = 0x10, 0x20
SECBIT_NO_CAP_AMBIENT_RAISE_BITS = 0xC0  # the bit and its lock


def early_securebits(target: int) -> int:
    """The securebits a thread gets before its ids change, while it still has CAP_SETPCAP: the
    image's, with KEEP_CAPS (the capabilities must survive the uid change), but not yet what would
    stop the ambient raises that follow (NO_CAP_AMBIENT_RAISE) or lock KEEP_CAPS off. Set here, a
    target the final permitted set could not set (no CAP_SETPCAP) needs no second call."""
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


def apply_creds(inj: Injector, creds: dict, groups: list[int]) -> None:
    """The image's credentials inside one thread: ids, groups, and capability sets.

    A container's root usually runs with capabilities dropped: without this a restored one
    would get all of the controller's back. Order: keep capabilities across the uid change
    (SECBIT_KEEP_CAPS, with as many of the image's securebits as can be set this early: each
    change needs CAP_SETPCAP, which the image's sets may not have), shrink the bounding set while
    CAP_SETPCAP is still ours, change ids (which clears the effective set), make the whole target
    permitted set effective for a moment to set the rest of the image's securebits if any and
    raise the ambient ones, then capset the final effective set. Capabilities the controller itself lacks (this host's root
    has no CAP_SYS_RESOURCE) cannot be given: every set is clamped to what the thread has.
    """
    tid = inj.t.tid
    ours = _capget(inj)
    early = early_securebits(creds["securebits"])
    check(inj.syscall(SYS_prctl, PR_SET_SECUREBITS, early), f"prctl(PR_SET_SECUREBITS) in {tid}")
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
    prm = creds["cap_prm"] & ours["prm"]
    inh = creds["cap_inh"] & (ours["inh"] | (prm & creds["cap_bnd"]))
    _capset(inj, prm, prm, inh)
    if creds["securebits"] != early:
        ret = inj.syscall(SYS_prctl, PR_SET_SECUREBITS, creds["securebits"])
        if -4096 < ret < 0 and not (-ret == errno.EPERM and creds["securebits"] == early & ~SECBIT_KEEP_CAPS):
            # EPERM clearing KEEP_CAPS alone: no CAP_SETPCAP left to do it with (docs/restore.md)
            check(ret, f"prctl(PR_SET_SECUREBITS) in {tid}")
    for cap in range(CAP_LAST + 1):
        if creds["cap_amb"] >> cap & 1 and prm >> cap & inh >> cap & 1:
            check(inj.syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
                   f"prctl(PR_CAP_AMBIENT_RAISE, {cap}) in {tid}")
    _capset(inj, creds["cap_eff"] & prm, prm, inh)


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


def raise_pending(host_tgid: int, host_tid: int, thread_pending: int, shared_pending: int | None,
                  thread_info: list[bytes] = (), shared_info: list[bytes] = ()) -> None:
    """Queue the image's pending signals again, in their order. A signal queued with a user
    siginfo (sigqueue, timers, mqueue, AIO: si_code < 0, not SI_TKILL) is queued again with the
    very same siginfo (its si_value and sender); the kernel lets nobody forge the others from
    outside, so those are raised again with tgkill/kill, one per queued instance (standard
    signals only ever hold one)."""
    for pending, queue, shared in ((thread_pending, thread_info, False), (shared_pending, shared_info, True)):
        if pending is None:
            continue
        raised: set[int] = set()
        for info in queue:
            signo, _err, code = struct.unpack_from("<iii", info)
            if not 0 < signo <= 64 or not pending >> (signo - 1) & 1 or signo in (SIGKILL, SIGSTOP):
                continue
            if code < 0 and code != SI_TKILL:
                _queue_info(host_tgid, host_tid, signo, info, shared)
            elif signo >= SIGRTMIN or signo not in raised:
                _raise(host_tgid, host_tid, signo, shared)
            raised.add(signo)
        for sig in range(1, 65):  # pending without a queue entry (none expected): by number
            if pending >> (sig - 1) & 1 and sig not in raised and sig not in (SIGKILL, SIGSTOP):
                _raise(host_tgid, host_tid, sig, shared)


def _raise(host_tgid: int, host_tid: int, sig: int, shared: bool) -> None:
    if shared:
        os.kill(host_tgid, sig)
        return
    check(-ctypes.get_errno() if libc.syscall(ctypes.c_long(SYS_tgkill), ctypes.c_long(host_tgid),
                                               ctypes.c_long(host_tid), ctypes.c_long(sig)) < 0 else 0,
           f"tgkill({host_tid}, {sig})")


def _queue_info(host_tgid: int, host_tid: int, sig: int, info: bytes, shared: bool) -> None:
    buf = ctypes.create_string_buffer(info, len(info))
    if shared:
        ret = libc.syscall(ctypes.c_long(SYS_rt_sigqueueinfo), ctypes.c_long(host_tgid), ctypes.c_long(sig), buf)
    else:
        ret = libc.syscall(ctypes.c_long(SYS_rt_tgsigqueueinfo), ctypes.c_long(host_tgid), ctypes.c_long(host_tid),
                           ctypes.c_long(sig), buf)
    check(-ctypes.get_errno() if ret < 0 else 0, f"rt_sigqueueinfo({host_tid if not shared else host_tgid}, {sig})")


def set_mask(t: Tracee, blocked: int) -> None:
    t.set_sigmask(blocked & ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1))))
