"""Every parse of /proc text ckptrace does, in one place. Each function takes the /proc root as a
parameter (`root`), so tests can point it at a fake tree and other mounts can be read.

Functions raise NoSuchProcess when the task vanished and AccessDenied when the kernel refuses;
scans (`pids`, `pidns_of`) quietly skip what they cannot read instead.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import CkptError, NoSuchProcess, from_oserror

PROC = "/proc"


def _read(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise from_oserror(exc, what) from None


def sysctl_int(name: str, root: str = PROC) -> int | None:
    """An integer sysctl, `name` as its path under /proc/sys ("kernel/pid_max"); None when this
    kernel has none or it cannot be read."""
    try:
        with open(f"{root}/sys/{name}", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _readlink(path: str, what: str) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise from_oserror(exc, what) from None


# -- discovery -----------------------------------------------------------------------------------

def pids(root: str = PROC) -> list[int]:
    """Host pids of every process (thread-group leaders) visible in `root`."""
    return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def tids(pid: int, root: str = PROC) -> list[int]:
    try:
        return sorted(int(d) for d in os.listdir(f"{root}/{pid}/task") if d.isdigit())
    except OSError as exc:
        raise from_oserror(exc, f"list threads of {pid}") from None


def ns_inode(pid: int, kind: str = "pid", root: str = PROC) -> int | None:
    """Inode of the task's namespace of `kind`, or None when it cannot be read (gone, EACCES)."""
    try:
        link = os.readlink(f"{root}/{pid}/ns/{kind}")
    except OSError:
        return None
    return parse_ns_link(link)


def parse_ns_link(link: str) -> int | None:
    """`pid:[4026531836]` -> 4026531836."""
    lb, rb = link.find("["), link.rfind("]")
    if lb < 0 or rb < lb:
        return None
    try:
        return int(link[lb + 1:rb])
    except ValueError:
        return None


def children(pid: int, root: str = PROC) -> list[int]:
    """Host pids of the children of every thread of `pid` (the kernel lists them per thread)."""
    return [c for tid in tids(pid, root) for c in thread_children(pid, tid, root)]


