"""Every checkpoint record, declared once.

Each record is `struct ckpt_hdr {u32 type; u32 len}` followed by a fixed part (the seed's C
struct, x86_64 little-endian, natural alignment, padding counted in `len`) and, for some types, a
variable payload (raw bytes, a NUL-terminated string, or an array of fixed-size entries).

From a `RecordType` declaration we derive: the byte layout (`struct.Struct`), the encoder, the
decoder, the length rule the reader enforces, the JSON form and the pretty form. `docs/format.md`
documents the same table; `tests/test_records.py` checks the two agree.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

HDR = struct.Struct("<II")
HDR_SIZE = HDR.size
PAGE_SIZE = 4096

MAGIC_HEAD = 0x00FEED0CC0A2D200
MAGIC_TAIL = 0x002D2A0CC0DEEF00
ARCH_X86_32 = 1  # the seed's only CKPT_ARCH_*
ARCH_X86_64 = 2  # ckptrace's: the seed stopped at x86_32
VMA_LAST_PAGE = 0xFFFFFFFFFFFFFFFF

# Kernel constants of the header (the seed's struct ckpt_const), x86_64 values.
TASK_COMM_LEN = 16
TASK_STOPPED = 4  # TASK.state of a task in a job-control stop (the kernel's __TASK_STOPPED); else 0
TASK_DEAD = 0x80  # TASK.state of a zombie (the kernel's TASK_DEAD: it ran its last)
EXIT_ZOMBIE = 0x20  # TASK.exit_state of a process that exited and that its parent has not reaped
AT_VECTOR_SIZE = 52  # 2 * (AT_VECTOR_SIZE_BASE 22 + AT_VECTOR_SIZE_ARCH 3 + 1): mm->saved_auxv slots
UTS_LEN = 65

# Upper bounds that keep a corrupt `len` from asking for absurd allocations or loops.
MAX_PAGES_PER_RECORD = 4096  # 16 MiB of data per PAGE record
MAX_BLOB = 64 << 20  # FILE_DATA / pipe buffers: 64 MiB per record
MAX_XSAVE = 64 << 10


class RecType(enum.IntEnum):
    HEADER = 1
    HEADER_ARCH = 2
    BUFFER = 3
    STRING = 4
    OBJREF = 5
    TASK = 101
    TASK_OBJS = 102
    THREAD = 103
    CPU = 104
    TASK_CREDS = 105
    TASK_SIGHAND = 106
    TASK_RLIMITS = 107
    TASK_PROC = 108
    TASK_SECCOMP = 109
    TASK_SECCOMP_FILTER = 110
    TASK_SCHED = 111
    TASK_ITIMERS = 112
    TASK_LOCKS = 113
    TASK_POSIX_TIMERS = 114
    TASK_NS = 115
    TASK_SIGINFO = 116
    FILE_TABLE = 301
    FILE_DESC = 302
    FILE_NAME = 303
    FILE = 304
    FILE_PIPE = 305
    FILE_DATA = 306
    FILE_SOCKET = 307
    FILE_EVENTFD = 308
    FILE_EPOLL = 309
    FILE_TIMERFD = 310
    FILE_SIGNALFD = 311
    FILE_INOTIFY = 312
    FILE_TTY = 313
    FILE_OWNER = 314
    FILE_SOCKET_QUEUE = 315
    FILE_STAT = 316
    FILE_TCP = 317
    MM = 401
    VMA = 402
    MM_CONTEXT = 403
    PAGE = 404
    MM_AUXV = 405
    TREE = 501
    TAIL = 9001


class ObjType(enum.IntEnum):
    IGNORE = 0
    FILE_TABLE = 1
    FILE = 2
    MM = 3


class FileType(enum.IntEnum):
    """The seed has IGNORE and GENERIC (1) only (CKPT_FILE_MAX = 2); 2 and up are ckptrace's."""

    IGNORE = 0
    REGULAR = 1  # the seed's CKPT_FILE_GENERIC: a path-named file, directory or device node reopened by path
    PIPE = 2
    FIFO = 3
    UNIX_SOCKET = 4
    INET_SOCKET = 5
    TTY = 6
    EVENTFD = 7
    EPOLL = 8
    TIMERFD = 9
    SIGNALFD = 10
    INOTIFY = 11
    MEMFD = 12
    DELETED = 13  # regular file unlinked while open: contents follow in FILE_DATA
    SHMEM = 14  # a MAP_SHARED anonymous/SysV/memfd segment named by SHARED_ANON VMAs; stored once


# MM.flags: the stable part of the kernel's mm->flags (include/linux/sched/coredump.h): the
# dumpable mode in bits 0-1 (MMF_DUMPABLE_BITS), the core dump filter (/proc/PID/coredump_filter)
# in the 9 bits above (MMF_DUMP_FILTER_SHIFT); 0 as a whole in images written before it was kept
MMF_DUMPABLE_MASK = 0x3
MMF_DUMP_FILTER_SHIFT, MMF_DUMP_FILTER_MASK = 2, 0x1FF
# FILE.f_mode: the kernel's FMODE_READ and FMODE_WRITE of the open file description
FMODE_READ, FMODE_WRITE = 0x1, 0x2
# FILE.f_version of a MEMFD, or of a SHMEM segment that was a memfd: this bit set says the low 32
# bits are the memfd's F_GET_SEALS at dump time; 0 (images written before seals were kept, any
# other segment) says they are unknown.
MEMFD_SEALS_KNOWN = 1 << 32
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8  # <linux/fcntl.h>
F_SEAL_FUTURE_WRITE, F_SEAL_EXEC = 0x10, 0x20  # (Linux 5.1, 6.3: not in Python 3.11's fcntl)
SEAL_NAMES = {F_SEAL_SEAL: "F_SEAL_SEAL", F_SEAL_SHRINK: "F_SEAL_SHRINK", F_SEAL_GROW: "F_SEAL_GROW",
              F_SEAL_WRITE: "F_SEAL_WRITE", F_SEAL_FUTURE_WRITE: "F_SEAL_FUTURE_WRITE", F_SEAL_EXEC: "F_SEAL_EXEC"}


class VmaType(enum.IntEnum):
    """The seed has 0-3 (CKPT_VMA_MAX = 4); 4 and up are ckptrace's."""

    IGNORE = 0
    VDSO = 1
    ANON = 2  # private anonymous (heap, stack, malloc arenas)
    FILE = 3  # private mapping of a file
    SHARED_ANON = 4  # MAP_SHARED|MAP_ANONYMOUS or shmem/memfd: names a SHMEM file; pages stored once
    SHARED_FILE = 5  # MAP_SHARED of a regular file: contents live in the file (FILE_DATA for one on tmpfs)
    VVAR = 6  # [vvar] and [vvar_vclock]: kernel data, no pages stored


# The kernel's VM_* bits by the mnemonic /proc/PID/smaps prints in VmFlags.
VM_FLAG_BITS: dict[str, int] = {
    "rd": 1 << 0, "wr": 1 << 1, "ex": 1 << 2, "sh": 1 << 3,
    "mr": 1 << 4, "mw": 1 << 5, "me": 1 << 6, "ms": 1 << 7,
    "gd": 1 << 8, "um": 1 << 9, "pf": 1 << 10, "uw": 1 << 12,
    "lo": 1 << 13, "io": 1 << 14, "sr": 1 << 15, "rr": 1 << 16,
    "dc": 1 << 17, "de": 1 << 18, "lf": 1 << 19, "ac": 1 << 20,
    "nr": 1 << 21, "ht": 1 << 22, "sf": 1 << 23, "ar": 1 << 24,
    "wf": 1 << 25, "dd": 1 << 26, "sd": 1 << 27, "mm": 1 << 28,
    "hg": 1 << 29, "nh": 1 << 30, "mg": 1 << 31,
    "ss": 1 << 37, "dp": 1 << 40, "ui": 1 << 41, "sl": 1 << 42,
}
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 0x1, 0x2, 0x4, 0x8
# MAP_SHARED as asked for: what /proc/PID/maps shows as "s". VM_SHARED is only set while the
# mapping may be written, so a read-only MAP_SHARED mapping of a file opened O_RDONLY lacks it.
VM_MAYSHARE = 0x80
VM_GROWSDOWN = 0x100
# The seed's CKPT_VMA_NOT_SUPPORTED, as far as today's kernel still has those bits.
VM_NOT_SUPPORTED = {"pf": "VM_PFNMAP", "io": "VM_IO", "ht": "VM_HUGETLB", "mm": "VM_MIXEDMAP"}

