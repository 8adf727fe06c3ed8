"""State one dump carries from object to object: the writer, the objhash, the namespace's pid
map and root, options, and running totals for the progress display and summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import Unsupported
from ..image.stream import ImageWriter
from ..kernel import procfs
from ..kernel.sockdiag import SockTable
from .objhash import ObjHash


WITHOUT_KILL = "without --kill the image is written and the namespace left running"


def kill_refused(ns: int, why: str, then: str = WITHOUT_KILL, *, transient: bool = False) -> Unsupported:
    """The one form every refusal of `dump --kill` takes (the namespace is left running, as it
    was): `not killing pid:[N]: why; then` (what the user may do instead). `transient`: `why`
    may pass by itself (Unsupported.transient)."""
    return Unsupported(f"not killing pid:[{ns}]: {why}; {then}", transient=transient)


@dataclass
class Stats:
    tasks: int = 0
    processes: int = 0
    zombies: int = 0  # of the processes
    vmas: int = 0
    pages: int = 0
    files: int = 0


@dataclass
class DumpContext:
    w: ImageWriter
    ns_root: str  # the namespace init's root directory, as the dumper sees it
    ns_pid: dict[int, int]  # host pid/tid -> pid inside the namespace
    max_file_data: int
    proc: str = procfs.PROC
    objhash: ObjHash = field(default_factory=ObjHash)
    socks: SockTable = field(default_factory=SockTable)
    pipes_seen: set[int] = field(default_factory=set)  # pipe inodes whose buffer is already stored
    pipe_ends: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # pipe id -> (host pid, fd, O_ACCMODE) of each end
    # (st_dev, st_ino) of every memfd or deleted file some fd of the namespace holds -> each
    # (host pid, fd, FMODE bits) holding it, in the order met: a VMA mapping that inode names one
    # of those fds' FILE objects (one file again; files.MappedFiles)
    data_fds: dict[tuple[int, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    # (st_dev, st_ino) of every regular file on tmpfs (POSIX shared memory) some process of the
    # namespace maps MAP_SHARED -> its path and the host pids mapping it: process memory, whose
    # contents the image carries (FILE_DATA, once per file: the keys in `tmpfs_written` have them)
    shared_tmpfs: dict[tuple[int, int], tuple[str, list[int]]] = field(default_factory=dict)
    tmpfs_written: set[tuple[int, int]] = field(default_factory=set)
    # SHMEM objref -> segment byte ranges whose pages some VMA already stored (sorted, disjoint)
    shmem_stored: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    locks_seen: set = field(default_factory=set)  # flock/OFD locks already stored (they belong to a FILE)
    stats: Stats = field(default_factory=Stats)
    header_time: int = 0  # HEADER.time: what a realtime TFD_TIMER_ABSTIME timerfd's deadline is stored against
    totals: tuple[int, int] = (0, 0)  # processes, tasks in the namespace: what the progress counts up to
    on_progress: Callable[["DumpContext"], None] | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know although the dump worked, if the tasks run on
    image_notes: list[str] = field(default_factory=list)  # what the user should know of the image (--kill or not)
    # TCP connections read through TCP_REPAIR, kept (duplicates) for dump --kill to put back in
    # repair mode just before the kill (objects/socket.py); None: not kept (no --kill)
    tcp_held: list | None = None
    # a task holding each pty slave, by the slave's (st_dev, st_rdev) (objects/tty.py)
    pty_slaves: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    pty_queued: list[str] = field(default_factory=list)  # ptys holding unread bytes the image lacks (tty.check_kill)
    # sockets the image has (inodes), and its listeners as (where, description, SockInfo), for
    # the connections waiting to be accepted that the image lacks (socket.unaccepted)
    sock_inos: set[int] = field(default_factory=set)
    listeners: list[tuple[str, str, Any]] = field(default_factory=list)
    unaccepted: list[str] = field(default_factory=list)  # (socket.check_kill)

    def path(self, host_path: str) -> str:
        """A path for the image: as the dumper sees it. Not re-expressed from the namespace's
        root (a chroot'ed init's): a file outside that root (the stdin it inherited) has no name
        there, and restore --root moves what is under it (Image.at)."""
        return host_path

    def progress(self) -> None:
        if self.on_progress:
            self.on_progress(self)