def thread_children(pid: int, tid: int, root: str = PROC) -> list[int]:
    """Host pids of the children thread `tid` of `pid` forked ([] once the thread is gone)."""
    try:
        with open(f"{root}/{pid}/task/{tid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise from_oserror(exc, f"read children of {pid}/{tid}") from None


# -- status --------------------------------------------------------------------------------------

@dataclass
class Status:
    """The fields of /proc/PID[/task/TID]/status ckptrace uses, already converted."""

    raw: dict[str, str]

    def ints(self, key: str) -> list[int]:
        return [int(x) for x in self.raw.get(key, "").split()]

    def hex(self, key: str) -> int:
        return int(self.raw.get(key, "0"), 16)

    @property
    def nspid(self) -> list[int]:
        return self.ints("NSpid")

    @property
    def nspgid(self) -> list[int]:
        return self.ints("NSpgid")

    @property
    def nssid(self) -> list[int]:
        return self.ints("NSsid")

    @property
    def ppid(self) -> int:
        return int(self.raw.get("PPid", "0"))

    @property
    def tgid(self) -> int:
        return int(self.raw["Tgid"])

    @property
    def tracer(self) -> int:
        return int(self.raw.get("TracerPid", "0"))

    @property
    def umask(self) -> int:
        return int(self.raw.get("Umask", "0022"), 8)

    @property
    def state(self) -> str:
        return self.raw.get("State", "?")[:1]


def status(pid: int, tid: int | None = None, root: str = PROC) -> Status:
    path = f"{root}/{pid}/task/{tid}/status" if tid else f"{root}/{pid}/status"
    raw: dict[str, str] = {}
    for line in _read(path, f"read status of {tid or pid}").splitlines():
        k, sep, v = line.partition(":")
        if sep:
            raw[k] = v.strip()
    return Status(raw)


# -- stat ----------------------------------------------------------------------------------------

def stat_fields(pid: int, root: str = PROC, *, tid: int | None = None) -> list[str]:
    """/proc/PID/stat (or that of thread `tid`) as a list indexed like proc(5) (index 1 = pid,
    2 = comm, 3 = state, ...). comm may hold spaces and parentheses, so split after the last ')'."""
    path = f"{root}/{pid}/stat" if tid is None else f"{root}/{pid}/task/{tid}/stat"
    text = _read(path, f"read stat of {pid}" + ("" if tid is None else f" thread {tid}"))
    lp, rp = text.find("("), text.rfind(")")
    return ["", text[:lp].strip(), text[lp + 1:rp]] + text[rp + 1:].split()


PF_EXITING = 0x4
STAT_STATE, STAT_FLAGS = 3, 9
STAT_NICE = 19  # the task's nice (static_prio), whatever its policy
STAT_STARTTIME = 22  # clock ticks after boot the task started at


def exiting(pid: int, root: str = PROC) -> bool:
    """Process `pid` is gone or on its way out: every thread of it has exited or is exiting
    (PF_EXITING, set as do_exit begins, well before the process shows as a zombie). Asked of
    every thread: the one whose exit ends the process need not be the leader, which may be a
    zombie already (pthread_exit in main) - while another thread runs, the process lives."""
    try:
        threads = tids(pid, root)
    except CkptError:
        return True
    for tid in threads:
        try:
            st = stat_fields(pid, root, tid=tid)
        except CkptError:
            continue  # gone meanwhile
        if st[STAT_STATE] not in ("Z", "X") and not int(st[STAT_FLAGS]) & PF_EXITING:
            return False
    return True


# proc(5) field numbers of the mm values the MM record holds.
STAT_MM = {"start_code": 26, "end_code": 27, "start_stack": 28, "start_data": 45, "end_data": 46,
           "start_brk": 47, "arg_start": 48, "arg_end": 49, "env_start": 50, "env_end": 51}
STAT_EXIT_SIGNAL = 38
STAT_EXIT_CODE = 52  # the wait status, shown for zombies (and to ptrace-capable readers)


def mm_fields(pid: int, root: str = PROC) -> dict[str, int]:
    st = stat_fields(pid, root)
    return {k: int(st[i]) for k, i in STAT_MM.items()}


def exit_signal(pid: int, root: str = PROC) -> int:
    return int(stat_fields(pid, root)[STAT_EXIT_SIGNAL])


# -- memory maps ---------------------------------------------------------------------------------

@dataclass
class Mapping:
    start: int
    end: int
    perms: str  # "rw-p"
    offset: int
    dev: tuple[int, int]
    inode: int
    path: str  # "" for anonymous; "[heap]", "/usr/lib/... (deleted)", ...
    vmflags: list[str] = field(default_factory=list)
    unlinked: bool | None = None  # the file's link count said so (see settle_names); None: not asked

    @property
    def deleted(self) -> bool:
        """The mapped file has no name left. maps cannot tell a file named "x (deleted)" from a
        deleted "x": settle_names asks the file itself when it can."""
        if self.unlinked is not None:
            return self.unlinked
        return self.path.endswith(DELETED_SUFFIX)

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def prot(self) -> int:
        return (1 if self.perms[0] == "r" else 0) | (2 if self.perms[1] == "w" else 0) | \
            (4 if self.perms[2] == "x" else 0)


def _map_line(line: str) -> Mapping:
    # "start-end perms offset major:minor inode   path" (path may contain spaces)
    parts = line.split(None, 5)
    start, end = (int(x, 16) for x in parts[0].split("-"))
    major, minor = (int(x, 16) for x in parts[3].split(":"))
    return Mapping(start, end, parts[1], int(parts[2], 16), (major, minor), int(parts[4]),
                   parts[5].rstrip("\n") if len(parts) > 5 else "")


DELETED_SUFFIX = " (deleted)"  # what /proc appends to the path of a file that lost its name
# shmem objects (shared anonymous, SysV, memfd): their " (deleted)" is what they are
SHMEM_PREFIXES = ("/dev/zero", "/SYSV", "/memfd:")


def settle_names(pid: int, mappings: list[Mapping], root: str = PROC) -> None:
    """The true path of each mapped file whose maps line is ambiguous: maps writes a newline in a
    name as \\012 (and a backslash as itself), and appends " (deleted)" to an unlinked file's
    name, which a live file may end with too. map_files/START-END links to the file itself: its
    target is the path unescaped, its link count whether the name is gone."""
    for m in mappings:
        if not m.path.startswith("/") or m.path.startswith(SHMEM_PREFIXES):
            continue
        if "\\012" not in m.path and not m.path.endswith(DELETED_SUFFIX):
            continue
        link = f"{root}/{pid}/map_files/{m.start:x}-{m.end:x}"
        try:
            st = os.stat(link)
            target = os.readlink(link)
        except OSError:
            continue  # (gone, or not ours to read: the text is all there is)
        m.path, m.unlinked = settle_path(target, st)


def settle_path(shown: str, st: os.stat_result) -> tuple[str, bool]:
    """(path, unlinked) of a file /proc shows as `shown` (a map_files, fd or exe link's target),
    `st` its stat: the name it can be opened by (live_name), or `shown` and True when it has none."""
    if not shown.endswith(DELETED_SUFFIX):
        return shown, False
    name = live_name(shown, st)
    return (name, False) if name is not None else (shown, True)


def live_name(shown: str, st: os.stat_result) -> str | None:
    """The path under which a file that /proc shows as `shown` ("... (deleted)") can be opened
    now, or None if it has none (nlink 0, or no name we can find). Either the name really ends
    in " (deleted)", or the name it was opened by was removed while another link lives on:
    sem_open makes its file under a temporary name, links it to its own, and removes the
    temporary one. That other name is looked for beside the removed one."""
    if st.st_nlink == 0:
        return None

    def same(path: str) -> bool:
        try:
            o = os.stat(path)
        except OSError:
            return False
        return (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino)

    if same(shown):
        return shown
    folder = os.path.dirname(shown[:-len(DELETED_SUFFIX)])
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                try:
                    if e.inode() == st.st_ino and same(e.path):
                        return e.path
                except OSError:
                    continue
    except OSError:
        pass
    return None


def maps(pid: int, root: str = PROC) -> list[Mapping]:
    """Every mapping, without VmFlags, from /proc/PID/maps: unlike smaps, reading it does not walk
    the process's page tables (watch reads tables often, while the process runs)."""
    return [_map_line(line) for line in _read(f"{root}/{pid}/maps", f"read maps of {pid}").splitlines() if line]


def smaps(pid: int, root: str = PROC) -> list[Mapping]:
    """Every mapping with its VmFlags, from one read of /proc/PID/smaps."""
    out: list[Mapping] = []
    for line in _read(f"{root}/{pid}/smaps", f"read smaps of {pid}").splitlines():
        if not line:
            continue
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            out.append(_map_line(line))
        elif head == "VmFlags:" and out:
            out[-1].vmflags = line.split()[1:]
    settle_names(pid, out, root)
    return out


def auxv(pid: int, root: str = PROC) -> list[tuple[int, int]]:
    """AT_* pairs up to and including AT_NULL."""
    try:
        with open(f"{root}/{pid}/auxv", "rb") as f:
            data = f.read()
    except OSError as exc:
        raise from_oserror(exc, f"read auxv of {pid}") from None
    out = []
    for a_type, a_val in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]):
        out.append((a_type, a_val))
        if a_type == 0:
            break
    return out


