"""File tables and open files: FILE_TABLE, FILE_DESC and the FILE object of every kind.

This module classifies an fd by what the kernel shows for it (the /proc/PID/fd link and the
inode's mode) and writes regular files, directories, device nodes, deleted-but-open files and
memfds itself; pipes, sockets, ttys and the anon-inode kinds have their own modules. An fd kind
not listed in `classify` makes the dump refuse, naming pid, fd and kind.

Sharing: two fds (in one table, or in two processes after fork) that are one open file
description are one FILE object; kcmp(KCMP_FILE) decides, among fds with the same inode.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import struct
from dataclasses import dataclass

from ..errors import CkptError, Unsupported, from_oserror
from ..image.records import FMODE_READ, FMODE_WRITE, MEMFD_SEALS_KNOWN, FileType, ObjType, RecType
from ..kernel import procfs
from ..kernel.sys import MQUEUE_MAGIC, PROC_SUPER_MAGIC, TMPFS_MAGIC, data_extents, fs_type, pidfd_getfd, pidfd_open
from ..kernel.ttyio import PTS_MAJORS
from .context import DumpContext
from .objhash import KCMP_FILE, KCMP_FILES

O_ACCMODE = 0o3
TTY_MAJORS = {4, 5} | set(PTS_MAJORS)
DELETED = procfs.DELETED_SUFFIX
DATA_CHUNK = 4 << 20  # FILE_DATA records of 4 MiB keep the dumper small (MAX_BLOB is 64 MiB)
ANON_KINDS = {
    "anon_inode:[eventfd]": FileType.EVENTFD,
    "anon_inode:[eventpoll]": FileType.EPOLL,
    "anon_inode:[timerfd]": FileType.TIMERFD,
    "anon_inode:[signalfd]": FileType.SIGNALFD,
    "anon_inode:inotify": FileType.INOTIFY,
}


@dataclass
class OpenFd:
    pid: int
    fd: int
    target: str  # the /proc/PID/fd link
    st: os.stat_result
    info: procfs.FdInfo
    kind: FileType


_PROC_PID_PATH = re.compile(r"(^|/)proc/(\d+|self|thread-self)(/|$)")


def classify(pid: int, fd: int, target: str, st: os.stat_result, proc: str = "/proc") -> FileType:
    """The FileType for one fd, or Unsupported naming pid, fd and kind."""
    mode = st.st_mode
    if target.startswith("pipe:["):
        return FileType.PIPE
    if target.startswith("socket:["):
        return FileType.UNIX_SOCKET  # refined to INET by the socket module
    if target in ANON_KINDS:
        return ANON_KINDS[target]
    if target.startswith("/memfd:"):
        return FileType.MEMFD
    if target.startswith("/"):
        if stat.S_ISFIFO(mode):
            return FileType.FIFO
        if stat.S_ISCHR(mode) and os.major(st.st_rdev) in TTY_MAJORS:
            return FileType.TTY
        if stat.S_ISREG(mode) and fs_type(f"{proc}/{pid}/fd/{fd}") == MQUEUE_MAGIC:
            # it looks like a regular file named after the queue (deleted once mq_unlink'ed), but
            # no path reopens it
            name = target[:-len(DELETED)] if target.endswith(DELETED) else target
            raise Unsupported(f"pid {pid} fd {fd} is the POSIX message queue {name!r}, which ckptrace "
                              "cannot checkpoint")
        if _PROC_PID_PATH.search(target) and fs_type(f"{proc}/{pid}/fd/{fd}") == PROC_SUPER_MAGIC:
            # /proc/PID/... (or /proc/self/..., which the link shows resolved): reopened by that
            # path, it would be whichever process has that number in the restorer's view, the
            # host's pid 1 for a container's init, not the process it was
            raise Unsupported(f"pid {pid} fd {fd} is {target!r}, a file of one process in /proc: "
                              "its pid is not the same after a restore, and ckptrace cannot reopen it")
        if target.endswith(DELETED) and stat.S_ISREG(mode) and st.st_nlink == 0:
            return FileType.DELETED
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return FileType.REGULAR
    raise Unsupported(f"pid {pid} fd {fd} is a {target!r}, a kind of file ckptrace cannot checkpoint")


def open_fd(ctx: DumpContext, pid: int, fd: int) -> OpenFd:
    base = f"{ctx.proc}/{pid}/fd/{fd}"
    target = procfs.fd_target(pid, fd, ctx.proc)
    try:
        st = os.stat(base)
    except OSError as exc:
        raise from_oserror(exc, f"stat fd {fd} of {pid}") from None
    nameless = False
    if stat.S_ISREG(st.st_mode) and st.st_nlink and not target.startswith("/memfd:"):
        # named so, or opened by a name since removed while another remains (procfs.live_name):
        # reopened by that name; with none to be found, its contents go in the image (DELETED)
        target, nameless = procfs.settle_path(target, st)
    kind = classify(pid, fd, target, st, ctx.proc)
    if nameless and kind is FileType.REGULAR:
        kind = FileType.DELETED
    return OpenFd(pid, fd, target, st, procfs.fdinfo(pid, fd, ctx.proc), kind)


def check_fds(ctx: DumpContext, pid: int, nspid: int) -> None:
    """Refuse before anything is written: unknown kinds, deleted files with too much data to store."""
    for fd in procfs.fds(pid, ctx.proc):
        where = f"pid {nspid} (host pid {pid}) fd {fd}"
        try:
            o = open_fd(ctx, pid, fd)
        except Unsupported as exc:
            # named as every other refusal names an fd: the pid inside first
            said, host = str(exc), f"pid {pid} fd {fd}"
            raise Unsupported(where + said[len(host):] if said.startswith(host) else
                              f"{said} (pid {nspid} inside the namespace)") from None
        if o.kind in (FileType.DELETED, FileType.MEMFD):
            key = (o.st.st_dev, o.st.st_ino)
            if key not in ctx.data_fds:
                with open_contents(f"{ctx.proc}/{pid}/fd/{fd}", f"{where} ({o.target})") as cfd:
                    stored = stored_bytes(cfd, o.st.st_size)
                if stored > ctx.max_file_data:
                    raise Unsupported(f"{where}: {o.target} holds {stored} bytes of data (size {o.st.st_size}), "
                                      f"above --max-file-data {ctx.max_file_data}; raise the limit to dump it")
            ctx.data_fds.setdefault(key, []).append((pid, fd, file_mode(o.info.flags)))
        if o.kind is FileType.TTY:
            from . import tty

            tty.note_slave(ctx, pid, fd, o.st)
        if o.kind is FileType.UNIX_SOCKET:
            from . import socket as sock

            sock.check(ctx, pid, fd, int(o.target[len("socket:["):-1]), where)


def shared_file_mapping(m: procfs.Mapping) -> bool:
    """Whether `m` is a MAP_SHARED mapping of a file that has a name (mm.vma_type's
    SHARED_FILE): not a shared anonymous, SysV or memfd segment, nor a deleted file."""
    return m.shared and m.path.startswith("/") and not m.path.startswith(procfs.SHMEM_PREFIXES) and not m.deleted


def check_shared_tmpfs(ctx: DumpContext, p) -> None:
    """Note every regular file on tmpfs that process `p` (a task.ProcState, its maps read) maps
    MAP_SHARED (ctx.shared_tmpfs): POSIX shared memory (shm_open, /dev/shm) is process memory
    that merely has a name, not a file on disk. Its contents go in the image (FILE_DATA with the
    file's first FILE object), as the processes had them: a restore that mapped whatever the file
    holds then would mix the image's private memory with the shared memory of a later run (an
    earlier restore of the same image, say). Refused when they exceed --max-file-data."""
    for m in p.maps:
        if not shared_file_mapping(m):
            continue
        link = f"{ctx.proc}/{p.hostpid}/map_files/{m.start:x}-{m.end:x}"
        try:
            st = os.stat(link)
        except OSError:
            continue  # (own_file names it by path then, as any shared file mapping)
        key = (st.st_dev, st.st_ino)
        if key in ctx.shared_tmpfs:
            users = ctx.shared_tmpfs[key][1]
            if p.hostpid not in users:
                users.append(p.hostpid)
            continue
        if not stat.S_ISREG(st.st_mode) or fs_type(link) != TMPFS_MAGIC:
            continue
        where = f"{_where(ctx, p.hostpid)} mapping {m.start:x}-{m.end:x} ({m.path})"
        with open_contents(link, where) as cfd:
            stored = stored_bytes(cfd, st.st_size)
        if stored > ctx.max_file_data:
            raise Unsupported(f"{where}: {m.path} is shared memory on tmpfs, whose contents the image carries, "
                              f"and holds {stored} bytes of data (size {st.st_size}), above --max-file-data "
                              f"{ctx.max_file_data}; raise the limit to dump it")
        ctx.shared_tmpfs[key] = (m.path, [p.hostpid])


def write_tmpfs_contents(ctx: DumpContext, st: os.stat_result, path: str, what: str) -> None:
    """FILE_DATA of a REGULAR file object, when its file is shared memory on tmpfs
    (check_shared_tmpfs) whose contents no FILE object before carries: once per file. `path`
    opens the file itself (a /proc link)."""
    key = (st.st_dev, st.st_ino)
    if key not in ctx.shared_tmpfs or key in ctx.tmpfs_written:
        return
    ctx.tmpfs_written.add(key)
    with open_contents(path, what) as cfd:
        write_contents(ctx, cfd, what)


def shared_tmpfs_notes(ctx: DumpContext) -> list[str]:
    """One note per file of ctx.shared_tmpfs that a process outside the namespace holds open or
    mapped: its memory is that file too, which a restore overwrites with the dumped contents
    (and refuses to while such a process holds it). A scan of every fd and mapping on the host:
    made once the tasks run again."""
    notes = []
    inside = set(ctx.ns_pid) | {os.getpid()}
    held = procfs.file_holders({key: os.path.basename(path) for key, (path, _) in ctx.shared_tmpfs.items()}, ctx.proc)
    for key, (path, users) in ctx.shared_tmpfs.items():
        outside = [h for h in held[key] if h not in inside]
        if outside:
            named = [f"{h} ({procfs.comm(h, ctx.proc) or '?'})" for h in outside]
            mappers = ", ".join(_where(ctx, h) for h in users)
            notes.append(f"{path}, shared memory that {mappers} maps, is also held by host pid {', '.join(named)} "
                         "outside the namespace: its contents are shared with that process, and a restore puts "
                         "the dumped ones back (it refuses while a process outside the image holds the file)")
    return notes


@contextlib.contextmanager
def grab(pid: int, fd: int):
    """A duplicate of the target's open file description (pidfd_getfd), closed afterwards."""
    pidfd = pidfd_open(pid)
    try:
        dup = pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        yield dup
    finally:
        os.close(dup)