PROT_NAMES = {1: "PROT_READ", 2: "PROT_WRITE", 4: "PROT_EXEC"}
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
# FILE_SOCKET.options: (level, optname) of boolean socket options kept, by bit
SOCKOPTS = {0x1: (1, 2), 0x2: (1, 15), 0x4: (1, 9), 0x8: (41, 26), 0x10: (1, 6), 0x20: (1, 16)}
# FILE_SOCKET.state: sock_diag's state, TCP's numbers for every family (a unix listener is 10 too;
# a connected unix or UDP socket 1, an unconnected UDP socket 7; a TCP socket neither listening nor
# connected 7, as the TCP or UDP sockets sock_diag does not list are written: objects/socket.py)
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
# FILE_TCP.options: the TCP options the connection negotiated (TCP_INFO's tcpi_options bits)
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 0x1, 0x2, 0x4
TCP_OPT_NAMES = {TCPI_OPT_TIMESTAMPS: "TIMESTAMPS", TCPI_OPT_SACK: "SACK", TCPI_OPT_WSCALE: "WSCALE"}
# FILE_TCP.flags: TCP_NODELAY and TCP_CORK set on the socket
TCP_FLAG_NODELAY, TCP_FLAG_CORK = 0x1, 0x2
TCP_FLAG_NAMES = {TCP_FLAG_NODELAY: "NODELAY", TCP_FLAG_CORK: "CORK"}
SOCKOPT_NAMES = {0x1: "SO_REUSEADDR", 0x2: "SO_REUSEPORT", 0x4: "SO_KEEPALIVE", 0x8: "IPV6_V6ONLY",
                 0x10: "SO_BROADCAST", 0x20: "SO_PASSCRED"}
# TASK_NS.own: the namespaces a process did not share with the dumper (clone flags)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x04000000, 0x08000000, 0x40000000
CLONE_NEWPID = 0x20000000
# recorded since restore made none of them (0 in images made before): a user, cgroup or time
# namespace of its own. Restore refuses user ones, a cgroup one in an image without its root
# (TASK_NS's sixth and seventh strings), a time one in an image without its name and offsets
# (TASK_NS's eighth string)
CLONE_NEWUSER, CLONE_NEWCGROUP, CLONE_NEWTIME = 0x10000000, 0x02000000, 0x00000080
NS_FLAG_NAMES = {CLONE_NEWNS: "mnt", CLONE_NEWUTS: "uts", CLONE_NEWIPC: "ipc", CLONE_NEWNET: "net",
                 CLONE_NEWUSER: "user", CLONE_NEWCGROUP: "cgroup", CLONE_NEWTIME: "time"}
# TASK_NS.flags (named `net` while LO_DOWN was its only bit; 0 in images made before it):
# NS_LO_DOWN, of a process with a network namespace of its own: its lo was down (0 says up:
# restore brings lo up); NS_OWN_PROC, of one with a mount namespace of its own: /proc there was
# a proc of the namespace's own pid namespace (restore mounts one again); NS_TIME_CHILDREN, of
# one with a time namespace of its own: only its children's was (unshare(CLONE_NEWTIME) made it,
# the process itself had not entered it)
NS_LO_DOWN, NS_OWN_PROC, NS_TIME_CHILDREN = 0x1, 0x2, 0x4
TASK_NS_FLAG_NAMES = {NS_LO_DOWN: "LO_DOWN", NS_OWN_PROC: "OWN_PROC", NS_TIME_CHILDREN: "TIME_CHILDREN"}
NET_MISSING_MAX = 4096  # bytes of TASK_NS's third string: what a new network namespace would lack
MNT_MISSING_MAX = 4096  # and of its fourth: the mounts of its own mount namespace restore does not make
TIME_OFFSETS_MAX = 128  # and of its fifth: its own time namespace's clock offsets, in words
CGROUP_NS_MAX = 16  # and of its sixth: the pid of the first process in its own cgroup namespace
CGROUP_ROOTS_MAX = 8 * 4096  # and of its seventh: that namespace's roots (no longer than TASK_PROC's cgroup text)
TIME_NS_MAX = 128  # and of its eighth: its time namespace and its children's, each a name and two offsets
LOCK_POSIX, LOCK_FLOCK, LOCK_OFD = 1, 2, 3
LOCK_KINDS = {LOCK_POSIX: "POSIX", LOCK_FLOCK: "FLOCK", LOCK_OFD: "OFD"}
LOCK_TYPES = {0: "READ", 1: "WRITE"}  # F_RDLCK, F_WRLCK
PROC_CHILD_SUBREAPER, PROC_THP_DISABLE = 0x1, 0x2  # TASK_PROC.flags
PROC_MEMORY_MERGE = 0x4  # PR_SET_MEMORY_MERGE: KSM for every mapping, present and future
PROC_MCE_KILL_SET, PROC_MCE_KILL_EARLY = 0x8, 0x10  # PR_MCE_KILL_SET, and its early/late choice
# PR_GET_MDWE's PR_MDWE_REFUSE_EXEC_GAIN and PR_MDWE_NO_INHERIT (memory-deny-write-execute, the mm's)
PROC_MDWE_REFUSE_EXEC_GAIN, PROC_MDWE_NO_INHERIT = 0x20, 0x40
THREAD_TSC_SIGSEGV = 0x1  # THREAD.flags: PR_GET_TSC said PR_TSC_SIGSEGV (rdtsc faults)
THREAD_FLAG_NAMES = {THREAD_TSC_SIGSEGV: "TSC_SIGSEGV"}
PROC_FLAG_NAMES = {PROC_CHILD_SUBREAPER: "CHILD_SUBREAPER", PROC_THP_DISABLE: "THP_DISABLE",
                   PROC_MEMORY_MERGE: "MEMORY_MERGE", PROC_MCE_KILL_SET: "MCE_KILL_SET",
                   PROC_MCE_KILL_EARLY: "MCE_KILL_EARLY", PROC_MDWE_REFUSE_EXEC_GAIN: "MDWE_REFUSE_EXEC_GAIN",
                   PROC_MDWE_NO_INHERIT: "MDWE_NO_INHERIT"}
SCHED_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE",
                  6: "SCHED_DEADLINE", 7: "SCHED_EXT"}
MAX_CPU_MASK = 1024  # bytes of affinity mask kept: 8192 CPUs
BPF_MAXINSNS = 4096  # per seccomp filter (include/uapi/linux/bpf_common.h)
SIGINFO_SIZE = 128  # sizeof(siginfo_t): TASK_SIGINFO holds whole ones
NSIG = 64  # signals 1..64: TASK_SIGHAND's entries, the pending and blocked masks' bits
# siginfo_t: si_signo, si_errno, si_code, then (past a 4-byte pad) its union, where a POSIX
# timer's signal has its si_timerid first
SIGINFO_HEAD = struct.Struct("<iii")
SIGINFO_TIMERID = struct.Struct("<i")
SIGINFO_UNION = 16
SI_USER, SI_KERNEL, SI_TIMER, SI_TKILL = 0, 0x80, -2, -6  # si_code: kill, the kernel, a POSIX timer, tkill


def siginfo_signo(info: bytes) -> int:
    return SIGINFO_HEAD.unpack_from(info)[0]


def siginfo_code(info: bytes) -> int:
    return SIGINFO_HEAD.unpack_from(info)[2]