def personality(pid: int, root: str = PROC) -> int:
    return int(_read(f"{root}/{pid}/personality", f"read personality of {pid}").strip() or "0", 16)


RLIM_INFINITY = (1 << 64) - 1


def comm_bytes(pid: int, tid: int | None = None, root: str = PROC) -> bytes:
    """A task's name (comm) exactly: any bytes but NUL (PR_SET_NAME), a newline of its own
    included; /proc adds one newline after it, and only that one is taken off."""
    path = f"{root}/{pid}/comm" if tid is None else f"{root}/{pid}/task/{tid}/comm"
    with open(path, "rb") as f:
        raw = f.read()
    return raw[:-1] if raw.endswith(b"\n") else raw


def comm(pid: int, root: str = PROC) -> str | None:
    """The process's name (comm), escaped for a message; None when it cannot be read."""
    try:
        return comm_bytes(pid, root=root).decode("utf-8", "backslashreplace")
    except OSError:
        return None


def wchan(tid: int, root: str = PROC) -> str:
    """The kernel function a task sleeps in ("" when running, gone or hidden): to say why a task
    does not stop."""
    try:
        text = _read(f"{root}/{tid}/wchan", f"read wchan of {tid}").strip()
    except CkptError:
        return ""
    return "" if text == "0" else text


