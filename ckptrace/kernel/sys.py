"""Raw system calls ckptrace needs that the os module lacks, through ctypes.

Every wrapper raises from the ckptrace.errors hierarchy (never returns -1). Numbers are x86_64's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct

from ..errors import check_errno, from_oserror
from .sysno import (SYS_get_robust_list, SYS_ioprio_get, SYS_ioprio_set, SYS_openat2, SYS_pidfd_getfd,
                    SYS_pidfd_open, SYS_sched_getattr, SYS_sched_setattr)

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

IOPRIO_WHO_PROCESS = 1  # with a tid: that thread only
# struct sched_attr, first version (48 bytes): size, policy, flags, nice, priority, and the
# SCHED_DEADLINE runtime, deadline, period in ns
SCHED_ATTR = struct.Struct("<IIQiIQQQ")
SCHED_ATTR_FIELDS = ("policy", "flags", "nice", "priority", "runtime", "deadline", "period")
PIDFD_THREAD = os.O_EXCL
# ioctl on a pidfd: an fd of the time namespace its process's children enter (_IO(PIDFS_IOCTL_MAGIC
# 0xFF, 8), Linux 6.11)
PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE = 0xFF08


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


libc.process_vm_readv.restype = ctypes.c_ssize_t
libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong,
                                  ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.c_ulong]
libc.process_vm_writev.restype = ctypes.c_ssize_t
libc.process_vm_writev.argtypes = libc.process_vm_readv.argtypes


def syscall(nr: int, *args, what: str = "syscall") -> int:
    return check_errno(libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)), what)


# socket options Python's socket module lacks (asm-generic/socket.h)
SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_PEEK_OFF = 32, 33, 42
MQUEUE_MAGIC = 0x19800202
PROC_SUPER_MAGIC = 0x9FA0
TMPFS_MAGIC = 0x01021994  # shmem: /dev/shm (POSIX shared memory), and tmpfs mounts


_INT, _UINT = struct.Struct("<i"), struct.Struct("<I")


def ioctl_int(fd: int, req: int, *, unsigned: bool = False) -> int:
    """The int an ioctl that reads one into its argument gives for `fd` (FIONREAD, SIOCOUTQ,
    TIOCGPTN, TIOCGDEV...), as the kernel writes it (x86_64: little-endian). OSError as the
    ioctl raises it."""
    st = _UINT if unsigned else _INT
    return st.unpack(fcntl.ioctl(fd, req, bytes(st.size)))[0]


def int_arg(value: int) -> bytes:
    """An int ioctl argument passed by pointer (TIOCSPTLCK, TIOCPKT...), little-endian."""
    return _INT.pack(value)


def fs_type(path: str) -> int:
    """statfs(2)'s f_type (the filesystem's magic number) of what path names, magic links
    (/proc/PID/fd/N) followed."""
    buf = ctypes.create_string_buffer(120)  # struct statfs: f_type is its first field, a long
    check_errno(libc.statfs(os.fsencode(path), buf), f"statfs {path}")
    return struct.unpack_from("<q", buf.raw)[0]


AT_FDCWD = -100  # a *at call's dirfd for "relative to the working directory"
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10
OPEN_HOW = struct.Struct("<QQQ")  # struct open_how {u64 flags; u64 mode; u64 resolve}


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): an fd of `path` looked up from `dirfd` under `resolve`'s rules
    (RESOLVE_IN_ROOT: as if `dirfd` were the root). Unlike the other wrappers it raises
    OSError (with the path), as os.open does: it stands in for os.open where callers handle that."""
    how = ctypes.create_string_buffer(OPEN_HOW.pack(flags & 0xFFFFFFFFFFFFFFFF, mode, resolve))
    name = ctypes.create_string_buffer(os.fsencode(path))
    fd = libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_long(dirfd), name, how, ctypes.c_size_t(OPEN_HOW.size))
    if fd == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def pidfd_open(pid: int, flags: int = 0) -> int:
    return syscall(SYS_pidfd_open, pid, flags, what=f"pidfd_open({pid})")


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    return syscall(SYS_pidfd_getfd, pidfd, targetfd, 0, what=f"pidfd_getfd(fd {targetfd})")


