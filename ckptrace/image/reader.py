"""The image grammar: checks record order and cross-references, and builds an `Image` index.

    image   := HEADER BUFFER{3} HEADER_ARCH TREE (task | zombie)* TAIL <end>
    task    := TASK STRING THREAD object* TASK_OBJS CPU [TASK_SCHED] [seccomp] [TASK_CREDS(thread)]
               [TASK_SIGINFO(own)] [proc]
    zombie  := TASK(exit_state EXIT_ZOMBIE) STRING THREAD TASK_CREDS       (an unreaped process)
    seccomp := TASK_SECCOMP TASK_SECCOMP_FILTER{nfilters}
    proc    := TASK_CREDS TASK_SIGHAND TASK_RLIMITS TASK_PROC [TASK_ITIMERS [TASK_POSIX_TIMERS]] [TASK_LOCKS] [TASK_NS]
               [TASK_SIGINFO(shared)]                                   (proc: leaders only)
    TASK_CREDS(thread): non-leader threads only, when their credentials differ from the leader's
    object  := OBJREF body(objtype)
    body(FILE_TABLE) := FILE_TABLE (object* FILE_DESC){fdt_nfds}
    body(FILE)       := FILE [FILE_NAME] file-extra*
    body(MM)         := object* MM (object* VMA PAGE* PAGE(end)){map_count} MM_AUXV

A shared anonymous segment is a FILE object of f_type SHMEM (as the kernel backs it with a shmem
file); each of its pages follows the first SHARED_ANON VMA that covers that page's segment offset
(vm_pgoff onwards), so a segment split into several VMAs has its pages spread over them.

Page data is not kept: each VMA lists its page runs with their byte offsets in the input, so
`inspect` and `restore` read pages only when they need them.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

from ..errors import ImageError, ImageReadError
from .records import (ARCH_X86_64, AT_VECTOR_SIZE, EXIT_ZOMBIE, MAGIC_HEAD, MAGIC_TAIL, PAGE_SIZE, REG_NAMES,
                      NAMED_TEXTS, SCHED_POLICIES, SIGINFO_SIZE, TASK_COMM_LEN, TCP_ESTABLISHED, UTS_LEN, VMA_LAST_PAGE,
                      FileType, ObjType, RecType, VmaType, cstring, inotify_watches)
from ..kernel.procfs import parse_cgroup
from .stream import Record, RecordReader

# what restore --root leaves where it is when the namespace's root was the host's (Image.at)
HOST_TREES = ("/dev/", "/proc/", "/sys/")
SOCKADDR_UN_MAX = 108  # sizeof(sun_path): FILE_SOCKET_QUEUE.addrlen counts the name only
FILE_EXTRA = (RecType.FILE_PIPE, RecType.FILE_DATA, RecType.FILE_SOCKET, RecType.FILE_EVENTFD,
              RecType.FILE_EPOLL, RecType.FILE_TIMERFD, RecType.FILE_SIGNALFD, RecType.FILE_INOTIFY,
              RecType.FILE_TTY, RecType.FILE_OWNER, RecType.FILE_SOCKET_QUEUE,
              RecType.FILE_STAT, RecType.FILE_TCP)
AF_INET, AF_INET6, IPPROTO_TCP = 2, 10, 6
# what a file VMA or an executable can name: a file with contents (by path, or carried in the image)
MAPPABLE_FILES = (FileType.REGULAR, FileType.MEMFD, FileType.DELETED)


@dataclass
class PageRun:
    vaddr: int
    npages: int
    offset: int  # byte offset of the data in the image (valid for seekable input)
    sha256: str | None = None  # filled when the input could not be revisited


@dataclass
class Vma:
    fields: dict[str, Any]
    runs: list[PageRun] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.fields["vm_start"]

    @property
    def end(self) -> int:
        return self.fields["vm_end"]

    @property
    def npages(self) -> int:
        return sum(r.npages for r in self.runs)


@dataclass
class Mm:
    objref: int
    fields: dict[str, Any] = field(default_factory=dict)
    vmas: list[Vma] = field(default_factory=list)
    auxv: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class File:
    objref: int
    fields: dict[str, Any]
    name: str | None = None
    extra: list[Record] = field(default_factory=list)  # type-specific records, payload kept

    @property
    def ftype(self) -> int:
        return self.fields["f_type"]


@dataclass
class FileTable:
    objref: int
    nfds: int
    fds: list[dict[str, Any]] = field(default_factory=list)  # FILE_DESC fields


@dataclass
class Task:
    fields: dict[str, Any]
    comm: str = ""
    thread: dict[str, Any] = field(default_factory=dict)
    files_objref: int = 0
    mm_objref: int = 0
    regs: dict[str, int] = field(default_factory=dict)
    xsave_offset: int = 0
    xsave: bytes | None = None
    creds: dict[str, Any] | None = None  # a thread's own, else (own_creds False) its leader's
    groups: list[int] = field(default_factory=list)
    own_creds: bool = False  # a non-leader thread whose TASK_CREDS the image holds (they differ from its leader's)
    sighand: list[dict[str, Any]] = field(default_factory=list)
    rlimits: list[dict[str, Any]] = field(default_factory=list)
    proc: dict[str, Any] | None = None
    sched: dict[str, Any] | None = None  # TASK_SCHED fields (None: not in the image)
    affinity: bytes = b""  # CPU bitmask, bit n = CPU n
    seccomp: dict[str, Any] | None = None  # TASK_SECCOMP fields; None: no mode, no no_new_privs
    seccomp_filters: list[tuple[int, bytes]] = field(default_factory=list)  # (flags, sock_filter[]), oldest first
    cwd: str = ""
    root: str = ""
    cgroups: list[tuple[int, str, str]] = field(default_factory=list)  # (hierarchy id, controllers, path)
    ns_root: str = ""  # init only: the host path of the namespace's root at dump time ("" if not said)
    itimers: dict[str, int] | None = None  # TASK_ITIMERS fields (µs), leaders only
    locks: list[dict[str, Any]] = field(default_factory=list)  # TASK_LOCKS entries, leaders only
    posix_timers: list[dict[str, Any]] = field(default_factory=list)  # TASK_POSIX_TIMERS entries
    own_ns: int | None = None  # TASK_NS: CLONE_NEW* bits of the namespaces that were its own
    ns_flags: int = 0  # TASK_NS.flags: NS_LO_DOWN, NS_OWN_PROC, NS_TIME_CHILDREN
    net_missing: str = ""  # TASK_NS: what of its own network namespace restore does not make, in words
    mnt_missing: str = ""  # TASK_NS: the mounts of its own mount namespace restore does not make, in words
    time_offsets: str = ""  # TASK_NS: the clock offsets of its own time namespace, in words
    # TASK_NS, of a process with a cgroup namespace of its own: the pid of the image's first process
    # in that namespace (0: not recorded, an older image), and the namespace's root per hierarchy
    # (hierarchy id, controllers, path; path "" where it is unknown)
    cgroup_ns: int = 0
    cgroup_ns_roots: list[tuple[int, str, str]] = field(default_factory=list)
    # TASK_NS, of a process with a time namespace of its own: (name, monotonic offset, boottime
    # offset in ns) of the time namespace it is in, then of the one its children enter; a name is
    # the namespace's number in the image (from 1), 0 the dumper's own. None where the image does
    # not say (older images, and processes without one)
    time_ns: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    siginfo: list[bytes] = field(default_factory=list)  # its own queued signals (siginfo_t)
    shared_siginfo: list[bytes] = field(default_factory=list)  # the process's (leaders only)
    nodename: bytes = b""
    domainname: bytes = b""

    @property
    def tid(self) -> int:
        return self.thread["tid"]

    @property
    def tgid(self) -> int:
        return self.thread["tgid"]

    @property
    def is_leader(self) -> bool:
        return self.tid == self.tgid

    @property
    def zombie(self) -> bool:
        """An unreaped process: its TASK, comm, THREAD and credentials are all the image holds."""
        return self.fields["exit_state"] == EXIT_ZOMBIE


@dataclass
class Image:
    header: dict[str, Any] = field(default_factory=dict)
    uts: tuple[str, str, str] = ("", "", "")
    arch: dict[str, Any] = field(default_factory=dict)
    tree: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    objects: dict[int, Any] = field(default_factory=dict)
    records: int = 0
    size: int = 0
    # restore --root: the namespace's root (ns_root) is found here instead, and every image
    # path under it with it ("": where it was)
    root: str = ""
    # indexes that users of the image build from its objects once (the restorer's UnixIndex)
    derived: dict[str, Any] = field(default_factory=dict)

    def obj(self, objref: int):
        return self.objects.get(objref)

    def at(self, path: str, follow: bool = True) -> str:
        """An image path (as the dumper saw it) as this host finds it: moved with the
        namespace's root to `root` when that is set, and there resolved as a process chroot'ed
        in `root` would resolve it (inside()): its symlinks followed within `root` (the last
        one too unless `follow` is False, as bind(2) and lstat do not), so that no symlink or
        `..` of the image or of `root` reaches a file outside. The open itself goes through
        openat2(RESOLVE_IN_ROOT) (restorer.files.open_path), which resolves the same way."""
        if not self.root or not path.startswith("/"):
            return path
        inside = self.inside(path)
        if inside is None:
            return normalised(path)
        return resolve_in_root(self.root, inside, follow=follow)

    def inside(self, path: str) -> str | None:
        """restore --root: `path` (an image path) as a process chroot'ed in `root` names it
        ("/..."), or None when it is looked up on the host as it is (no --root, a relative path,
        a path outside the namespace's root, or with a namespace root of "/", one under the
        host's /dev, /proc or /sys). Normalised first (lexically: `..` of an absolute path
        cannot climb above "/"), so that `/dev/../etc/x` is no host path and `/srv/ct/../x` not
        under /srv/ct."""
        if not self.root or not path.startswith("/"):
            return None
        path, old = normalised(path), normalised(self.ns_root)
        if old == "/":
            return None if path.startswith(HOST_TREES) else path
        if path == old or path.startswith(old + "/"):
            return path[len(old):] or "/"
        return None  # outside the namespace's root (a chroot'ed init's inherited stdin, say)

    @property
    def ns_root(self) -> str:
        """The host path of the namespace's root (its init's root directory) when it was dumped
        ("/" when the image does not say)."""
        init = self.task(1)
        return (init.ns_root if init is not None else "") or "/"

    # tid -> task, tgid -> its tasks, built on first use and again if tasks were added since:
    # looked up per process (and per VMA in inspect), a scan made 20 000 processes take 79 s
    _by_tid: dict[int, Task] = field(default_factory=dict, repr=False, compare=False)
    _by_tgid: dict[int, list[Task]] = field(default_factory=dict, repr=False, compare=False)
    _by_pid: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    # runs_of: SHMEM objref -> the VMAs its pages are stored with; id(vma) -> its runs
    _shmem_owners: dict[int, list[Vma]] | None = field(default=None, repr=False, compare=False)
    _runs: dict[int, list[PageRun]] = field(default_factory=dict, repr=False, compare=False)

    def _index(self) -> None:
        if len(self._by_tid) != len(self.tasks) or len(self._by_pid) != len(self.tree):
            self._by_tid = {t.tid: t for t in self.tasks}
            self._by_tgid = {}
            for t in self.tasks:
                self._by_tgid.setdefault(t.tgid, []).append(t)
            self._by_pid = {e["pid"]: e for e in self.tree}

    def task(self, tid: int) -> Task | None:
        self._index()
        return self._by_tid.get(tid)

    def tree_entry(self, pid: int) -> dict[str, Any]:
        """The TREE entry of `pid` ({} if none)."""
        self._index()
        return self._by_pid.get(pid, {})

    def processes(self) -> list[Task]:
        """The live processes (leaders), TREE order; zombies are zombies()."""
        return [t for t in self.tasks if t.is_leader and not t.zombie]

    def zombies(self) -> list[Task]:
        return [t for t in self.tasks if t.zombie]

    def runs_of(self, vma: Vma) -> list[PageRun]:
        """The stored pages of `vma`, at its addresses. A shared anonymous segment's pages are
        stored once, each with the first VMA that covered it (docs/format.md): every VMA of the
        segment, in any process, sees them at its own addresses. show, diff and inspect all
        count and compare pages through this."""
        if vma.fields["vma_type"] != VmaType.SHARED_ANON:
            return vma.runs
        if self._shmem_owners is None:
            self._shmem_owners = {}
            for o in self.objects.values():
                if isinstance(o, Mm):
                    for v in o.vmas:
                        ref = v.fields["vma_objref"]
                        if ref and v.runs and v.fields["vma_type"] == VmaType.SHARED_ANON:
                            self._shmem_owners.setdefault(ref, []).append(v)
        cached = self._runs.get(id(vma))
        if cached is not None:
            return cached
        out: list[PageRun] = []
        for owner in self._shmem_owners.get(vma.fields["vma_objref"], []):
            # Same segment offset <-> same data: shift by the difference of (start - pgoff).
            delta = (vma.start - vma.fields["vm_pgoff"] * PAGE_SIZE) - \
                (owner.start - owner.fields["vm_pgoff"] * PAGE_SIZE)
            for r in owner.runs:
                s, e = r.vaddr + delta, r.vaddr + delta + r.npages * PAGE_SIZE
                lo, hi = max(s, vma.start), min(e, vma.end)
                if lo < hi:
                    out.append(PageRun(lo, (hi - lo) // PAGE_SIZE, r.offset + (lo - s)))
        out.sort(key=lambda r: r.vaddr)
        self._runs[id(vma)] = out
        return out

    def carried_files(self) -> dict[str, File]:
        """Image path -> the REGULAR object carrying the contents of the file at that path
        (FILE_DATA: shared memory on tmpfs that a process mapped MAP_SHARED), which restore puts
        back before any fd or mapping of it is made. Once per file, with its first object; the
        other objects of the same path name the same file and carry nothing."""
        carried = self.derived.get("carried_files")
        if carried is None:  # (once per image)
            carried = self.derived["carried_files"] = {}
            for obj in self.objects.values():
                if isinstance(obj, File) and obj.ftype == FileType.REGULAR and obj.name and file_data(obj):
                    carried.setdefault(obj.name, obj)
        return carried

    def contents_of(self, f: File) -> File | None:
        """The object whose FILE_DATA holds the contents of the file `f` opens or maps, as
        restore makes that file again: `f`'s own (a memfd, a deleted file, or the first object
        of shared memory on tmpfs), else, for another object of such a tmpfs file, that first
        object's. None when the contents live in the file itself."""
        if file_data(f):
            return f
        if f.ftype == FileType.REGULAR and f.name:
            return self.carried_files().get(f.name)
        return None

    def threads_of(self, tgid: int) -> list[Task]:
        self._index()
        return list(self._by_tgid.get(tgid, ()))

    @property
    def page_count(self) -> int:
        return sum(v.npages for o in self.objects.values() if isinstance(o, Mm) for v in o.vmas)