def timerslack(tid: int, root: str = PROC) -> int:
    """A thread's timer slack in ns (CAP_SYS_NICE reads any task's). Only /proc/TID has the file,
    not /proc/PID/task/TID."""
    return int(_read(f"{root}/{tid}/timerslack_ns", f"read timerslack_ns of {tid}"))


def timens_offsets(pid: int, root: str = PROC) -> dict[str, int]:
    """/proc/PID/timens_offsets: clock name ("monotonic", "boottime") -> offset in ns. The file
    shows the offsets of the time namespace pid's children enter (time_for_children), which is
    its own once it has entered it. A clock the kernel shows as seconds and nanoseconds (the
    nanoseconds 0..999999999 even below zero: -1.5 s is "-2 500000000")."""
    out = {}
    for line in _read(f"{root}/{pid}/timens_offsets", f"read timens_offsets of {pid}").splitlines():
        clock, secs, nsecs = line.split()
        out[clock] = int(secs) * 1_000_000_000 + int(nsecs)
    return out


def set_timens_offsets(pid: int, offsets: dict[str, int], root: str = PROC) -> None:
    """Write the clock offsets (clock name -> ns) of the time namespace pid's children enter, as
    timens_offsets reads them: the kernel takes them only before any process has entered it,
    from a writer with CAP_SYS_TIME over it, and none that would put its clock below zero."""
    text = "".join(f"{clock} {secs} {nsecs}\n"
                   for clock, (secs, nsecs) in ((c, divmod(ns, 1_000_000_000)) for c, ns in offsets.items()))
    try:
        with open(f"{root}/{pid}/timens_offsets", "w") as f:
            f.write(text)
    except OSError as exc:
        raise from_oserror(exc, f"write timens_offsets of {pid}") from None


def parse_cgroup(text: str) -> list[tuple[int, str, str]]:
    """/proc/PID/cgroup: (hierarchy id, controllers, path) per line; ("", path) on cgroup v2's
    "0::" line, "name=systemd" style names for named v1 hierarchies."""
    out = []
    for line in text.splitlines():
        hid, ctrls, path = line.split(":", 2)
        out.append((int(hid), ctrls, path))
    return out


def cgroup_key(controllers: str) -> str:
    """How a /proc/PID/cgroup line names its hierarchy, normalised: "" for cgroup v2,
    "cpu,cpuacct" (sorted) or "name=systemd" for v1."""
    return ",".join(sorted(c for c in controllers.split(",") if c))


def cgroup_mounts(root: str = PROC) -> dict[str, str]:
    """cgroup_key -> mount point of each hierarchy mounted whole in our mount namespace
    (/proc/self/mountinfo; bind mounts of a sub-cgroup are skipped)."""
    known = {line.split()[0] for line in _read(f"{root}/cgroups", "read /proc/cgroups").splitlines()
             if line and not line.startswith("#")}
    out: dict[str, str] = {}
    for m in mountinfo("self", root):
        if m.root != "/":
            continue
        if m.fstype == "cgroup2":
            out.setdefault("", m.mountpoint)
        elif m.fstype == "cgroup":
            opts = [o for o in m.super_options.split(",") if o in known or o.startswith("name=")]
            out.setdefault(cgroup_key(",".join(opts)), m.mountpoint)
    return out