def buffer_address(buf) -> int:
    """Address of a writable buffer (bytearray, mmap, ctypes array)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def vm_readv(pid: int, local_addr: int, ranges: list[tuple[int, int]]) -> int:
    """Read remote (addr, len) ranges back to back into local memory. Returns bytes read.

    Large iovecs keep this near memcpy speed (the kernel notes measure 9-10 GB/s); callers
    pass whole runs of present pages, never single pages.
    """
    total = sum(n for _, n in ranges)
    local = iovec(local_addr, total)
    done = 0
    i = 0
    # The kernel takes at most IOV_MAX (1024) remote iovecs per call.
    while i < len(ranges):
        batch = ranges[i:i + 1024]
        remote = (iovec * len(batch))(*[iovec(a, n) for a, n in batch])
        want = sum(n for _, n in batch)
        local = iovec(local_addr + done, want)
        got = check_errno(libc.process_vm_readv(pid, ctypes.byref(local), 1, remote, len(batch), 0),
                          f"process_vm_readv(pid {pid})")
        if got != want:
            return done + got
        done += got
        i += len(batch)
    return done


def vm_writev(pid: int, remote_addr: int, data) -> int:
    """Write `data` (bytes-like) into the target at remote_addr."""
    buf = (ctypes.c_char * len(data)).from_buffer_copy(data) if isinstance(data, bytes) else \
        (ctypes.c_char * len(data)).from_buffer(data)
    local = iovec(ctypes.addressof(buf), len(data))
    remote = iovec(remote_addr, len(data))
    return check_errno(libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0),
                       f"process_vm_writev(pid {pid}, {remote_addr:#x})")


def sched_getattr(tid: int) -> dict[str, int]:
    """A thread's scheduling policy and parameters (any thread: no injection needed)."""
    buf = ctypes.create_string_buffer(SCHED_ATTR.size)
    syscall(SYS_sched_getattr, tid, ctypes.addressof(buf), SCHED_ATTR.size, 0, what=f"sched_getattr({tid})")
    return dict(zip(SCHED_ATTR_FIELDS, SCHED_ATTR.unpack(buf.raw)[1:]))


def sched_setattr(tid: int, attr: dict[str, int]) -> None:
    buf = ctypes.create_string_buffer(SCHED_ATTR.pack(SCHED_ATTR.size, *(attr[k] for k in SCHED_ATTR_FIELDS)),
                                      SCHED_ATTR.size)
    syscall(SYS_sched_setattr, tid, ctypes.addressof(buf), 0, what=f"sched_setattr({tid})")


def get_robust_list(tid: int) -> tuple[int, int]:
    """(head, len) of a thread's robust futex list, from outside it (the pid is resolved in our
    pid namespace, so a host tid; needs PTRACE_MODE_READ access to the thread, which root and
    its tracer have). head is 0 when the thread never registered one."""
    head, size = ctypes.c_ulong(), ctypes.c_size_t()
    syscall(SYS_get_robust_list, tid, ctypes.addressof(head), ctypes.addressof(size),
            what=f"get_robust_list({tid})")
    return head.value, size.value


def ioprio_get(tid: int) -> int:
    """A thread's I/O priority (class << 13 | level), by host tid."""
    return syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid, what=f"ioprio_get({tid})")


def ioprio_set(tid: int, prio: int) -> None:
    syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, prio, what=f"ioprio_set({tid}, {prio:#x})")


def set_threads_policy(pid: int, policy: int, *, only: int | None = None) -> int:
    """Scheduling policy (os.SCHED_IDLE, os.SCHED_OTHER, ...) for every thread of process `pid`
    (0: this one), or only for those whose policy is now `only`: the policy is per thread, and
    threads started later inherit it from the one that starts them. Returns how many threads
    were set; FileNotFoundError when the process is gone."""
    changed = 0
    for tid in os.listdir(f"/proc/{pid or 'self'}/task"):
        try:
            if only is not None and os.sched_getscheduler(int(tid)) != only:
                continue
            os.sched_setscheduler(int(tid), policy, os.sched_param(0))
        except ProcessLookupError:
            continue  # a thread that just ended
        except OSError as exc:
            raise from_oserror(exc, f"setting scheduling policy {policy} of thread {tid}") from exc
        changed += 1
    return changed


def set_own_policy(policy: int) -> None:
    """`set_threads_policy` for every thread of this process."""
    set_threads_policy(0, policy)


def data_extents(fd: int, pos: int, end: int, align: int = 4096):
    """The parts of a file's contents in [pos, end) that hold data, as ascending, disjoint
    (start, stop) ranges widened to `align` boundaries and clipped to [pos, end): SEEK_DATA and
    SEEK_HOLE skip the holes (pages of a shmem file or memfd never written, or punched out).
    Moves `fd`'s offset: use a descriptor of our own. A file system that cannot tell (an
    lseek error other than ENXIO, "no data past pos") has all of [pos, end) as data."""
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                yield pos, end
            return
        if data >= end:
            return
        start = max(pos, data & ~(align - 1))
        stop = min(end, (hole + align - 1) & ~(align - 1))
        yield start, stop
        pos = stop