def normalised(path: str) -> str:
    """An absolute path without `.`, `..` or repeated slashes (lexically: no symlink looked at;
    os.path.normpath keeps a leading "//")."""
    return "/" + os.path.normpath(path).lstrip("/")


MAXSYMLINKS = 40  # the kernel's limit on symlinks followed in one lookup (ELOOP past it)


def resolve_in_root(root: str, path: str, follow: bool = True) -> str:
    """The host path under `root` of `path` as a process chroot'ed in `root` would find it:
    symlinks are followed against `root` (an absolute target starts again at `root`, `..`
    stops there), the last one only if `follow`. Components that do not exist (or are not
    directories) are kept as they are, for the lookup of the result to fail as the chroot'ed
    one would. More than MAXSYMLINKS symlinks raise OSError(ELOOP), as that lookup would: the
    path left half resolved could still hold a symlink the host would follow outside `root`."""
    todo = [c for c in path.split("/") if c][::-1]  # a stack: the next component last
    done: list[str] = []
    links = 0
    while todo:
        c = todo.pop()
        if c == ".":
            continue
        if c == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, c)
        if (todo or follow) and os.path.islink(here):
            links += 1
            if links > MAXSYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.path.join(root, path.lstrip("/")))
            try:
                target = os.readlink(here)
            except OSError:
                done.append(c)
                continue
            if target.startswith("/"):
                done = []
            todo.extend([x for x in target.split("/") if x][::-1])
            continue
        done.append(c)
    return os.path.join(root, *done)