def cgroup_freezer(mount: str, path: str, key: str) -> str | None:
    """Why the cgroup at `path` of the hierarchy mounted at `mount` (cgroup_key `key`) is frozen
    or freezing, in words naming the file that says so; None when it is not (or no file says).
    cgroup v2: `cgroup.freeze` is 1 in it or in an ancestor (an ancestor's freezes it too);
    v1 freezer: its `freezer.state` is not THAWED (FROZEN or FREEZING, its own or its parent's)."""
    def first_line(p: str) -> str | None:
        try:
            with open(p, "rb") as f:
                return f.readline().decode("ascii", "replace").strip()
        except OSError:
            return None

    parts = [x for x in path.split("/") if x]
    if key == "":
        for n in range(len(parts), 0, -1):
            where = os.path.join(mount, *parts[:n])
            if first_line(os.path.join(where, "cgroup.freeze")) == "1":
                return f"{where}/cgroup.freeze is 1"
        return None
    if "freezer" in key.split(","):
        # (the nearest that exists: a cgroup made under a frozen one starts frozen; the root
        # has no freezer.state and is never frozen)
        for n in range(len(parts), 0, -1):
            where = os.path.join(mount, *parts[:n])
            state = first_line(os.path.join(where, "freezer.state"))
            if state is not None:
                return f"{where}/freezer.state is {state}" if state != "THAWED" else None
    return None