def file_mode(flags: int) -> int:
    if flags & os.O_PATH:
        return 0
    acc = flags & O_ACCMODE
    return (FMODE_READ if acc in (0, 2) else 0) | (FMODE_WRITE if acc in (1, 2) else 0)


def write_file_head(ctx: DumpContext, ref: int, kind: FileType, flags: int, pos: int, name: str | None,
                    version: int = 0) -> None:
    ctx.w.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=ref))
    flags &= ~os.O_CLOEXEC  # close-on-exec belongs to the fd (FILE_DESC), not the description
    ctx.w.record(RecType.FILE, dict(f_type=kind, f_mode=file_mode(flags), f_flags=flags, f_pos=pos,
                                    f_version=version))
    if name is not None:
        ctx.w.record(RecType.FILE_NAME, payload=name)
    ctx.stats.files += 1


def _where(ctx: DumpContext, pid: int) -> str:
    """A process as refusals name it: its pid inside the namespace, then the host's."""
    return f"pid {ctx.ns_pid.get(pid, '?')} (host pid {pid})"


def strip_deleted(path: str) -> str:
    return path[:-len(DELETED)] if path.endswith(DELETED) else path


@contextlib.contextmanager
def open_contents(path: str, what: str):
    """A read-only descriptor of our own for a deleted file or memfd, opened through a /proc link
    (works unlinked), closed afterwards."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc, f"open {what}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def stored_bytes(fd: int, size: int) -> int:
    """How many bytes of the file FILE_DATA stores: its data extents, not its holes."""
    return sum(stop - start for start, stop in data_extents(fd, 0, size))


def memfd_seals(fd: int) -> int:
    """FILE.f_version of a memfd: its F_GET_SEALS, marked as known (docs/format.md)."""
    try:
        return MEMFD_SEALS_KNOWN | fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise from_oserror(exc, "F_GET_SEALS of a memfd") from None


def segment_seals(ctx: DumpContext, pid: int, m: procfs.Mapping) -> int:
    """FILE.f_version of a SHMEM segment: for a memfd mapped MAP_SHARED whose fd is gone, its
    seals as a MEMFD's (`memfd_seals`), read through /proc/PID/map_files: seals belong to the
    inode, so any file of it answers. 0 for the others, which take no seal (the shmem file of a
    MAP_SHARED anonymous region or a SysV segment says F_SEAL_SEAL), and for a segment that
    cannot be opened (its pages then come from the process's page table, as in mm.py):
    restore makes those as it always did."""
    if not m.path.startswith("/memfd:"):
        return 0
    try:
        fd = os.open(f"{ctx.proc}/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return memfd_seals(fd)
    except CkptError:
        return 0  # (EINVAL: not a shmem file after all, whatever its name)
    finally:
        os.close(fd)


def write_contents(ctx: DumpContext, fd: int, what: str) -> None:
    """FILE_DATA records holding the contents of the file open as `fd` (our own descriptor): one
    per data extent (split at DATA_CHUNK), in increasing offset order; holes are left out. A file
    with no data at all gets one record with no payload, so its size is always carried."""
    size = os.fstat(fd).st_size
    extents = list(data_extents(fd, 0, size))
    stored = sum(stop - start for start, stop in extents)
    if stored > ctx.max_file_data:
        raise Unsupported(f"{what} holds {stored} bytes of data (size {size}), "
                          f"above --max-file-data {ctx.max_file_data}")
    written = False
    for off, stop in extents:
        while off < stop:
            chunk = os.pread(fd, min(DATA_CHUNK, stop - off), off)
            if not chunk:
                break
            ctx.w.record(RecType.FILE_DATA, dict(size=size, offset=off), payload=chunk)
            written = True
            off += len(chunk)
    if not written:
        ctx.w.record(RecType.FILE_DATA, dict(size=size, offset=0), payload=b"")


def dump_file(ctx: DumpContext, pid: int, fd: int) -> int:
    """The FILE object of one fd: its objref, written first if never seen."""
    o = open_fd(ctx, pid, fd)
    bucket = (o.st.st_dev, o.st.st_ino)
    ref = ctx.objhash.lookup_kcmp(KCMP_FILE, pid, fd, bucket)
    if ref is not None:
        return ref
    ref = ctx.objhash.add_kcmp(KCMP_FILE, pid, fd, bucket)
    flags, pos = o.info.flags, o.info.pos
    if o.kind is FileType.REGULAR:
        write_file_head(ctx, ref, o.kind, flags, pos, ctx.path(o.target))
        write_stat(ctx, o.st)  # (the file itself, stat'ed through /proc/PID/fd/N)
        write_tmpfs_contents(ctx, o.st, f"{ctx.proc}/{pid}/fd/{fd}", f"{_where(ctx, pid)} fd {fd} ({o.target})")
    elif o.kind in (FileType.DELETED, FileType.MEMFD):
        what = f"{_where(ctx, pid)} fd {fd} ({o.target})"
        with open_contents(f"{ctx.proc}/{pid}/fd/{fd}", what) as cfd:
            if o.kind is FileType.MEMFD:  # "memfd:name"; f_version holds the seals
                write_file_head(ctx, ref, o.kind, flags, pos, strip_deleted(o.target)[1:], memfd_seals(cfd))
            else:
                write_file_head(ctx, ref, o.kind, flags, pos, ctx.path(strip_deleted(o.target)))
            write_contents(ctx, cfd, what)
    elif o.kind in (FileType.PIPE, FileType.FIFO):
        from . import pipe

        pipe.dump(ctx, ref, o)
    elif o.kind is FileType.UNIX_SOCKET:
        from . import socket as sock

        sock.dump(ctx, ref, o)
    elif o.kind is FileType.TTY:
        from . import tty

        tty.dump(ctx, ref, o)
    else:
        from . import anon

        anon.dump(ctx, ref, o)
    write_owner(ctx, ref, o)
    return ref


F_SETSIG, F_GETSIG, F_SETOWN_EX, F_GETOWN_EX = 10, 11, 15, 16
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
F_OWNER_EX = struct.Struct("<ii")  # struct f_owner_ex {int type; pid_t pid;}


def write_owner(ctx: DumpContext, ref: int, o: OpenFd) -> None:
    """FILE_OWNER, when the file has an owner for its I/O signals (F_SETOWN) or a signal to send
    instead of SIGIO (F_SETSIG): they live in the open file description, read through a copy.
    The owner is named in the namespace; one outside it (or gone) is written 0."""
    if o.info.flags & os.O_PATH:
        return  # fcntl takes only F_GETFL-like commands on those (EBADF), and they signal nothing
    try:
        with grab(o.pid, o.fd) as dup:
            kind, pid = F_OWNER_EX.unpack(fcntl.fcntl(dup, F_GETOWN_EX, bytes(F_OWNER_EX.size)))
            sig = fcntl.fcntl(dup, F_GETSIG)
    except OSError as exc:
        raise from_oserror(exc, f"{_where(ctx, o.pid)} fd {o.fd}: read its I/O signal owner") from None
    if not pid and not sig:
        return
    owner = ctx.ns_pid.get(pid, 0) if pid else 0
    if kind == F_OWNER_PGRP and pid and not owner:
        owner = _ns_pgid(ctx, pid)  # a group whose leader has exited: named by a member
    ctx.w.record(RecType.FILE_OWNER, dict(owner_type=kind, owner_pid=owner, signal=sig))


def _ns_pgid(ctx: DumpContext, host_pgid: int) -> int:
    """Process group `host_pgid` (as the dumper sees it) as the namespace names it, through one
    of its members (the tasks are held: none moves); 0 when none is in the namespace."""
    for host in ctx.ns_pid:
        try:
            if os.getpgid(host) == host_pgid:
                return procfs.status(host, root=ctx.proc).ints("NSpgid")[-1]
        except OSError:
            continue
    return 0


def dump_table(ctx: DumpContext, pid: int) -> int:
    """The file table of process `pid`: its objref, written (with its files) if first seen."""
    ref = ctx.objhash.lookup_kcmp(KCMP_FILES, pid, 0)
    if ref is not None:
        return ref
    ref = ctx.objhash.add_kcmp(KCMP_FILES, pid, 0)
    fds = procfs.fds(pid, ctx.proc)
    ctx.w.record(RecType.OBJREF, dict(objtype=ObjType.FILE_TABLE, objref=ref))
    ctx.w.record(RecType.FILE_TABLE, dict(fdt_nfds=len(fds)))
    for fd in fds:
        fref = dump_file(ctx, pid, fd)
        cloexec = bool(procfs.fdinfo(pid, fd, ctx.proc).flags & os.O_CLOEXEC)
        ctx.w.record(RecType.FILE_DESC, dict(fd_objref=fref, fd_descriptor=fd, fd_close_on_exec=int(cloexec)))
    return ref


# -- files named by the mm (exe, mapped files): no fd, so keyed by inode and path --------------

def _mapped_file(ctx: DumpContext, key, kind_path: str, open_path: str, flags: int, what: str,
                 deleted: bool) -> int:
    ref = ctx.objhash.lookup_key(key)
    if ref is not None:
        return ref
    ref = ctx.objhash.add_key(key)
    if kind_path.startswith("/memfd:"):
        with open_contents(open_path, what) as cfd:
            write_file_head(ctx, ref, FileType.MEMFD, flags, 0, strip_deleted(kind_path)[1:], memfd_seals(cfd))
            write_contents(ctx, cfd, what)
    elif deleted:
        with open_contents(open_path, what) as cfd:
            write_file_head(ctx, ref, FileType.DELETED, flags, 0, ctx.path(strip_deleted(kind_path)))
            write_contents(ctx, cfd, what)
    else:
        write_file_head(ctx, ref, FileType.REGULAR, flags, 0, ctx.path(kind_path))
        try:
            st = os.stat(open_path)  # (the file the mapping or exe link leads to, not the name)
        except OSError:
            return ref
        write_stat(ctx, st)
        write_tmpfs_contents(ctx, st, open_path, what)
    return ref


def write_stat(ctx: DumpContext, st: os.stat_result) -> None:
    """FILE_STAT of a file reopened by path: its type (restore refuses a path that names a
    file of another type now: a FIFO or a device where a regular file was), size and mtime."""
    ctx.w.record(RecType.FILE_STAT, dict(size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino, dev=st.st_dev,
                                         mode=st.st_mode, uid=st.st_uid, gid=st.st_gid))


def dump_exe(ctx: DumpContext, pid: int) -> int:
    link = f"{ctx.proc}/{pid}/exe"
    try:
        path = os.readlink(link)
        st = os.stat(link)
    except FileNotFoundError:
        return 0  # kernel threads and exited mms have no exe
    except OSError as exc:
        raise from_oserror(exc, f"readlink exe of {pid}") from None
    # (the file, not the " (deleted)" the link's text ends with: a file may be named so, or be
    # reached by a name since removed while another lives on)
    path, deleted = procfs.settle_path(path, st)
    return _mapped_file(ctx, ("path", st.st_dev, st.st_ino, path), path, link, os.O_RDONLY,
                        f"{_where(ctx, pid)} exe {path}", deleted=deleted)


# -- the file a VMA maps --------------------------------------------------------------------
#
# The seed's VMA names its vm_file, one struct file, one objref. The kernel gives no handle on
# that struct file to compare with an fd's (kcmp compares fds; map_files/ opens a new file), so
# the object a VMA names is the closest one the kernel can vouch for, and always one the mapping
# could have been made from (docs/format.md, "Objrefs"):
#   1. an fd of the same process on the same inode whose access mode allows the mapping,
#   2. for a memfd or deleted file (contents carried by one object), such an fd of any process;
#      failing that, the first fd of the namespace holding it, so that the mapping and the fd
#      stay one file at restore,
#   3. else a file object of its own, keyed by device, inode, path and the access the mapping
#      needs, at offset 0.


def mapping_writes_file(m: procfs.Mapping) -> bool:
    """Whether the file behind a mapping was open for writing: mmap leaves a MAP_SHARED mapping
    VM_SHARED and VM_MAYWRITE only when it was (and mprotect may then make a read-only one
    writable). Restore opens such a mapping's file O_RDWR too (restorer.files.vma_open_mode)."""
    return "sh" in m.vmflags and ("wr" in m.vmflags or "mw" in m.vmflags)


def _allows(fmode: int, writes: bool) -> bool:
    """Whether a file open with FMODE bits `fmode` can back the mapping: any mapping reads its
    file; a shared one that may write needs it writable."""
    return bool(fmode & FMODE_READ) and (not writes or bool(fmode & FMODE_WRITE))


def _pick(held: list[tuple[int, int, int]], writes: bool) -> tuple[int, int] | None:
    """Of fds (host pid, fd, FMODE bits) on one inode, the one a mapping most likely came from:
    one open for writing when it may write, else preferably a read-only one (a shared mapping
    of a writable file would have kept VM_MAYWRITE), then the first in `held`'s order (fd
    numbers ascending in one process; the order the namespace's fds were met across them)."""
    want = FMODE_READ | FMODE_WRITE if writes else FMODE_READ
    fit = [h for h in held if _allows(h[2], writes)]
    if not fit:
        return None
    pid, fd, _ = min(fit, key=lambda h: h[2] != want)  # (min keeps the first of equals)
    return pid, fd


class MappedFiles:
    """The FILE objects one process's file VMAs name, by the rule above. The process's fds on
    regular files (memfds and deleted files too) are listed once, when a mapping first asks."""

    def __init__(self, ctx: DumpContext, pid: int):
        self.ctx, self.pid = ctx, pid
        self._held: dict[tuple[int, int], list[tuple[int, int, int]]] | None = None
        self._last: tuple[procfs.Mapping, os.stat_result | None] | None = None

    def held(self) -> dict[tuple[int, int], list[tuple[int, int, int]]]:
        """(st_dev, st_ino) -> [(host pid, fd, FMODE bits)] of the process's fds on files."""
        if self._held is None:
            self._held = {}
            for fd in procfs.fds(self.pid, self.ctx.proc):
                try:
                    st = os.stat(f"{self.ctx.proc}/{self.pid}/fd/{fd}")
                except OSError:
                    continue  # (the tasks are held; an fd of a table shared with one outside)
                if stat.S_ISREG(st.st_mode):
                    flags = procfs.fdinfo(self.pid, fd, self.ctx.proc).flags
                    self._held.setdefault((st.st_dev, st.st_ino), []).append((self.pid, fd, file_mode(flags)))
        return self._held

    def _stat(self, m: procfs.Mapping) -> os.stat_result | None:
        """The mapped file's stat (through map_files/: the file itself, named or not); None when
        it cannot be had. The last one is kept: fd_file and own_file ask in turn."""
        if self._last is None or self._last[0] is not m:
            try:
                st = os.stat(f"{self.ctx.proc}/{self.pid}/map_files/{m.start:x}-{m.end:x}")
            except OSError:
                st = None
            self._last = (m, st)
        return self._last[1]

    def fd_file(self, m: procfs.Mapping) -> int | None:
        """The FILE object of an fd the mapping `m` names (rules 1 and 2), written now if not
        yet; None when no fd holds its file (or a shared anonymous segment's)."""
        st = self._stat(m)
        if st is None:
            return None
        key, writes = (st.st_dev, st.st_ino), mapping_writes_file(m)
        holder = _pick(self.held().get(key, []), writes)
        if holder is None and key in self.ctx.data_fds:
            holders = self.ctx.data_fds[key]
            # (none allowing it: a memfd reopened read-only, its first fd then closed. The
            # mapping still names the file it maps, not a copy restore would make apart.)
            holder = _pick(holders, writes) or holders[0][:2]
        return dump_file(self.ctx, *holder) if holder else None

    def own_file(self, m: procfs.Mapping) -> int:
        """The file object of a mapping no fd gives (rule 3). map_files/ opens the file even
        when it was unlinked."""
        link = f"{self.ctx.proc}/{self.pid}/map_files/{m.start:x}-{m.end:x}"
        st = self._stat(m)
        dev = st.st_dev if st is not None else (m.dev[0] << 8) | m.dev[1]
        writes = mapping_writes_file(m)
        # (read-only, the key is the executable's: exe and its text mapping are one struct file)
        key = ("path", dev, m.inode, m.path) + (("rw",) if writes else ())
        return _mapped_file(self.ctx, key, m.path, link, os.O_RDWR if writes else os.O_RDONLY,
                            f"{_where(self.ctx, self.pid)} mapping {m.start:x}-{m.end:x} ({m.path})",
                            deleted=m.deleted)