class _Parser:
    def __init__(self, reader: RecordReader, on_record: Callable[[Record], None] | None,
                 hash_pages: bool):
        self.r = reader
        self.on_record = on_record
        self.hash_pages = hash_pages
        self.peeked: Record | None = None
        self.last: Record | None = None
        self.img = Image()
        self.leaders: dict[int, Task] = {}  # tgid -> its leader's Task, once read (its threads follow it)

    # -- record access -------------------------------------------------------------------------
    def peek(self) -> Record | None:
        if self.peeked is None:
            self.peeked = self.r.next()
        return self.peeked

    def take(self) -> Record:
        rec = self.peek()
        if rec is None:
            if self.r.offset == 0:
                # (a piped dump that refused writes nothing: say that, not "bad image")
                raise ImageError("the input is empty: no image (did the dump writing it fail?)", index=0, offset=0)
            raise ImageError("unexpected end of image (no TAIL)", index=self.r.index, offset=self.r.offset)
        self.peeked = None
        self.last = rec
        if self.on_record:
            self.on_record(rec)
        return rec

    def expect(self, t: RecType, what: str = "") -> Record:
        rec = self.take()
        if rec.type != t:
            ctx = f" ({what})" if what else ""
            self.fail(rec, f"expected {t.name}{ctx}, found {rec.type.name}")
        return rec

    def fail(self, rec: Record, msg: str):
        raise ImageError(msg, index=rec.index, offset=rec.offset)

    def at(self, t: RecType) -> bool:
        p = self.peek()
        return p is not None and p.type == t

    # -- grammar -------------------------------------------------------------------------------
    def image(self) -> Image:
        img = self.img
        h = self.expect(RecType.HEADER, "image must start with HEADER")
        f = h.fields
        if f["magic"] != MAGIC_HEAD:
            self.fail(h, f"bad header magic {f['magic']:#x} (want {MAGIC_HEAD:#x})")
        if f["uflags"] != 0:
            self.fail(h, f"HEADER uflags {f['uflags']:#x}: no flag is defined, it must be 0")
        if f["arch_id"] != ARCH_X86_64:
            self.fail(h, f"architecture id {f['arch_id']} is not x86_64 ({ARCH_X86_64})")
        consts = (f["task_comm_len"], f["at_vector_size"], f["uts_release_len"],
                  f["uts_version_len"], f["uts_machine_len"])
        if consts != (TASK_COMM_LEN, AT_VECTOR_SIZE, UTS_LEN, UTS_LEN, UTS_LEN):
            self.fail(h, f"kernel constants {consts} differ from this tool's")
        img.header = f
        uts = []
        for name in ("release", "version", "machine"):
            b = self.expect(RecType.BUFFER, f"uts {name}")
            if len(b.payload) != UTS_LEN:
                self.fail(b, f"uts {name} buffer is {len(b.payload)} bytes, want {UTS_LEN}")
            uts.append(cstring(b.payload))
        img.uts = tuple(uts)
        a = self.expect(RecType.HEADER_ARCH)
        if a.fields["regs_size"] != 8 * len(REG_NAMES):
            self.fail(a, f"regs_size {a.fields['regs_size']} != {8 * len(REG_NAMES)}")
        if not 512 + 64 <= a.fields["xstate_size"] <= 64 << 10:
            self.fail(a, f"implausible xstate_size {a.fields['xstate_size']}")
        img.arch = a.fields
        t = self.expect(RecType.TREE)
        img.tree = t.rtype.decode_entries(t.payload)
        if len(img.tree) != t.fields["nr_tasks"]:
            self.fail(t, "TREE nr_tasks does not match its entries")
        self.check_tree(t)
        while self.at(RecType.TASK):
            self.task()
        tail = self.expect(RecType.TAIL, "after the last task")
        if tail.fields["magic"] != MAGIC_TAIL:
            self.fail(tail, f"bad tail magic {tail.fields['magic']:#x}")
        try:
            extra = self.r.next()
        except ImageError as exc:  # not even a record: still, first of all, something after TAIL
            if isinstance(exc, ImageReadError):
                raise
            raise ImageError(f"data after TAIL ({exc.what})", index=exc.index, offset=exc.offset) from None
        if extra is not None:
            self.fail(extra, "data after TAIL")
        if len(img.tasks) != len(img.tree):
            self.fail(tail, f"TREE lists {len(img.tree)} tasks but the image holds {len(img.tasks)}")
        img.records = self.r.index
        img.size = self.r.offset
        return img

    def check_tree(self, rec: Record):
        seen: set[int] = set()
        leaders: set[int] = set()
        for e in self.img.tree:
            if e["pid"] <= 0 or e["pid"] in seen:
                self.fail(rec, f"TREE has a bad or repeated pid {e['pid']}")
            if e["tgid"] != e["pid"] and e["tgid"] not in seen:
                self.fail(rec, f"TREE thread {e['pid']} comes before its leader {e['tgid']}")
            if e["tgid"] != e["pid"] and e["tgid"] not in leaders:
                # a thread of a thread belongs to no process: no tool would show it
                self.fail(rec, f"TREE thread {e['pid']} names {e['tgid']}, which leads no process")
            if e["tgid"] == e["pid"]:
                leaders.add(e["pid"])
            if e["tgid"] == e["pid"] and e["ppid"] != 0 and e["ppid"] not in seen:
                self.fail(rec, f"TREE process {e['pid']} comes before its parent {e['ppid']}")
            seen.add(e["pid"])

    def task(self):
        img = self.img
        t = Task(self.expect(RecType.TASK).fields)
        s = self.expect(RecType.STRING, "comm")
        if len(s.payload) != TASK_COMM_LEN:
            self.fail(s, f"comm is {len(s.payload)} bytes, want {TASK_COMM_LEN}")
        t.comm = cstring(s.payload)
        th = self.expect(RecType.THREAD)
        t.thread = th.fields
        idx = len(img.tasks)
        if idx >= len(img.tree) or img.tree[idx]["pid"] != t.tid or img.tree[idx]["tgid"] != t.tgid:
            self.fail(th, f"task {t.tid} (tgid {t.tgid}) is not TREE entry {idx}")
        if t.fields["exit_state"]:
            self.zombie(t, th)
            return
        while self.at(RecType.OBJREF):
            self.object()
        objs = self.expect(RecType.TASK_OBJS)
        t.files_objref = objs.fields["files_objref"]
        t.mm_objref = objs.fields["mm_objref"]
        self.ref(objs, t.files_objref, FileTable)
        self.ref(objs, t.mm_objref, Mm)
        cpu = self.expect(RecType.CPU)
        if cpu.payload_len != img.arch["xstate_size"]:
            self.fail(cpu, f"CPU xsave is {cpu.payload_len} bytes, HEADER_ARCH says {img.arch['xstate_size']}")
        t.regs = cpu.fields
        t.xsave_offset = cpu.payload_offset
        t.xsave = cpu.payload
        if self.at(RecType.TASK_SCHED):
            sc = self.expect(RecType.TASK_SCHED)
            if sc.fields["policy"] not in SCHED_POLICIES:
                self.fail(sc, f"unknown scheduling policy {sc.fields['policy']}")
            t.sched = sc.fields
            t.affinity = bytes(sc.payload or b"")
        if self.at(RecType.TASK_SECCOMP):
            sc = self.expect(RecType.TASK_SECCOMP)
            t.seccomp = sc.fields
            if sc.fields["mode"] not in (0, 1, 2):
                self.fail(sc, f"seccomp mode {sc.fields['mode']} is not 0, 1 or 2")
            for _ in range(sc.fields["nfilters"]):
                f = self.expect(RecType.TASK_SECCOMP_FILTER, "TASK_SECCOMP's filters")
                t.seccomp_filters.append((f.fields["flags"], bytes(f.payload)))
        if not t.is_leader:
            # A thread's own credentials, when they differ from its leader's; else the leader's
            # (older images never had them: their threads read as they always did).
            leader = self.leaders.get(t.tgid)
            if self.at(RecType.TASK_CREDS):
                self.creds(t, "thread")
                t.own_creds = True
            elif leader is not None:
                t.creds, t.groups = leader.creds, leader.groups
        if self.at(RecType.TASK_SIGINFO):
            t.siginfo = self.siginfo(shared=False)
        if t.is_leader:
            self.creds(t, "process leader")
            sh = self.expect(RecType.TASK_SIGHAND)
            t.sighand = sh.rtype.decode_entries(sh.payload)
            if len(t.sighand) != sh.fields["nsig"]:
                self.fail(sh, "nsig does not match the entries")
            rl = self.expect(RecType.TASK_RLIMITS)
            t.rlimits = rl.rtype.decode_entries(rl.payload)
            if len(t.rlimits) != rl.fields["nlimits"]:
                self.fail(rl, "nlimits does not match the entries")
            p = self.expect(RecType.TASK_PROC)
            t.proc = p.fields
            parts = bytes(p.payload).split(b"\0")
            if len(parts) < 3:
                self.fail(p, "TASK_PROC payload must hold cwd and root, NUL-terminated")
            t.cwd, t.root = (x.decode("utf-8", "surrogateescape") for x in parts[:2])
            if len(parts) > 3:  # then /proc/PID/cgroup as the dumper saw it
                try:
                    t.cgroups = parse_cgroup(parts[2].decode("utf-8", "surrogateescape"))
                except ValueError:
                    self.fail(p, "TASK_PROC's cgroup text is not /proc/PID/cgroup lines")
            if len(parts) > 4:  # then, for init, the namespace's root on the host
                t.ns_root = parts[3].decode("utf-8", "surrogateescape")
            if self.at(RecType.TASK_ITIMERS):
                t.itimers = self.expect(RecType.TASK_ITIMERS).fields
                if self.at(RecType.TASK_POSIX_TIMERS):
                    pt = self.expect(RecType.TASK_POSIX_TIMERS)
                    t.posix_timers = pt.rtype.decode_entries(pt.payload)
                    if len(t.posix_timers) != pt.fields["ntimers"]:
                        self.fail(pt, "ntimers does not match the entries")
            if self.at(RecType.TASK_LOCKS):
                lk = self.expect(RecType.TASK_LOCKS)
                t.locks = lk.rtype.decode_entries(lk.payload)
                if len(t.locks) != lk.fields["nlocks"]:
                    self.fail(lk, "nlocks does not match the entries")
            if self.at(RecType.TASK_NS):
                nsr = self.expect(RecType.TASK_NS)
                names = bytes(nsr.payload or b"").split(b"\0")
                if len(names) < 3:
                    self.fail(nsr, "TASK_NS payload must hold the host and domain names, NUL-terminated")
                # the NUL-terminated texts by name (records.NAMED_TEXTS: older images end after the
                # domain name, the network words, the mount words...)
                text = dict(zip(NAMED_TEXTS[RecType.TASK_NS], names[:-1]))
                t.own_ns, t.nodename, t.domainname = nsr.fields["own"], names[0], names[1]
                t.ns_flags = nsr.fields.get("flags", 0)
                for name in ("net_missing", "mnt_missing", "time_offsets"):
                    if name in text:
                        setattr(t, name, text[name].decode("utf-8", "replace"))
                if cgroup_ns := text.get("cgroup_ns"):
                    if not cgroup_ns.isdigit() or not 0 < int(cgroup_ns) < 1 << 31:
                        self.fail(nsr, "TASK_NS's cgroup namespace is not named by a pid")
                    t.cgroup_ns = int(cgroup_ns)
                if "cgroup_ns_roots" in text:
                    try:
                        t.cgroup_ns_roots = parse_cgroup(text["cgroup_ns_roots"].decode("utf-8", "surrogateescape"))
                    except ValueError:
                        self.fail(nsr, "TASK_NS's cgroup namespace roots are not /proc/PID/cgroup lines")
                if time_ns := text.get("time_ns"):
                    t.time_ns = self.time_ns(nsr, time_ns)
            if self.at(RecType.TASK_SIGINFO):
                t.shared_siginfo = self.siginfo(shared=True)
            self.leaders[t.tid] = t
        img.tasks.append(t)

    def time_ns(self, nsr: Record, text: bytes) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """TASK_NS's eighth string: two lines of NAME MONOTONIC BOOTTIME (Task.time_ns)."""
        try:
            rows = [tuple(int(x) for x in line.split()) for line in text.decode("ascii").splitlines()]
        except (UnicodeDecodeError, ValueError):
            rows = []
        if len(rows) != 2 or any(len(r) != 3 or not 0 <= r[0] < 1 << 31 for r in rows):
            self.fail(nsr, "TASK_NS's time namespaces are not two lines of a number and two offsets")
        return rows[0], rows[1]

    def zombie(self, t: Task, th: Record):
        """A process that had exited, its parent not having reaped it yet: no memory, files or
        registers are left of it, only its identity, exit status and owner."""
        if t.fields["exit_state"] != EXIT_ZOMBIE:
            self.fail(th, f"task {t.tid}: exit_state {t.fields['exit_state']:#x} is not EXIT_ZOMBIE (0x20)")
        if not t.is_leader or t.tid == 1:
            self.fail(th, f"task {t.tid} is a zombie but not a process other than init")
        if any(e["tgid"] == t.tid and e["pid"] != t.tid for e in self.img.tree):
            self.fail(th, f"zombie {t.tid} has threads in TREE")
        self.creds(t, "zombie")
        self.img.tasks.append(t)

    def creds(self, t: Task, what: str):
        c = self.expect(RecType.TASK_CREDS, what)
        t.creds = c.fields
        t.groups = [e["gid"] for e in c.rtype.decode_entries(c.payload)]
        if len(t.groups) != c.fields["ngroups"]:
            self.fail(c, "ngroups does not match the group entries")

    def siginfo(self, shared: bool) -> list[bytes]:
        rec = self.expect(RecType.TASK_SIGINFO)
        if rec.fields["shared"] != int(shared):
            self.fail(rec, f"TASK_SIGINFO here must be the {'process' if shared else 'thread'}'s queue")
        data = bytes(rec.payload or b"")
        if len(data) != rec.fields["nsiginfo"] * SIGINFO_SIZE:
            self.fail(rec, f"TASK_SIGINFO holds {len(data)} bytes, not {rec.fields['nsiginfo']} siginfo_t")
        return [data[i:i + SIGINFO_SIZE] for i in range(0, len(data), SIGINFO_SIZE)]

    def ref(self, rec: Record, objref: int, kind: type, allow_zero: bool = False):
        if allow_zero and objref == 0:
            return None
        o = self.img.objects.get(objref)
        if o is None:
            self.fail(rec, f"objref {objref} is used before its OBJREF")
        if not isinstance(o, kind):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            self.fail(rec, f"objref {objref} is a {type(o).__name__}, not a {want}")
        return o

    def object(self):
        o = self.expect(RecType.OBJREF)
        objtype, objref = o.fields["objtype"], o.fields["objref"]
        if objref <= 0:
            self.fail(o, f"objref {objref} is not a valid objref (they start at 1)")
        if objref in self.img.objects:
            self.fail(o, f"objref {objref} is not new")
        if objtype == ObjType.FILE_TABLE:
            self.file_table(objref)
        elif objtype == ObjType.FILE:
            self.file(objref)
        elif objtype == ObjType.MM:
            self.mm(objref)
        else:
            self.fail(o, f"unknown object type {objtype}")

    def file_table(self, objref: int):
        ft = self.expect(RecType.FILE_TABLE)
        n = ft.fields["fdt_nfds"]
        if n < 0:
            self.fail(ft, f"negative fdt_nfds {n}")
        table = FileTable(objref, n)
        self.img.objects[objref] = table
        seen = set()
        for _ in range(n):
            while self.at(RecType.OBJREF):
                self.object()
            d = self.expect(RecType.FILE_DESC)
            self.ref(d, d.fields["fd_objref"], File)
            fd = d.fields["fd_descriptor"]
            if fd < 0 or fd in seen:
                self.fail(d, f"bad or repeated fd {fd}")
            seen.add(fd)
            table.fds.append(d.fields)

    def file(self, objref: int):
        f = self.expect(RecType.FILE)
        if f.fields["f_type"] not in FileType._value2member_map_ or f.fields["f_type"] == 0:
            self.fail(f, f"unknown file type {f.fields['f_type']}")
        obj = File(objref, f.fields)
        self.img.objects[objref] = obj
        if self.at(RecType.FILE_NAME):
            n = self.take()
            if not n.payload or n.payload[-1] != 0:
                self.fail(n, "FILE_NAME is not NUL-terminated")
            obj.name = cstring(n.payload)
        data_end = 0  # FILE_DATA: ascending, disjoint, inside one size (docs/format.md)
        while (p := self.peek()) is not None and p.type in FILE_EXTRA:
            x = self.take()
            if x.type == RecType.FILE_PIPE and x.fields["buffered"] != x.payload_len:
                self.fail(x, f"FILE_PIPE says {x.fields['buffered']} bytes buffered but holds {x.payload_len}")
            if x.type == RecType.FILE_INOTIFY:
                try:
                    inotify_watches(x.payload or b"", x.fields["nwatch"])
                except ValueError as exc:
                    self.fail(x, f"FILE_INOTIFY: {exc}")
            if x.type == RecType.FILE_SOCKET_QUEUE:
                alen, n = x.fields["addrlen"], x.fields["bytes"]
                if alen > SOCKADDR_UN_MAX or alen + n != x.payload_len:
                    self.fail(x, f"FILE_SOCKET_QUEUE says {alen} address and {n} message bytes but holds "
                                 f"{x.payload_len}")
            if x.type == RecType.FILE_TCP:
                self.tcp_socket(obj, x)
                tf = x.fields
                if tf["inq_len"] + tf["outq_len"] != x.payload_len or tf["unsent_len"] > tf["outq_len"]:
                    self.fail(x, f"FILE_TCP says {tf['inq_len']} received and {tf['outq_len']} sent bytes "
                                 f"({tf['unsent_len']} unsent) but holds {x.payload_len}")
            if x.type == RecType.FILE_DATA:
                size, off = x.fields["size"], x.fields["offset"]
                first = next((r for r in obj.extra if r.type == RecType.FILE_DATA), None)
                if first is not None and first.fields["size"] != size:
                    self.fail(x, f"FILE_DATA size {size} differs from the file's first record ({first.fields['size']})")
                if off < data_end or off + x.payload_len > size:
                    self.fail(x, f"FILE_DATA at offset {off} ({x.payload_len} bytes) overlaps the one before "
                                 f"or passes the file's size {size}")
                data_end = off + x.payload_len
            obj.extra.append(x)

    def tcp_socket(self, obj: File, x: Record) -> None:
        """FILE_TCP describes an established TCP connection: it comes right after the FILE_SOCKET
        of an INET or INET6 socket file that says so (restore reads its addresses and state
        there, and would fail on anything else half-way through making it)."""
        prev = obj.extra[-1] if obj.extra else None
        if prev is None or prev.type != RecType.FILE_SOCKET:
            self.fail(x, "FILE_TCP does not follow its file's FILE_SOCKET")
        sf = prev.fields
        if obj.ftype != FileType.INET_SOCKET or sf["family"] not in (AF_INET, AF_INET6) \
                or sf["protocol"] != IPPROTO_TCP or sf["state"] != TCP_ESTABLISHED:
            self.fail(x, f"FILE_TCP on a file that is not an established TCP socket (file type {obj.ftype}, "
                         f"family {sf['family']}, protocol {sf['protocol']}, state {sf['state']})")

    def mm(self, objref: int):
        img = self.img
        mm = Mm(objref)
        while self.at(RecType.OBJREF):
            self.object()
        m = self.expect(RecType.MM)
        mm.fields = m.fields
        exe = self.ref(m, m.fields["exe_objref"], File, allow_zero=True)
        if exe is not None and exe.ftype not in MAPPABLE_FILES:
            self.fail(m, f"the executable (objref {exe.objref}) is a file of type {exe.ftype}, not a mappable one")
        img.objects[objref] = mm
        prev_end = 0
        for _ in range(m.fields["map_count"]):
            while self.at(RecType.OBJREF):
                self.object()
            v = self.expect(RecType.VMA)
            vf = v.fields
            if vf["vm_start"] % PAGE_SIZE or vf["vm_end"] % PAGE_SIZE or vf["vm_start"] >= vf["vm_end"]:
                self.fail(v, f"bad VMA range {vf['vm_start']:#x}-{vf['vm_end']:#x}")
            if vf["vm_start"] < prev_end:
                self.fail(v, f"VMA {vf['vm_start']:#x} overlaps or is out of order")
            prev_end = vf["vm_end"]
            if vf["vma_type"] not in VmaType._value2member_map_:
                self.fail(v, f"unknown VMA type {vf['vma_type']}")
            if vf["vma_objref"]:
                backing = self.ref(v, vf["vma_objref"], File)
                if (vf["vma_type"] == VmaType.SHARED_ANON) != (backing.ftype == FileType.SHMEM) or \
                        backing.ftype not in MAPPABLE_FILES + (FileType.SHMEM,):
                    self.fail(v, f"VMA type {vf['vma_type']} cannot be backed by a file of type {backing.ftype}")
            elif vf["vma_type"] in (VmaType.FILE, VmaType.SHARED_FILE, VmaType.SHARED_ANON):
                self.fail(v, f"VMA {vf['vm_start']:#x} of type {vf['vma_type']} names no file")
            vma = Vma(vf)
            pos = vf["vm_start"]
            while True:
                p = self.expect(RecType.PAGE, f"pages of VMA {vf['vm_start']:#x}")
                addr = p.fields["vaddr"]
                n = p.payload_len // PAGE_SIZE
                if addr == VMA_LAST_PAGE:
                    if n:
                        self.fail(p, "the VMA's closing PAGE record carries data")
                    break
                if n == 0:
                    self.fail(p, "PAGE record without data")
                if vf["vma_type"] == VmaType.VVAR:
                    self.fail(p, "a VVAR VMA carries no pages (it is kernel data)")
                if addr % PAGE_SIZE or addr < pos or addr + n * PAGE_SIZE > vf["vm_end"]:
                    self.fail(p, f"PAGE {addr:#x}+{n} pages lies outside its VMA "
                                 f"{vf['vm_start']:#x}-{vf['vm_end']:#x} or out of order")
                pos = addr + n * PAGE_SIZE
                digest = hashlib.sha256(p.payload).hexdigest() if (self.hash_pages and p.payload is not None) else None
                vma.runs.append(PageRun(addr, n, p.payload_offset, digest))
            mm.vmas.append(vma)
        a = self.expect(RecType.MM_AUXV)
        mm.auxv = [(e["a_type"], e["a_val"]) for e in a.rtype.decode_entries(a.payload)]
        if len(mm.auxv) != a.fields["nentries"]:
            self.fail(a, f"MM_AUXV nentries {a.fields['nentries']} does not match its {len(mm.auxv)} entries")
        if mm.auxv and mm.auxv[-1][0] != 0:
            self.fail(a, "MM_AUXV does not end with AT_NULL")