def frozen_cgroups(cgroups: list[tuple[int, str, str]], mounts: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """Of `cgroups` (parse_cgroup lines), those frozen in the hierarchies `mounts`
    (cgroup_mounts) has: (controllers, path, cgroup_freezer's words); "" controllers is v2."""
    for _, controllers, path in cgroups:
        key = cgroup_key(controllers)
        mount = mounts.get(key)
        if mount is not None and (why := cgroup_freezer(mount, path, key)):
            yield controllers, path, why


def cgroup_text(pid: int, root: str = PROC) -> str:
    return _read(f"{root}/{pid}/cgroup", f"read cgroup of {pid}")


SIGEV_NOTIFY = {"signal": 0, "none": 1, "thread": 2}
SIGEV_THREAD_ID = 4


def posix_timers(pid: int, root: str = PROC) -> list[dict[str, int]]:
    """/proc/PID/timers, four lines a timer:
        ID: 7 / signal: 14/0000000000000007 / notify: signal/pid.5105 / ClockID: 1
    -> id, signo, sival, notify (the sigev_notify value: SIGEV_THREAD_ID added for "tid"),
    target (the pid or tid to notify, as the reader's pid namespace numbers it), clock."""
    out: list[dict[str, int]] = []
    for line in _read(f"{root}/{pid}/timers", f"read timers of {pid}").splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "ID":
            out.append({"id": int(value)})
        elif key == "signal" and out:
            signo, sival = value.split("/")
            out[-1].update(signo=int(signo), sival=int(sival, 16))
        elif key == "notify" and out:
            how, target = value.split("/")
            kind, num = target.split(".")
            out[-1].update(notify=SIGEV_NOTIFY[how] | (SIGEV_THREAD_ID if kind == "tid" else 0), target=int(num))
        elif key == "ClockID" and out:
            out[-1]["clock"] = int(value)
    return out


def oom_score_adj(pid: int, root: str = PROC) -> int:
    return int(_read(f"{root}/{pid}/oom_score_adj", f"read oom_score_adj of {pid}"))


def coredump_filter(pid: int, root: str = PROC) -> int:
    """The process's core dump filter (core(5)): the mm's MMF_DUMP_FILTER bits, in hex. A
    process whose memory is gone (exiting) reads as empty: NoSuchProcess, as any read of it."""
    text = _read(f"{root}/{pid}/coredump_filter", f"read coredump_filter of {pid}")
    if not text.strip():
        raise NoSuchProcess(f"process {pid} exited (its coredump_filter is empty)")
    return int(text, 16)


def limits(pid: int, root: str = PROC) -> list[tuple[int, int]]:
    """(soft, hard) of every resource in RLIMIT_* order, from /proc/PID/limits.

    Read here rather than with prlimit(2): prlimit of a task with other user ids needs
    CAP_SYS_RESOURCE, which this root may lack, while the /proc file only needs ptrace access.
    The kernel prints one line per resource, in resource order, columns "%-25s %-20s %-20s".
    """
    text = _read(f"{root}/{pid}/limits", f"read limits of {pid}")
    out = []
    for line in text.splitlines()[1:]:
        if not line.strip():
            continue
        soft, hard = line[26:46].strip(), line[47:67].strip()
        out.append(tuple(RLIM_INFINITY if v == "unlimited" else int(v) for v in (soft, hard)))
    return out


# -- files ---------------------------------------------------------------------------------------

def fds(pid: int, root: str = PROC) -> list[int]:
    try:
        return sorted(int(d) for d in os.listdir(f"{root}/{pid}/fd"))
    except OSError as exc:
        raise from_oserror(exc, f"list fds of {pid}") from None


def fd_target(pid: int, fd: int, root: str = PROC) -> str:
    return _readlink(f"{root}/{pid}/fd/{fd}", f"readlink fd {fd} of {pid}")


def holders(dev: int, ino: int, root: str = PROC, *, skip: int | None = None, name: str | None = None) -> list[int]:
    """Host pids of the processes (but `skip`) with an fd open on the inode (dev, ino). A scan:
    processes and fds that vanish or cannot be read meanwhile are skipped. It stats an fd's
    target through its /proc link (the file itself, whatever mount namespace or root the process
    sees it through), so its cost is the host's number of open fds; with `name` (the file's
    base name), only fds whose link ends with that name are stat'ed: a stat follows the link
    into its filesystem, and one on a hung NFS or FUSE mount would block the scan."""
    return sorted(_fd_holders({(dev, ino): name}, root, skip)[dev, ino])


def _fd_holders(inodes: dict[tuple[int, int], str | None], root: str,
                skip: int | None = None) -> dict[tuple[int, int], set[int]]:
    """For each inode (dev, ino) of `inodes`, the host pids (but `skip`) with an fd open on it,
    in one scan of every fd on the host (holders says how; an inode's base name, None for any).
    A process already found holding every inode has its other fds passed over."""
    found: dict[tuple[int, int], set[int]] = {key: set() for key in inodes}
    names = set(inodes.values())
    for pid, fd, target in fd_links(root):
        if pid == skip or (None not in names and os.path.basename(target) not in names) or \
                all(pid in pids for pids in found.values()):
            continue
        try:
            st = os.stat(f"{root}/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in found:
            found[st.st_dev, st.st_ino].add(pid)
    return found


def file_holders(inodes: dict[tuple[int, int], str], root: str = PROC) -> dict[tuple[int, int], list[int]]:
    """For each inode (dev, ino) of `inodes`, the host pids of the processes holding it open (an
    fd) or mapped, ascending: one scan of every fd and every maps on the host for them all (its
    cost is the host's; a file at a time made it that many times). `inodes` maps each to its
    base name: only fds whose link ends with one are stat'ed (as `holders`, whose reasons hold)."""
    if not inodes:
        return {}  # (no scan)
    found = _fd_holders(inodes, root)
    columns = {(f"{os.major(dev):02x}:{os.minor(dev):02x}", str(ino)): (dev, ino) for dev, ino in inodes}
    inos = {ino for _, ino in columns}
    for pid in pids(root):
        try:
            with open(f"{root}/{pid}/maps") as f:
                text = f.read()
        except OSError:
            continue
        if not any(ino in text for ino in inos):
            continue
        for line in text.splitlines():
            cols = line.split(None, 5)
            if len(cols) >= 5 and (key := columns.get((cols[3], cols[4]))) is not None:
                found[key].add(pid)
    return {key: sorted(pids) for key, pids in found.items()}


def fd_links(root: str = PROC) -> Iterator[tuple[int, int, str]]:
    """(pid, fd, what its /proc link shows) of every fd of every process on the host: a scan
    (its cost is the host's number of open fds) in which processes and fds that vanish or cannot
    be read meanwhile are skipped. Reads links only, never follows one into a filesystem."""
    for d in os.listdir(root):
        if not d.isdigit():
            continue
        try:
            names = os.listdir(f"{root}/{d}/fd")
        except OSError:
            continue
        for n in names:
            try:
                yield int(d), int(n), os.readlink(f"{root}/{d}/fd/{n}")
            except (OSError, ValueError):
                continue


@dataclass
class FdInfo:
    pos: int
    flags: int
    mnt_id: int
    ino: int
    extra: dict[str, str]  # other "key: value" lines, last one wins
    lines: list[str]  # every line, for kinds with repeated entries (epoll tfd, inotify wd)


def fdinfo(pid: int, fd: int, root: str = PROC) -> FdInfo:
    text = _read(f"{root}/{pid}/fdinfo/{fd}", f"read fdinfo {fd} of {pid}")
    kv: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines:
        k, sep, v = line.partition(":")
        if sep:
            kv[k.strip()] = v.strip()
    return FdInfo(int(kv.get("pos", "0")), int(kv.get("flags", "0"), 8), int(kv.get("mnt_id", "0")),
                  int(kv.get("ino", "0")), kv, lines)


def fd_locks(info: FdInfo) -> list[tuple[str, str, int, int | None]]:
    """File locks taken through this open file, from fdinfo's `lock:` lines
    (`lock:\t1: POSIX  ADVISORY  WRITE 2277 fe:00:2146706 5 14`): (kind, READ|WRITE, start,
    end inclusive or None for EOF). Kinds: POSIX, FLOCK, OFDLCK, LEASE, DELEG..."""
    out = []
    for line in info.lines:
        if line.startswith("lock:"):
            f = line.split()
            # lock: N: KIND ADVISORY|MANDATORY READ|WRITE pid dev:ino start end
            kind, mode, start, end = f[2], f[4], int(f[7]), f[8]
            out.append((kind, mode, start, None if end == "EOF" else int(end)))
    return out


def unix_sockets_named(path: str, root: str = PROC) -> set[int]:
    """Inodes of the live unix sockets named `path`, in every network namespace a process is in:
    /proc/PID/net/unix lists PID's namespace only, so it is read once per namespace, through its
    first process found. A name is not a file: a socket keeps its name after its file is
    unlinked (so one of these may be bound to another file than the one at `path` now), and a
    namespace whose every process moved out (its sockets kept alive by their fds) is missed.
    A scan, for naming who holds a path, never for deciding whether it is free."""
    seen: set[int] = set()
    out: set[int] = set()
    for pid in pids(root):
        try:
            ns = os.stat(f"{root}/{pid}/ns/net").st_ino
            if ns in seen:
                continue
            with open(f"{root}/{pid}/net/unix", "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
        except OSError:  # (gone meanwhile, or a kernel thread)
            continue
        seen.add(ns)
        for line in text.splitlines()[1:]:
            # Num RefCount Protocol Flags Type St Inode Path
            parts = line.split(None, 7)
            if len(parts) == 8 and parts[7] == path:
                out.add(int(parts[6]))
    return out


def socket_holders(inodes: set[int], root: str = PROC) -> list[int]:
    """Host pids of the processes with an fd on one of the sockets `inodes` (a scan of every
    fd link: cost as for `holders`, but no link is followed)."""
    want = {f"socket:[{i}]" for i in inodes}
    out: list[int] = []
    for pid, _, target in fd_links(root):
        if target in want and (not out or out[-1] != pid):
            out.append(pid)
    return out


def lock_holders(dev: int, ino: int, root: str = PROC) -> list[int]:
    """Pids (as this process sees them) that /proc/locks says hold a lock on the inode (dev, ino),
    waiters (`->` lines) left out. An OFD lock shows pid -1 (it belongs to an open file, not a
    process) and is left out too; the device is st_dev's, which on some filesystems (btrfs
    subvolumes, overlayfs) is not the superblock's the kernel shows: nothing is found then."""
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    out: list[int] = []
    for line in _read(f"{root}/locks", "read /proc/locks").splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        f = line.split()
        if len(f) >= 6 and f[1] != "->" and f[5] == want and f[4].isdigit() and int(f[4]) not in out:
            out.append(int(f[4]))
    return out


def epoll_targets(info: FdInfo) -> list[dict[str, int]]:
    """`tfd:        5 events:       19 data: 5  pos:0 ino:... sdev:...` -> tfd, events, data, and
    the target file's inode and device (the kernel's dev_t: major << 20 | minor; 0 if absent)."""
    out = []
    for line in info.lines:
        if line.startswith("tfd:"):
            kv = _pairs(line)
            out.append({"tfd": int(kv["tfd"]), "events": int(kv["events"], 16), "data": int(kv["data"], 16),
                        "ino": int(kv.get("ino", "0"), 16), "sdev": int(kv.get("sdev", "0"), 16)})
    return out


def inotify_watches(info: FdInfo) -> list[dict[str, int]]:
    """`inotify wd:1 ino:1a sdev:800001 mask:fff ignored_mask:0 ...` -> wd, ino, sdev, mask."""
    out = []
    for line in info.lines:
        if line.startswith("inotify "):
            kv = _pairs(line[len("inotify "):])
            out.append({"wd": int(kv["wd"]), "ino": int(kv["ino"], 16), "sdev": int(kv["sdev"], 16),
                        "mask": int(kv["mask"], 16),
                        "fhandle_bytes": int(kv.get("fhandle-bytes", "0"), 16),
                        "fhandle_type": int(kv.get("fhandle-type", "0"), 16),
                        "f_handle": kv.get("f_handle", "")})
    return out


def timerfd_state(info: FdInfo) -> dict[str, int]:
    """clockid, ticks, settime flags, it_value and it_interval (sec, nsec) from timerfd fdinfo."""
    kv = info.extra

    def pair(key: str) -> tuple[int, int]:
        v = kv.get(key, "(0, 0)").strip("()").split(",")
        return int(v[0]), int(v[1])

    vs, vn = pair("it_value")
    is_, in_ = pair("it_interval")
    return {"clockid": int(kv.get("clockid", "0")), "ticks": int(kv.get("ticks", "0")),
            "settime_flags": int(kv.get("settime flags", "0"), 8), "value_sec": vs, "value_nsec": vn,
            "interval_sec": is_, "interval_nsec": in_}


def _pairs(text: str) -> dict[str, str]:
    """`a: 1 b:2 c:  3` -> {a: 1, b: 2, c: 3} (fdinfo mixes `k:v` and `k: v`)."""
    toks = text.replace(":", ": ").split()
    out = {}
    key = None
    for t in toks:
        if t.endswith(":"):
            key = t[:-1]
        elif key is not None:
            out[key] = t
            key = None
    return out


@dataclass
class Mount:
    mnt_id: int
    dev: tuple[int, int]
    root: str  # the directory of the filesystem mounted here
    mountpoint: str
    fstype: str = ""
    super_options: str = ""
    source: str = ""  # the mount source ("proc", "/dev/vda", "none"...)


def mountinfo(pid: int | str, root: str = PROC) -> list[Mount]:
    """/proc/PID/mountinfo: `36 35 98:0 /mnt1 /mnt/parent rw ... - ext3 /dev/root rw`."""
    out = []
    for line in _read(f"{root}/{pid}/mountinfo", f"read mountinfo of {pid}").splitlines():
        pre, _, post = line.partition(" - ")
        f, sup = pre.split(), post.split()
        if len(f) < 5:
            continue
        major, minor = (int(x) for x in f[2].split(":"))
        out.append(Mount(int(f[0]), (major, minor), _unescape(f[3]), _unescape(f[4]),
                         sup[0] if sup else "", sup[2] if len(sup) > 2 else "",
                         _unescape(sup[1]) if len(sup) > 1 else ""))
    return out


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal `\040`."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def task_exists(pid: int, root: str = PROC) -> bool:
    try:
        os.stat(f"{root}/{pid}")
        return True
    except OSError:
        return False