def siginfo_timer(info: bytes) -> int | None:
    """The id of the POSIX timer that queued siginfo `info`, None for any other signal."""
    if siginfo_code(info) != SI_TIMER:
        return None
    return SIGINFO_TIMERID.unpack_from(info, SIGINFO_UNION)[0]


def siginfo_plain(signo: int, code: int = SI_USER) -> bytes:
    """A whole siginfo_t with nothing but its number and code."""
    return SIGINFO_HEAD.pack(signo, 0, code).ljust(SIGINFO_SIZE, b"\0")
SOCKADDR_LEN = 128  # sizeof(struct sockaddr_storage): FILE_SOCKET's payload is two of them
# FILE_INOTIFY's payload: nwatch packed entries, each this 20-byte head (wd, mask, ino, dev)
# followed by the watched path and its NUL, no alignment (see inotify_watches)
INOTIFY_WATCH = struct.Struct("<iIQI")
# FILE_TTY.flags: the terminal's state below was read (images before it have 0: only the first four
# fields), the pty was locked (TIOCGPTLCK), in packet mode (TIOCGPKT), in exclusive mode (TIOCGEXCL);
# the fd was opened as /dev/tty (index and dev name the terminal it stood for, TIOCGDEV); the file
# was hung up (a pty slave whose master was closed, or a vhangup: reads give EOF, the rest EIO)
TTY_STATE, TTY_LOCKED, TTY_PACKET, TTY_EXCLUSIVE, TTY_DEVTTY, TTY_HUNGUP = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
TTY_FLAG_NAMES = {TTY_STATE: "STATE", TTY_LOCKED: "LOCKED", TTY_PACKET: "PACKET", TTY_EXCLUSIVE: "EXCLUSIVE",
                  TTY_DEVTTY: "DEVTTY", TTY_HUNGUP: "HUNGUP"}
# struct termios2's c_cc[NCCS = 19], by index (asm-generic/termbits.h); 17 and 18 are unused
CC_NAMES = ("VINTR", "VQUIT", "VERASE", "VKILL", "VEOF", "VTIME", "VMIN", "VSWTC", "VSTART", "VSTOP",
            "VSUSP", "VEOL", "VREPRINT", "VDISCARD", "VWERASE", "VLNEXT", "VEOL2", "cc17", "cc18")


@dataclass(frozen=True)
class Field:
    """One member of a record's C struct. `code` is a struct format code; `hint` says how to show it."""

    name: str
    code: str
    hint: str = "dec"  # dec | hex | enum | flags | str | time | oct | bytes | signal
    names: Mapping[int, str] | None = None
    doc: str = ""  # for docs/format.md's values column only
    seed_max: int | None = None  # enum values above this are ckptrace's, not the 2011 seed's

    @property
    def is_pad(self) -> bool:
        return self.code.endswith("x")


def pad(n: int) -> Field:
    return Field("_pad", f"{n}x")


def u32(name, hint="dec", names=None, **kw):
    return Field(name, "I", hint, names, **kw)


def s32(name, hint="dec", names=None, **kw):
    return Field(name, "i", hint, names, **kw)


def u64(name, hint="dec", names=None, **kw):
    return Field(name, "Q", hint, names, **kw)


def s64(name, hint="dec", names=None, **kw):
    return Field(name, "q", hint, names, **kw)


def u16(name, hint="dec", names=None, **kw):
    return Field(name, "H", hint, names, **kw)


def u8(name, hint="dec", names=None, **kw):
    return Field(name, "B", hint, names, **kw)


class Payload(enum.Enum):
    NONE = "none"  # fixed size only
    BYTES = "bytes"  # raw bytes, up to `max_payload`
    CSTRING = "cstring"  # NUL-terminated text (the NUL counted in len)
    ENTRIES = "entries"  # array of `entry` structs
    PAGES = "pages"  # whole pages, 1..MAX_PAGES_PER_RECORD (0 only for the VMA terminator)