def read_image(f: BinaryIO, *, on_record: Callable[[Record], None] | None = None,
               skip_pages: bool = True, hash_pages: bool = False) -> Image:
    """Parse and validate a whole image. Raises ImageError at the first problem."""
    reader = RecordReader(f, skip_pages=skip_pages and on_record is None)
    return _Parser(reader, on_record, hash_pages).image()


def file_data(f: File) -> list[Record]:
    """The FILE_DATA records of a file object: its data extents, ascending (empty: none)."""
    return [r for r in f.extra if r.type == RecType.FILE_DATA]


def file_data_size(f: File) -> tuple[int, int]:
    """(bytes the object's FILE_DATA stores, the file's size): holes are not stored."""
    records = file_data(f)
    return sum(r.payload_len for r in records), (records[0].fields["size"] if records else 0)


def read_file_data(f: BinaryIO | None, obj: File, offset: int, n: int) -> bytes | None:
    """Bytes [offset, offset + n) of the file whose contents `obj`'s FILE_DATA carries, cut at
    the file's size, holes read as zeros (docs/format.md); None when `offset` is at or past
    the size. Payloads the reader left in the image (a seekable input) are read from `f`."""
    records = file_data(obj)
    size = records[0].fields["size"] if records else 0
    if offset >= size:
        return None
    out = bytearray(min(n, size - offset))
    for r in records:
        lo, hi = max(offset, r.fields["offset"]), min(offset + len(out), r.fields["offset"] + r.payload_len)
        if lo >= hi:
            continue
        start = lo - r.fields["offset"]
        if r.payload is not None:
            chunk = bytes(r.payload[start:start + hi - lo])
        elif f is None:
            raise ImageError("the image was read from a stream: file data is not available")
        else:
            f.seek(r.payload_offset + start)
            chunk = f.read(hi - lo)
            if len(chunk) != hi - lo:
                raise ImageError(f"image shrank: file data at offset {r.payload_offset + start} is truncated")
        out[lo - offset:hi - offset] = chunk
    return bytes(out)


def read_pages(f: BinaryIO, run: PageRun) -> bytes:
    """The data of one page run, from a seekable image."""
    f.seek(run.offset)
    data = f.read(run.npages * PAGE_SIZE)
    if len(data) != run.npages * PAGE_SIZE:
        raise ImageError(f"image shrank: page data at offset {run.offset} is truncated")
    return data