@dataclass
class RecordType:
    type: RecType
    fields: tuple[Field, ...]
    payload: Payload = Payload.NONE
    max_payload: int = 0
    entry: tuple[Field, ...] = ()
    count_field: str | None = None  # fixed field that must equal the number of entries
    exact_payload: int | None = None  # payload must be exactly this many bytes
    doc: str = ""
    # sizes of the fixed part older ckptrace versions wrote (fields were added at the end, and
    # the format has no version): read with the missing fields 0. Payload-less types only.
    older: tuple[int, ...] = ()
    st: struct.Struct = field(init=False)
    entry_st: struct.Struct | None = field(init=False)

    def __post_init__(self):
        self.st = struct.Struct("<" + "".join(f.code for f in self.fields))
        assert self.st.size % 8 == 0 or self.payload is not Payload.NONE or self.type in (
            RecType.FILE_TABLE, RecType.FILE_DESC), self.type
        self.entry_st = struct.Struct("<" + "".join(f.code for f in self.entry)) if self.entry else None
        self.names = [f.name for f in self.fields if not f.is_pad]
        self.entry_names = [f.name for f in self.entry if not f.is_pad]

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def size(self) -> int:
        """Size of header plus fixed part: the `len` of a record with no payload."""
        return HDR_SIZE + self.st.size

    # -- length rule -------------------------------------------------------------------------
    def check_len(self, length: int) -> str | None:
        """Return why `length` is impossible for this type, or None when it is acceptable."""
        if length - HDR_SIZE in self.older:
            return None
        if length < self.size:
            return f"{self.name} len {length} is shorter than its {self.size}-byte struct"
        extra = length - self.size
        if self.payload is Payload.NONE:
            return None if extra == 0 else f"{self.name} len {length} != {self.size}"
        if self.exact_payload is not None and extra != self.exact_payload:
            return f"{self.name} len {length} != {self.size + self.exact_payload}"
        if self.payload is Payload.PAGES:
            if extra % PAGE_SIZE:
                return f"PAGE len {length} is not 16 plus whole pages"
            if extra // PAGE_SIZE > MAX_PAGES_PER_RECORD:
                return f"PAGE len {length} holds more than {MAX_PAGES_PER_RECORD} pages"
            return None
        if self.payload is Payload.ENTRIES:
            assert self.entry_st is not None
            if extra % self.entry_st.size:
                return f"{self.name} len {length} is not a whole number of {self.entry_st.size}-byte entries"
        if extra > self.max_payload:
            return f"{self.name} len {length} exceeds the maximum {self.size + self.max_payload}"
        if self.payload is Payload.CSTRING and extra == 0:
            return f"{self.name} has no string"
        return None

    # -- encode / decode ---------------------------------------------------------------------
    def encode(self, values: Mapping[str, Any] | None = None, payload: bytes | Iterable = b"") -> bytes:
        values = values or {}
        unknown = set(values) - set(self.names)
        if unknown:
            raise KeyError(f"{self.name} has no field(s) {sorted(unknown)}")
        fixed = self.st.pack(*(values.get(n, 0) for n in self.names))
        body = self.encode_payload(payload)
        return HDR.pack(self.type, HDR_SIZE + len(fixed) + len(body)) + fixed + body

    def header(self, payload_len: int) -> bytes:
        """Just `ckpt_hdr` for a record whose payload the caller writes itself (PAGE data)."""
        return HDR.pack(self.type, self.size + payload_len)

    def encode_payload(self, payload) -> bytes:
        if self.payload is Payload.ENTRIES:
            assert self.entry_st is not None
            if isinstance(payload, (bytes, bytearray, memoryview)):
                # entries already in their C layout (e.g. a sock_filter[] as the kernel gave it)
                if len(payload) % self.entry_st.size:
                    raise ValueError(f"{self.name}: {len(payload)} bytes is not a whole number of entries")
                return bytes(payload)
            return b"".join(self.entry_st.pack(*(e.get(n, 0) for n in self.entry_names)) for e in payload)
        if self.payload is Payload.CSTRING and isinstance(payload, str):
            return payload.encode("utf-8", "surrogateescape") + b"\0"
        return bytes(payload)

    def decode_fixed(self, buf: bytes | memoryview) -> dict[str, Any]:
        return dict(zip(self.names, self.st.unpack_from(buf, 0)))

    def decode_entries(self, payload: bytes | memoryview) -> list[dict[str, Any]]:
        assert self.entry_st is not None
        return [dict(zip(self.entry_names, t)) for t in self.entry_st.iter_unpack(payload)]

    def decode_payload(self, payload: bytes | memoryview):
        if self.payload is Payload.ENTRIES:
            return self.decode_entries(payload)
        if self.payload is Payload.CSTRING:
            return cstring(payload)
        return bytes(payload)

    # -- display -----------------------------------------------------------------------------
    def fields_json(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {f.name: json_value(f, values[f.name]) for f in self.fields if not f.is_pad}

    def payload_json(self, payload, *, with_pages: bool = False):
        if self.payload is Payload.NONE:
            return None
        if self.payload is Payload.ENTRIES:
            return [{f.name: json_value(f, e[f.name]) for f in self.entry if not f.is_pad}
                    for e in self.decode_entries(payload)]
        if self.payload is Payload.CSTRING:
            return cstring(payload)
        if self.type in NAMED_TEXTS:  # NUL-terminated texts, named (see the record's doc)
            parts = [p.decode("utf-8", "surrogateescape") for p in bytes(payload).split(b"\0")]
            return {k: v for k, v in zip(NAMED_TEXTS[self.type], parts[:-1] if parts and parts[-1] == "" else parts)}
        if self.type in (RecType.BUFFER, RecType.STRING):
            # surrogateescape: json_safe shows odd bytes as \\xNN and keeps them in payload_hex
            return bytes(payload).rstrip(b"\0").decode("utf-8", "surrogateescape")
        data = bytes(payload)
        out = {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if with_pages:
            out["hex"] = data.hex()
        return out

    def pretty(self, values: Mapping[str, Any]) -> str:
        return " ".join(f"{f.name}={pretty_value(f, values[f.name])}" for f in self.fields if not f.is_pad)


# The payloads that are NUL-terminated texts, each with a name, in their order (JSON objects;
# an older image's shorter payload has the first ones only).
NAMED_TEXTS = {
    RecType.TASK_PROC: ("cwd", "root", "cgroup", "ns_root"),
    RecType.TASK_NS: ("nodename", "domainname", "net_missing", "mnt_missing", "time_offsets", "cgroup_ns",
                      "cgroup_ns_roots", "time_ns"),
}


def cstring(payload: bytes | memoryview) -> str:
    data = bytes(payload)
    end = data.find(b"\0")
    return (data if end < 0 else data[:end]).decode("utf-8", "surrogateescape")


def json_safe(doc):
    """`doc` with every string that holds bytes no UTF-8 decodes (kept as lone surrogates by
    surrogateescape, e.g. a file name of arbitrary bytes) made lossless and valid Unicode: the
    string shows each such byte as the four characters \\xNN, and a sibling key `KEY_hex` holds
    the exact bytes in hex (for a list of strings, a list with null where a string was valid).
    Strings that are valid UTF-8 are left alone, with no `_hex` key."""
    if isinstance(doc, str):
        return _escaped(doc) if _raw(doc) is not None else doc  # no key to put its bytes beside
    if isinstance(doc, list):
        return [json_safe(x) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for k, v in doc.items():
        k = json_safe(k) if isinstance(k, str) else k
        if isinstance(v, str) and _raw(v) is not None:
            out[k], out[f"{k}_hex"] = _escaped(v), _raw(v).hex()
        elif isinstance(v, list) and any(isinstance(x, str) and _raw(x) is not None for x in v):
            out[k] = [_escaped(x) if isinstance(x, str) else json_safe(x) for x in v]
            out[f"{k}_hex"] = [_raw(x).hex() if isinstance(x, str) and _raw(x) is not None else None for x in v]
        else:
            out[k] = json_safe(v)
    return out


def _raw(text: str) -> bytes | None:
    """The bytes of a surrogateescape-decoded string that is not valid UTF-8; None when it is."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _escaped(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class InotifyWatch:
    wd: int
    mask: int
    ino: int
    dev: int
    path: str  # "" when the dumper found no path for the inode


def inotify_watches(payload: bytes | memoryview, nwatch: int) -> list[InotifyWatch]:
    """The `nwatch` watches of a FILE_INOTIFY payload: entries packed back to back, each a
    20-byte head (s32 wd, u32 mask, u64 ino, u32 dev) then the path and its NUL, with nothing
    before, between or after them. The one parser of that payload: the reader validates with it
    and restore re-adds what it returns. ValueError says why a payload does not hold exactly
    `nwatch` entries."""
    data = bytes(payload)
    out, pos = [], 0
    for i in range(nwatch):
        if pos + INOTIFY_WATCH.size > len(data):
            raise ValueError(f"nwatch {nwatch} but the payload ({len(data)} bytes) ends in watch {i}")
        wd, mask, ino, dev = INOTIFY_WATCH.unpack_from(data, pos)
        pos += INOTIFY_WATCH.size
        end = data.find(b"\0", pos)
        if end < 0:
            raise ValueError(f"the path of watch {i} (wd {wd}) is not NUL-terminated")
        out.append(InotifyWatch(wd, mask, ino, dev, data[pos:end].decode("utf-8", "surrogateescape")))
        pos = end + 1
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes follow the nwatch {nwatch} watches")
    return out


def flag_names(value: int, names: Mapping[int, str]) -> list[str]:
    out = [n for bit, n in names.items() if value & bit]
    rest = value & ~sum(names)
    if rest:
        out.append(hex(rest))
    return out


def json_value(f: Field, v):
    if f.hint == "enum" and f.names:
        return f.names.get(v, v)
    if f.hint == "flags" and f.names:
        return {"value": v, "names": flag_names(v, f.names)}
    if f.hint == "hex":
        return hex(v)
    if f.hint == "signal" and v == 0xFFFFFFFF:
        return -1  # as the text shows it (see pretty_value)
    return v


GLIBC_SIGRTMIN, SIGRTMAX = 34, 64  # (the kernel's real-time signals start at 32; glibc keeps 32 and 33)


def sigset_names(mask: int, empty: str = "-") -> str:
    """A signal set (sigset_t bits: bit n-1 is signal n) as its signals' names, `empty` for none."""
    return " ".join(signal_name(i + 1) for i in range(64) if mask >> i & 1) or empty


def signal_name(n: int) -> str:
    """SIGUSR1, ...; the real-time signals as `kill -l` names them, from the C library's
    SIGRTMIN (34) and SIGRTMAX: SIGRTMIN+1 ... SIGRTMIN+15, SIGRTMAX-14 ... SIGRTMAX-1 (35 was
    SIGRT3, numbered from the kernel's 32, which no tool a user knows says); 32 and 33, which
    glibc keeps for itself, as SIG32 and SIG33."""
    import signal

    try:
        return signal.Signals(n).name
    except ValueError:
        pass
    if not GLIBC_SIGRTMIN < n < SIGRTMAX:
        return f"SIG{n}"
    if n - GLIBC_SIGRTMIN <= (SIGRTMAX - GLIBC_SIGRTMIN) // 2:
        return f"SIGRTMIN+{n - GLIBC_SIGRTMIN}"
    return f"SIGRTMAX-{SIGRTMAX - n}"


def wait_status_text(status: int) -> str:
    """A wait(2) status (a zombie's TASK.exit_code) in words."""
    sig = status & 0x7F
    if sig == 0:
        return f"exited with status {(status >> 8) & 0xFF}"
    return f"killed by {signal_name(sig)}" + (", core dumped" if status & 0x80 else "")


# The last second datetime can show: 9999-12-31 23:59:59 UTC.
_MAX_SHOWN_TIME = 253402300799


def format_time(seconds: int) -> str:
    """HEADER.time for people: UTC, marked with Z ("2023-11-14 22:13:20Z"), the same in every
    command. The field is display-only but for realtime TFD_TIMER_ABSTIME timerfds (their deadline
    is stored against it, see docs/format.md), so a value no calendar date fits
    (a corrupt or hostile image: up to 2**64-1) is shown as the raw number rather than failing:
    plain arithmetic from the epoch, never the platform's time_t."""
    import datetime

    if not 0 <= seconds <= _MAX_SHOWN_TIME:
        return f"{seconds} s since the epoch (out of range)"
    when = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def pretty_value(f: Field, v) -> str:
    if f.hint == "enum" and f.names:
        return str(f.names.get(v, v))
    if f.hint == "flags" and f.names:
        return "|".join(flag_names(v, f.names)) or "0"
    if f.hint == "hex":
        return f"{v:#x}"
    if f.hint == "oct":
        return f"{v:#o}"
    if f.hint == "signal":  # a kernel int kept in a __u32, as the seed does: -1 is "none"
        if v == 0xFFFFFFFF:
            return "-1"
        return signal_name(v) if 0 < v <= 64 else str(v)
    return str(v)


VM_FLAG_NAMES = {bit: name for name, bit in VM_FLAG_BITS.items()}
OBJ_NAMES = {t.value: t.name for t in ObjType}
FILE_NAMES = {t.value: t.name for t in FileType}
VMA_NAMES = {t.value: t.name for t in VmaType}
# FILE.f_flags bits the tools treat apart (x86-64's, as every flag here): O_LARGEFILE, which
# every 64-bit open has; O_TMPFILE, two bits (O_DIRECTORY | __O_TMPFILE) named as one
O_LARGEFILE, O_DIRECTORY, O_TMPFILE = 0o100000, 0o200000, 0o20200000
O_FLAG_NAMES = {0o1: "O_WRONLY", 0o2: "O_RDWR", 0o100: "O_CREAT", 0o1000: "O_TRUNC",
                0o2000: "O_APPEND", 0o4000: "O_NONBLOCK", 0o10000: "O_DSYNC", 0o20000: "O_ASYNC",
                0o40000: "O_DIRECT",
                0o100000: "O_LARGEFILE", 0o200000: "O_DIRECTORY", 0o400000: "O_NOFOLLOW",
                0o1000000: "O_NOATIME", 0o2000000: "O_CLOEXEC", 0o10000000: "O_PATH",
                # (O_TMPFILE is this bit and O_DIRECTORY together: open_flags_text names the pair)
                0o20000000: "__O_TMPFILE"}
REG_NAMES = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
             "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")
RLIMIT_NAMES = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK",
                "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME")

_R = RecordType
RECORDS: dict[int, RecordType] = {r.type: r for r in [
    _R(RecType.HEADER, (
        u64("magic", "hex", doc=f"{MAGIC_HEAD:#018x} (the seed's CHECKPOINT_MAGIC_HEAD)"),
        u16("arch_id", "enum", {ARCH_X86_32: "X86_32", ARCH_X86_64: "x86_64"}, seed_max=ARCH_X86_32,
            doc="ckptrace reads and writes only 2"),
        u16("major"), u16("minor"), u16("patch"),
        u16("task_comm_len"), u16("at_vector_size"), u16("uts_release_len"),
        u16("uts_version_len"), u16("uts_machine_len"), pad(6),
        u64("time", "time", doc="seconds since the epoch; shown, and the origin of realtime TFD_TIMER_ABSTIME timerfd deadlines"), u64("uflags", "hex", doc="0")),
       doc="Image header: magic, architecture, kernel version, kernel constants, time."),
    _R(RecType.HEADER_ARCH, (u32("xstate_size"), u32("regs_size"), u64("xcr0", "hex")),
       doc="x86_64 layout: size of the XSAVE area in every CPU record, of user_regs_struct, and XCR0."),
    _R(RecType.BUFFER, (), Payload.BYTES, max_payload=MAX_BLOB,
       doc="Opaque bytes: the three uts strings after HEADER (65 bytes each, NUL padded); ckptrace writes "
           "no other BUFFER (a pipe's contents are FILE_PIPE's payload)."),
    _R(RecType.STRING, (), Payload.BYTES, max_payload=4096,
       doc="A fixed-length NUL-padded string (the task's comm: 16 bytes)."),
    _R(RecType.OBJREF, (u32("objtype", "enum", OBJ_NAMES), s32("objref")),
       doc="First sighting of a shared object; its records follow."),
    _R(RecType.TASK, (u32("state", doc="0=TASK_RUNNING, 4=__TASK_STOPPED, 128=TASK_DEAD (a zombie): the only values written (see Values)"),
                      u32("exit_state", doc="0, or 32=EXIT_ZOMBIE: an unreaped process, whose records end after its TASK_CREDS"),
                      u32("exit_code", "hex", doc="a zombie's wait status, as wait(2) gives it (exit status << 8, or the killing signal, | 0x80 if it dumped core); else 0"),
                      u32("exit_signal", "signal", doc="the signal the parent gets when the task ends (SIGCHLD 17 as a "
                          "rule; 0: none); the kernel's int kept in a u32, so a thread that is not its process's "
                          "leader, whose exit_signal is -1, has 0xffffffff (decode --json shows -1)"),
                      u64("set_child_tid", "hex", doc="always 0"), u64("clear_child_tid", "hex")),
       doc="One kernel task (thread). Followed by STRING comm and THREAD; a zombie's (exit_state 32) by TASK_CREDS too, and nothing else."),
    _R(RecType.TASK_OBJS, (s32("files_objref"), s32("mm_objref")),
       doc="The task's file table and mm, by objref."),
    _R(RecType.THREAD, (s32("tid"), s32("tgid"), u64("blocked", "hex"), u64("pending", "hex"),
                        u64("sas_ss_sp", "hex"), u64("sas_ss_size"), u32("sas_ss_flags"),
                        u32("flags", "flags", THREAD_FLAG_NAMES,
                            doc="rdtsc faults in this thread (PR_GET_TSC said PR_TSC_SIGSEGV); padding, so 0, in older images"),
                        u64("rseq_ptr", "hex"), u32("rseq_len"), u32("rseq_sig", "hex"),
                        u64("robust_list", "hex", doc="head of the thread's robust futex list (get_robust_list; 0: none registered)"),
                        u32("robust_len", doc="its length as get_robust_list gives it: sizeof(struct robust_list_head), 24"),
                        u32("ioprio", "hex", doc="I/O priority (ioprio_get(IOPRIO_WHO_PROCESS, tid)): (class << 13) + level; "
                                                  "class 1 RT, 2 BE, 3 IDLE; 0: none set, CPU nice decides")),
       doc="Per-thread state: in-namespace tid/tgid, signal mask, thread-pending signals, sigaltstack, flags, rseq registration (area, length, signature; 0 when none), robust futex list, I/O priority. "
           "The fixed part (what follows the 8-byte header) is 80 bytes; older ckptrace versions wrote 48 (up to "
           "flags, which were padding, 0, then) or 64 (up to rseq_sig), read with the missing fields 0.",
       older=(48, 64)),
    _R(RecType.CPU, tuple(u64(n, "hex") for n in REG_NAMES), Payload.BYTES, max_payload=MAX_XSAVE,
       doc="user_regs_struct (NT_PRSTATUS), then the XSAVE area (NT_X86_XSTATE, HEADER_ARCH.xstate_size bytes)."),
    _R(RecType.TASK_CREDS, (
        u32("uid"), u32("euid"), u32("suid"), u32("fsuid"),
        u32("gid"), u32("egid"), u32("sgid"), u32("fsgid"),
        u32("ngroups"), u32("securebits", "hex"),
        u64("cap_inh", "hex"), u64("cap_prm", "hex"), u64("cap_eff", "hex"),
        u64("cap_bnd", "hex"), u64("cap_amb", "hex")),
       Payload.ENTRIES, max_payload=65536 * 4, entry=(u32("gid"),), count_field="ngroups",
       doc="Credentials: a process's (its leader's), or, in a thread that is not its process's leader, that "
           "thread's own, written only when they differ from the leader's (the kernel keeps them per thread); "
           "supplementary groups as u32 entries."),
    _R(RecType.TASK_SIGHAND, (u32("nsig"), pad(4)), Payload.ENTRIES, max_payload=64 * 32,
       entry=(u64("handler", "hex"), u64("flags", "hex"), u64("restorer", "hex"), u64("mask", "hex")),
       count_field="nsig",
       doc="Kernel sigaction of signals 1..nsig (entry i is signal i+1)."),
    _R(RecType.TASK_RLIMITS, (u32("nlimits"), pad(4)), Payload.ENTRIES, max_payload=16 * 16,
       entry=(u64("cur"), u64("max")), count_field="nlimits",
       doc="getrlimit of resources 0..nlimits-1 (RLIM_INFINITY = 2**64-1)."),
    _R(RecType.TASK_SCHED, (u32("policy", "enum", SCHED_POLICIES), s32("nice"), u32("priority"), pad(4),
                            u64("flags", "hex"), u64("runtime"), u64("deadline"), u64("period"), u64("timer_slack")),
       Payload.BYTES, max_payload=MAX_CPU_MASK,
       doc="A thread's scheduling (sched_getattr: policy, real-time priority, flags, "
           "SCHED_DEADLINE runtime/deadline/period in ns; nice from /proc/TID/stat, which a real-time "
           "or deadline thread keeps too), timer slack in ns; payload: its CPU affinity as a bitmask, "
           "bit n = CPU n (sched_getaffinity), trailing zero bytes dropped."),
    _R(RecType.TASK_ITIMERS, tuple(u64(f"{n}_{k}") for n in ("real", "virtual", "prof") for k in ("interval", "value")),
       doc="A process's interval timers (getitimer: ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF), "
           "interval and time left in µs; a value of 0 = disarmed, but for a periodic ITIMER_REAL with "
           "SIGALRM pending (TASK_PROC shared_pending): it has fired, and the kernel arms it again "
           "when that SIGALRM is taken."),
    _R(RecType.TASK_POSIX_TIMERS, (u32("ntimers"), pad(4)), Payload.ENTRIES, max_payload=65536 * 48,
       entry=(s32("id"), s32("clock"), s32("signo"), s32("notify", "hex"), s32("target"), pad(4),
              u64("sival", "hex"), u64("interval"), u64("value")),
       count_field="ntimers",
       doc="A process's POSIX timers (timer_create), present only when it has some: id, clock, "
           "signal, sigev_notify (SIGEV_THREAD_ID 4 added for a thread target), the thread or "
           "process notified (pid inside the namespace), sigev_value, and from timer_gettime the "
           "interval and time left in ns (0: disarmed)."),
    _R(RecType.TASK_SIGINFO, (u32("shared"), u32("nsiginfo")), Payload.BYTES, max_payload=65536 * SIGINFO_SIZE,
       doc="Queued pending signals with their siginfo (present only when some are queued): a "
           "thread's own queue (shared 0, after its CPU records) or its process's (shared 1, with "
           "the leader's process records); payload: nsiginfo siginfo_t of 128 bytes, oldest first, "
           "as PTRACE_PEEKSIGINFO returns them."),
    _R(RecType.TASK_NS, (u32("own", "flags", NS_FLAG_NAMES), u32("flags", "flags", TASK_NS_FLAG_NAMES)), Payload.BYTES,
       max_payload=2 * 65 + NET_MISSING_MAX + MNT_MISSING_MAX + TIME_OFFSETS_MAX + CGROUP_NS_MAX + CGROUP_ROOTS_MAX
       + TIME_NS_MAX,
       doc="Which of a process's mount, uts, ipc, net, user, cgroup and time namespaces were its "
           "own (not the dumper's), as CLONE_NEW* bits (user, cgroup and time: 0 in older "
           "images; restore refuses a process with a user namespace of its own, as it does not "
           "make them; one with a cgroup namespace of its own whose root is not in the image, "
           "and one with a time namespace of its own (or only its children's) whose eighth "
           "string is not, as in older images); flags (named "
           "net in older images, where it was padding before that: 0): LO_DOWN for one with a "
           "network namespace of its own whose lo was down, OWN_PROC for one with a mount "
           "namespace of its own whose /proc was a proc of the namespace's own pid namespace, "
           "TIME_CHILDREN for one whose own time namespace was only its children's "
           "(unshare(CLONE_NEWTIME), not entered); payload: its host name NUL domain name NUL "
           "(uname), then, optionally, what of that network namespace a new one with only lo "
           "lacks, in words (other interfaces, addresses, routes; empty or absent: nothing) NUL, "
           "then, optionally, the mounts only its own mount namespace had, in words (empty or "
           "absent: none) NUL, then, optionally, the clock offsets of its own time namespace "
           "(/proc/PID/timens_offsets), in words (empty or absent: none) NUL, then, for one with "
           "a cgroup namespace of its own (empty or absent otherwise, and in older images): the "
           "pid in the namespace of the image's first process (in TREE order) in that same cgroup "
           "namespace, in decimal (every process sharing it says the same) NUL, then the "
           "namespace's root in each hierarchy, as /proc/PID/cgroup lines (hierarchy id:"
           "controllers:path, each ending in a newline; the path as the dumper sees it, like "
           "TASK_PROC's cgroup text; empty for a hierarchy where the process's cgroup was outside "
           "the root, which is then unknown) NUL, then, for one with a time namespace of its own "
           "(empty or absent otherwise, and in older images): two lines, the time namespace it is "
           "in, then the one its children enter (time_for_children), each NAME MONOTONIC "
           "BOOTTIME in decimal: NAME the namespace's number, from 1 in the order the image's "
           "processes (in TREE order, the one each is in first) first name them (every process "
           "sharing it says the same), 0 for the dumper's own; MONOTONIC and BOOTTIME its clock "
           "offsets in ns (signed; 0 for the dumper's) NUL."),
    _R(RecType.TASK_LOCKS, (u32("nlocks"), pad(4)), Payload.ENTRIES, max_payload=65536 * 32,
       entry=(u32("kind", "enum", LOCK_KINDS), u32("type", "enum", LOCK_TYPES), s32("fd"), pad(4),
              u64("start"), u64("length")),
       count_field="nlocks",
       doc="File locks the process holds, each with the fd to take it again through: POSIX "
           "(fcntl F_SETLK, owned by the process), FLOCK and OFD (owned by the open file, stored "
           "once for all its sharers); byte range start and length (0 = to the end of the file)."),
    _R(RecType.TASK_SECCOMP, (u32("mode", "enum", SECCOMP_MODES), u32("no_new_privs"), u32("nfilters"), pad(4)),
       doc="A thread's seccomp state (only for a thread with a mode or no_new_privs set): "
           "nfilters TASK_SECCOMP_FILTER follow, oldest first."),
    _R(RecType.TASK_SECCOMP_FILTER, (u32("flags", "hex"), u32("ninsns")), Payload.ENTRIES,
       max_payload=BPF_MAXINSNS * 8, entry=(u16("code", "hex"), u8("jt"), u8("jf"), u32("k", "hex")),
       count_field="ninsns",
       doc="One seccomp filter: SECCOMP_FILTER_FLAG_* it was installed with, and its classic BPF "
           "program (struct sock_filter[ninsns]) as PTRACE_SECCOMP_GET_FILTER returns it."),
    _R(RecType.TASK_PROC, (u32("umask", "oct"), u32("personality", "hex"), u64("shared_pending", "hex"),
                           s32("pdeath_signal"), u32("flags", "flags", PROC_FLAG_NAMES), s32("oom_score_adj"),
                           u32("dumpable")),
       Payload.BYTES, max_payload=8 * 4096,
       doc="Per-process state: umask, personality, process-wide pending signals, pdeath signal, "
           "flags (child subreaper, THP disabled, memory merge, the leader's machine-check kill policy, "
           "memory-deny-write-execute as PR_GET_MDWE gives it; 0 in older images), oom_score_adj, dumpable (PR_GET_DUMPABLE); "
           "payload: cwd NUL root NUL (paths as the dumper saw them, like every path in the image), "
           "then the text of /proc/PID/cgroup as the dumper saw it, NUL; for pid 1, then the "
           "namespace's root (init's root directory, what restore --root moves), NUL."),
    _R(RecType.FILE_TABLE, (s32("fdt_nfds"),), doc="A file table; fdt_nfds FILE_DESC follow."),
    _R(RecType.FILE_DESC, (s32("fd_objref"), s32("fd_descriptor"), u32("fd_close_on_exec")),
       doc="One open descriptor: which FILE object, its number, FD_CLOEXEC."),
    _R(RecType.FILE_NAME, (), Payload.CSTRING, max_payload=4096,
       doc="A file's path, NUL-terminated, as the dumper saw it (/proc/PID/fd's link target). A memfd's "
           "(f_type 12) is `memfd:NAME`: the link target `/memfd:NAME (deleted)` without its leading `/` and "
           "its ` (deleted)`; a deleted file's (13) is its path without ` (deleted)`; a SHMEM segment's (14) "
           "is the kernel's name for it as /proc/PID/maps shows it, ` (deleted)` included. A socket has "
           "none, except a unix socket whose file was renamed after its bind (FILE_SOCKET.shutdown 0x200): "
           "the path of its file now, in the directory of the path it was bound to (which getsockname "
           "still says, in FILE_SOCKET), in the same terms as that path."),
    _R(RecType.FILE, (u32("f_type", "enum", FILE_NAMES, seed_max=FileType.REGULAR,
                                         doc="1 is the seed's GENERIC"), u32("f_mode", "hex"),
                      u32("f_flags", "flags", O_FLAG_NAMES), pad(4), u64("f_pos"),
                      u64("f_version", "hex", doc="0; for a MEMFD, or a SHMEM segment that is a memfd, its seals: "
                                           "bit 32 (0x100000000) set, F_GET_SEALS in the low 32 bits (see Values)")),
       doc="An open file description (shared by dup'd fds and across fork)."),
    _R(RecType.FILE_PIPE, (u64("pipe_id"), u32("buffered"), u32("pipe_size")), Payload.BYTES,
       max_payload=MAX_BLOB,
       doc="A pipe or FIFO end: the pipe's inode (ends with one id share the pipe), the pipe's "
           "capacity and its buffered bytes (stored with the first end met)."),
    _R(RecType.FILE_DATA, (u64("size"), u64("offset")), Payload.BYTES, max_payload=MAX_BLOB,
       doc="Contents of a deleted or memfd file of `size` bytes, or of a REGULAR file on a memory "
           "filesystem (tmpfs: POSIX shared memory) that a process maps MAP_SHARED, written once per "
           "file, with its first FILE object: the bytes at `offset`. Holes "
           "are left out: records cover the file's data extents only, in increasing offset order, "
           "not overlapping, each inside `size`; the rest of the file reads as zeros. Every such "
           "file has at least one record (one with no payload, at offset 0, when it holds no data)."),
    _R(RecType.FILE_SOCKET, (u32("family"), u32("type"), u32("protocol"), u32("state"),
                             u64("ino"), u64("peer_ino", doc="the connected socket's inode; for a unix client whose "
                                                 "connection a listener has not accepted yet: the listener's"),
                             u32("backlog", doc="a listener's listen() backlog; a unix client waiting in a "
                                                "listener's accept queue: its place there (1: first)"),
                             u32("shutdown", doc="RCV_SHUTDOWN 1, SEND_SHUTDOWN 2 (sock_diag); 0x100: a unix "
                                                 "stream socket whose peer closed with data unread, whose reader "
                                                 "gets ECONNRESET after the queued bytes; 0x200: a unix socket "
                                                 "bound to a path that no longer names it (unlinked or replaced); "
                                                 "with a FILE_NAME, its file renamed to that name"),
                             u32("options", "flags", SOCKOPT_NAMES), pad(4)),
       Payload.BYTES, max_payload=2 * SOCKADDR_LEN, exact_payload=2 * SOCKADDR_LEN,
       doc="A socket (sock_diag): options = the boolean socket options set on it; payload: exactly 256 "
           "bytes, the local sockaddr (getsockname, zero-padded to 128 bytes) then the peer's "
           "(getpeername, likewise; all zero when there is none). A TCP or UDP socket that sock_diag "
           "does not list (never bound, or TCP bound but neither listening nor connected) has state 7 "
           "(TCP_CLOSE), peer_ino, backlog and shutdown 0; restore binds it again only when its local "
           "sockaddr has a port or an address (an address with port 0: IP_BIND_ADDRESS_NO_PORT)."),
    _R(RecType.FILE_EVENTFD, (u64("count"), u32("flags", "hex"), pad(4)), doc="eventfd counter."),
    _R(RecType.FILE_EPOLL, (u32("nwatch"), pad(4)), Payload.ENTRIES, max_payload=1 << 20,
       entry=(s32("tfd"), u32("events", "hex"), u64("data", "hex")), count_field="nwatch",
       doc="epoll interest list (target fd numbers in the owner's table)."),
    _R(RecType.FILE_TIMERFD, (s32("clockid"), u32("settime_flags", "hex", doc="1=TFD_TIMER_ABSTIME, 2=TFD_TIMER_CANCEL_ON_SET"),
                              u64("ticks"),
                              u64("value_sec", doc="time left; for TFD_TIMER_ABSTIME on clockid 0 or 8 (CLOCK_REALTIME, "
                                  "_ALARM): the deadline minus HEADER.time; 0 0: not armed (with an interval: expired, not forwarded)"),
                              u64("value_nsec"), u64("interval_sec"), u64("interval_nsec")),
       doc="timerfd: clock, remaining time (or realtime deadline), interval, expirations not yet read."),
    _R(RecType.FILE_SIGNALFD, (u64("sigmask", "hex"),), doc="signalfd mask."),
    _R(RecType.FILE_INOTIFY, (u32("nwatch"), pad(4)), Payload.BYTES, max_payload=1 << 20,
       doc="inotify watches: nwatch entries of {s32 wd, u32 mask, u64 ino, u32 dev, cstring path}, packed: "
           "each a 20-byte head then the path and its NUL, the next entry right after the NUL (no "
           "alignment, no padding); nothing follows the last entry. dev is the watched inode's "
           "device as fdinfo's sdev shows it, the kernel's internal dev_t: major << 20 | minor "
           "(FILE_STAT.dev is stat(2)'s st_dev, FILE_TTY.dev the kernel's new_encode_dev: three "
           "encodings of a device number)."),
    _R(RecType.FILE_OWNER, (s32("owner_type", "enum", {0: "F_OWNER_TID", 1: "F_OWNER_PID", 2: "F_OWNER_PGRP"},
                                doc="F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2"),
                            s32("owner_pid", doc="in-namespace tid, pid or process group; 0: none, or outside the namespace"),
                            s32("signal", "signal", doc="F_GETSIG: the signal sent instead of SIGIO; 0: SIGIO"), pad(4)),
       doc="Who gets the file's I/O signals (F_GETOWN_EX, F_GETSIG): only for a file that has an owner or a "
           "signal set; O_ASYNC itself is in FILE.f_flags."),
    _R(RecType.FILE_SOCKET_QUEUE, (u32("addrlen", doc="bytes of the sender's name at the payload's start: 0 for a "
                                                   "stream socket's bytes and for an unnamed sender"),
                                   u32("bytes", doc="bytes of the message after the address")),
       Payload.BYTES, max_payload=MAX_BLOB + SOCKADDR_LEN,
       doc="Data queued for reading on a unix socket, oldest first, after its FILE_SOCKET (only when "
           "there is some): a stream socket's unread bytes in one record; one record per datagram or "
           "seqpacket message. Payload: the sender's name, sun_path as recvfrom returns it (addrlen "
           "bytes, no NUL; an abstract name starts with its NUL), then the message."),
    _R(RecType.FILE_TCP, (u32("inq_seq", doc="sequence number of the first byte of the receive queue (what the "
                                          "program has not read yet): rcv_nxt minus inq_len"),
                          u32("outq_seq", doc="sequence number of the first byte of the send queue (the oldest "
                                              "byte not acknowledged): write_seq minus outq_len"),
                          u32("inq_len", doc="bytes in the receive queue, first in the payload"),
                          u32("outq_len", doc="bytes in the send queue, after the receive queue's in the payload"),
                          u32("unsent_len", doc="of the send queue, the last bytes never sent (SIOCOUTQNSD); "
                                                "the others were sent and wait for their acknowledgment"),
                          u32("mss", doc="the MSS clamp (TCP_MAXSEG in repair mode)"),
                          u32("options", "flags", TCP_OPT_NAMES),
                          u32("snd_wscale"), u32("rcv_wscale"),
                          u32("timestamp", "hex", doc="TCP_TIMESTAMP: the connection's timestamp clock at the dump "
                                                      "(bit 0: microsecond timestamps)"),
                          u32("snd_wl1"), u32("snd_wnd"), u32("max_window"), u32("rcv_wnd"), u32("rcv_wup"),
                          u32("flags", "flags", TCP_FLAG_NAMES)),
       Payload.BYTES, max_payload=MAX_BLOB,
       doc="An established TCP connection, right after its FILE_SOCKET: what TCP_REPAIR reads of it "
           "(sequence numbers of its queues, negotiated options, TCP_REPAIR_WINDOW's struct "
           "tcp_repair_window from snd_wl1 to rcv_wup) and, as payload, the bytes of its receive "
           "queue then those of its send queue, oldest first."),
    _R(RecType.FILE_STAT, (u64("size"), s64("mtime_ns", doc="st_mtime in nanoseconds since the epoch"),
                           u64("ino", doc="informational: a copy on another host has another"),
                           u64("dev", doc="st_dev as the dumper's stat(2) gave it; informational"),
                           u32("mode", "oct", doc="st_mode: the file's type (S_IFMT) and permissions; "
                                                  "0 in an older image (type unknown)"),
                           u32("uid", doc="st_uid: the owner a file whose contents the image carries "
                                          "(FILE_DATA) is made again with; 0 in an older image"),
                           u32("gid", doc="st_gid, likewise"), pad(4)),
       doc="A file named by path, as the dumper saw it: a mapped file or executable, or the REGULAR "
           "file (or directory, or device) of an fd. Restore refuses a path that now names a file "
           "of another type (a FIFO where a regular file was), and a private mapping (or the "
           "executable) of a file whose size or mtime has changed since, whose pages not in the "
           "image would come from the new contents. The fixed part is 48 bytes; older ckptrace "
           "versions wrote 32 (up to dev, and for mapped files only), read with mode 0, or 40 (up "
           "to mode), read with uid and gid 0.",
       older=(32, 40)),
    _R(RecType.FILE_TTY, (u32("index"), u32("is_master"),
                          s32("sid", doc="the session whose controlling terminal it is (TIOCGSID), as a pid "
                                         "inside the namespace; 0: none, or led from outside"),
                          s32("pgrp", doc="its foreground process group (TIOCGPGRP), likewise"),
                          u32("flags", "flags", TTY_FLAG_NAMES,
                              doc="STATE: the fields from here on were read (else 0, as in an older image)"),
                          u32("inq", doc="bytes of input the slave's readers had not read (TIOCINQ); not in the image"),
                          u32("outq", doc="of a master: bytes written on the slave side that the master's "
                                          "readers had not read (FIONREAD); not in the image"),
                          u16("ws_row"), u16("ws_col"), u16("ws_xpixel"), u16("ws_ypixel"),
                          u32("c_iflag", "hex"), u32("c_oflag", "hex"), u32("c_cflag", "hex"), u32("c_lflag", "hex"),
                          u8("c_line"), *(u8(n, doc=f"c_cc[{i}]") for i, n in enumerate(CC_NAMES)),
                          u32("c_ispeed"), u32("c_ospeed"),
                          u32("dev", "hex", doc="the terminal's device number as the kernel encodes it "
                                                "(new_encode_dev: minor & 0xff | major << 8 | (minor & ~0xff) << 12); "
                                                "of a /dev/tty fd (DEVTTY), the terminal it stood for (TIOCGDEV); "
                                                "0: not read (an older image)"),
                          pad(4),
                          s64("ctime_ns", doc="st_ctime of the terminal's node in nanoseconds (a devpts node's "
                                              "is set when its pty is made): tells a terminal of the outside "
                                              "world from a later one given its number; 0: not read")),
       doc="A tty/pty end: index (pts number), which side, session and foreground group; for a pty "
           "(a /dev/ptmx master or a /dev/pts slave), its state: flags, queued byte counts, window size "
           "(struct winsize, TIOCGWINSZ) and termios (struct termios2, TCGETS2: the slave's, also when "
           "read through the master); the terminal's device number and its node's ctime. The fixed part "
           "is 96 bytes; older ckptrace versions wrote 16 (up to pgrp) or 80 (up to c_ospeed), read with "
           "the missing fields 0.",
       older=(16, 80)),
    _R(RecType.MM, (u32("map_count"), s32("exe_objref"), u64("def_flags", "flags", VM_FLAG_NAMES),
                    u64("flags", "hex"), u64("start_code", "hex"), u64("end_code", "hex"), u64("start_data", "hex"),
                    u64("end_data", "hex"), u64("start_brk", "hex"), u64("brk", "hex"),
                    u64("start_stack", "hex"), u64("arg_start", "hex"), u64("arg_end", "hex"),
                    u64("env_start", "hex"), u64("env_end", "hex")),
       doc="Address space; map_count VMA groups and one MM_AUXV follow. def_flags: the VM_* bits "
           "every new mapping gets (lo, lo|lf after mlockall(MCL_FUTURE[|MCL_ONFAULT])). flags: the "
           "stable part of the kernel's mm->flags: bits 0-1 the dumpable mode (PR_GET_DUMPABLE), "
           "bits 2-10 the core dump filter (/proc/PID/coredump_filter, e.g. 0x33 << 2 by default), "
           "the rest 0; 0 as a whole in older images (restore then leaves the filter as it is)."),
    _R(RecType.VMA, (u32("vma_type", "enum", VMA_NAMES, seed_max=VmaType.FILE), s32("vma_objref"), u64("vm_start", "hex"),
                     u64("vm_end", "hex"), u64("vm_page_prot", "flags", PROT_NAMES),
                     u64("vm_flags", "flags", VM_FLAG_NAMES), u64("vm_pgoff")),
       doc="One mapping; its PAGE records and a terminating PAGE follow."),
    _R(RecType.MM_CONTEXT, (u32("ldt_entries"), pad(4)), doc="Reserved (x86 LDT); not written."),
    _R(RecType.PAGE, (u64("vaddr", "hex"),), Payload.PAGES,
       doc="Contents of consecutive pages from vaddr; vaddr 0xffffffffffffffff with no data ends a VMA."),
    _R(RecType.MM_AUXV, (u32("nentries"), pad(4)), Payload.ENTRIES, max_payload=64 * 16,
       entry=(u64("a_type"), u64("a_val", "hex")), count_field="nentries",
       doc="The auxiliary vector (AT_* pairs up to and including AT_NULL)."),
    _R(RecType.TREE, (u32("nr_tasks"), pad(4)), Payload.ENTRIES, max_payload=1 << 22,
       entry=(s32("pid"), s32("tgid"), s32("ppid"), s32("pgid"), s32("sid"), s32("hostpid")),
       count_field="nr_tasks",
       doc="Every task, parents before children and threads right after their leader; pids as seen "
           "inside the namespace (hostpid: at dump time, informational)."),
    _R(RecType.TAIL, (u64("magic", "hex", doc=f"{MAGIC_TAIL:#018x} (the seed's CHECKPOINT_MAGIC_TAIL)"),),
       doc="End of image; nothing follows."),
]}


def rec(t: RecType) -> RecordType:
    return RECORDS[t]
