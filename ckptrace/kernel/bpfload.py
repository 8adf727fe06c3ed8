"""Loading bpf/watch.bpf.c with bcc, and the event ABI as declared once in bpf/events.h.

The C structs are not repeated here: `parse_header` reads bpf/events.h (a small, documented
subset of C) and builds the ctypes types; the BPF program also gets the parsed event size as a
cflag and fails to compile (`_Static_assert`) if the two ever disagree. Settings reach the C code
only as `-D` cflags.

bcc is imported inside `WatchProgram.__init__`, never at module import: `ckptrace --help` and the
model/view tests must not pay for it.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import re
import struct
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AccessDenied, HostUnsupported, KernelError, UsageError

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
BPF_NOEXIST, BPF_EXIST = 1, 2  # bpf_map_update_elem flags (uapi linux/bpf.h)


def _bpf_errno(res: int) -> int:
    """The errno of a libbpf call's result (0: it worked): -errno, or errno itself when a call
    reports failure otherwise."""
    if res == 0:
        return 0
    return -res if res < 0 else ctypes.get_errno()
HEADER = BPF_DIR / "events.h"
PROGRAM = BPF_DIR / "watch.bpf.c"
TRACEFS = "/sys/kernel/tracing"

# Every program's name starts with this (kernel program names are cut at 15 characters), so a
# test or an operator can tell from `bpftool prog list` whether anything of ours is loaded.
PROG_PREFIX = "ckpt_"

MAX_NS = 16
RING_BYTES = 16 << 20  # all CPUs' event rings together: ~170 k events of burst while the controller catches up
# records per CPU: 65536 is ~60 ms of one CPU's flat-out mmap loop; 512 keeps a machine with 256
# possible CPUs (common on VMs) at 12 MiB
RING_SLOTS_MIN, RING_SLOTS_MAX = 512, 65536
DRAIN_BATCH = 8192  # dirty-map entries taken per BPF_MAP_LOOKUP_AND_DELETE_BATCH call

_CTYPES = {"__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32,
           "__u64": ctypes.c_uint64, "__s32": ctypes.c_int32, "__s64": ctypes.c_int64,
           "char": ctypes.c_char}


@dataclass
class Abi:
    """What bpf/events.h declares: `#define` constants and structs as ctypes types."""

    consts: dict[str, int] = field(default_factory=dict)
    structs: dict[str, type[ctypes.Structure]] = field(default_factory=dict)

    def event_names(self) -> dict[int, str]:
        """CKPT_EV_MMAP = 4 -> {4: "mmap"}."""
        return {v: k[len("CKPT_EV_"):].lower() for k, v in self.consts.items() if k.startswith("CKPT_EV_")}


def parse_header(text: str) -> Abi:
    """Parse the subset of C bpf/events.h is written in: `#define NAME <int>` and
    `struct NAME { <type> <name>; | char <name>[N]; ... };`. Anything else is ignored, so an
    unsupported field type is an error rather than a silent misparse."""
    abi = Abi()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    for m in re.finditer(r"^#define\s+(CKPT_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", text, flags=re.M):
        abi.consts[m.group(1)] = int(m.group(2), 0)
    for m in re.finditer(r"struct\s+(\w+)\s*\{(.*?)\};", text, flags=re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = decl.strip()
            if not decl:
                continue
            fm = re.fullmatch(r"(\w+)\s+(\w+)(?:\[(\w+)\])?", decl)
            if not fm or fm.group(1) not in _CTYPES:
                raise UsageError(f"{HEADER.name}: struct {m.group(1)}: cannot parse field {decl!r}")
            ctype = _CTYPES[fm.group(1)]
            if fm.group(3):
                n = fm.group(3)
                ctype = ctype * (int(n) if n.isdigit() else abi.consts[n])
            fields.append((fm.group(2), ctype))
        abi.structs[m.group(1)] = type(m.group(1), (ctypes.Structure,), {"_fields_": fields})
    return abi


_STRUCT_CODES = {ctypes.c_uint8: "B", ctypes.c_uint16: "H", ctypes.c_uint32: "I", ctypes.c_uint64: "Q",
                 ctypes.c_int32: "i", ctypes.c_int64: "q"}


def struct_format(ctype: type[ctypes.Structure], names: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    """A `struct` format for a parsed header struct, laid out as the compiler lays it out (the
    ctypes offsets, padding included), in host byte order: these bytes come from a kernel map on
    this host, not from a file. Returns the format and the positions of `names` in its tuples."""
    fmt, at, fields = "=", 0, []
    for name, t in ctype._fields_:
        code = _STRUCT_CODES.get(t)
        if code is None and issubclass(t, ctypes.Array) and t._type_ is ctypes.c_char:
            code = f"{t._length_}s"  # bytes, NULs included
        if code is None:
            raise UsageError(f"struct {ctype.__name__}: field {name} cannot be bulk-decoded")
        off = getattr(ctype, name).offset
        fmt += "x" * (off - at) + code
        at = off + ctypes.sizeof(t)
        fields.append(name)
    fmt += "x" * (ctypes.sizeof(ctype) - at)
    if struct.calcsize(fmt) != ctypes.sizeof(ctype):
        raise UsageError(f"struct {ctype.__name__}: layout not expressible as {fmt!r}")
    return fmt, tuple(fields.index(n) for n in names)


def record_type(ctype: type[ctypes.Structure]):
    """(namedtuple class named and ordered like `ctype`'s fields, decode(buffer, offset) making
    one from the struct's bytes there): an event ring record decoded by one `struct` call. Char
    arrays come as bytes with their NULs (a ctypes view would cut them at the first)."""
    names = tuple(name for name, _ in ctype._fields_)
    fmt, _ = struct_format(ctype, names)
    cls = namedtuple(ctype.__name__, names)
    unpack_from, make = struct.Struct(fmt).unpack_from, tuple.__new__

    def decode(buf, offset: int):
        return make(cls, unpack_from(buf, offset))

    return cls, decode


_ABI: Abi | None = None


def abi() -> Abi:
    global _ABI
    if _ABI is None:
        _ABI = parse_header(HEADER.read_text())
    return _ABI


def possible_cpus(root: str = "/sys/devices/system/cpu") -> int:
    """How many CPU numbers the kernel can hand out (nr_cpu_ids: the highest possible CPU + 1),
    from `possible` ("0-3", "0,2-5", ...)."""
    text = Path(root, "possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def ring_slots_for(ncpu: int, record_size: int) -> int:
    """Records per CPU ring: RING_BYTES shared by the CPUs, a power of two within the bounds."""
    slots = RING_SLOTS_MAX
    while slots > RING_SLOTS_MIN and slots * ncpu * record_size > RING_BYTES:
        slots //= 2
    return slots


def ensure_tracefs() -> None:
    """bcc attaches tracepoints through tracefs: mount it when it is missing."""
    if os.path.exists(f"{TRACEFS}/events"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
            raise OSError(ctypes.get_errno(), "mount")
    except OSError as exc:
        raise HostUnsupported(f"tracefs is not mounted at {TRACEFS} and mounting it failed "
                              f"({os.strerror(exc.errno or 0)}); try scripts/setup.sh") from None


def ns_dev_ino(pid: int | str = "self") -> tuple[int, int]:
    """(st_dev, st_ino) of a pid namespace, as bpf_get_ns_current_pid_tgid wants them."""
    st = os.stat(f"/proc/{pid}/ns/pid")
    return st.st_dev, st.st_ino


# (tracepoint, program) pairs; the fault program is separate so --no-faults never attaches it
STRUCTURAL = [
    ("sched:sched_process_exec", "ckpt_exec"),
    ("sched:sched_process_exit", "ckpt_exit"),
    ("task:task_newtask", "ckpt_newtask"),
    ("task:task_rename", "ckpt_rename"),
    ("signal:signal_deliver", "ckpt_signal"),
    ("signal:signal_generate", "ckpt_signal_sent"),
    ("syscalls:sys_enter_exit_group", "ckpt_exit_group"),
    ("syscalls:sys_enter_exit", "ckpt_exit_sys"),
    ("syscalls:sys_exit_clone", "ckpt_clone_exit"),
    ("syscalls:sys_exit_clone3", "ckpt_clone_exit"),
    ("syscalls:sys_exit_fork", "ckpt_clone_exit"),
    ("syscalls:sys_exit_vfork", "ckpt_clone_exit"),
    # mm calls: one program at their exit, arguments from the registers (see bpf/watch.bpf.c)
    *[(f"syscalls:sys_exit_{s}", "ckpt_mm_exit")
      for s in ("mmap", "munmap", "mprotect", "pkey_mprotect", "mremap", "brk", "madvise", "unshare", "setns")],
]
FAULTS = [("exceptions:page_fault_user", "ckpt_fault"), ("exceptions:page_fault_kernel", "ckpt_fault")]


class WatchProgram:
    """bpf/watch.bpf.c compiled, loaded and attached. Use as a context manager: leaving it
    detaches and unloads every program (bcc closes the fds)."""

    def __init__(self, *, focus_ns: int = 0, faults: bool = True, max_ns: int = MAX_NS,
                 ring_slots: int | None = None):
        if os.geteuid() != 0:
            raise AccessDenied("watch needs root (BPF programs and tracepoints)")
        try:
            from bcc import BPF  # noqa: PLC0415 - heavy, only for this command
        except ImportError:
            raise HostUnsupported("the bcc Python module is not installed (Debian: python3-bpfcc; "
                                  "then scripts/setup.sh links it into .venv)") from None
        ensure_tracefs()
        for tp, _ in STRUCTURAL + (FAULTS if faults else []):
            cat, ev = tp.split(":")
            if not os.path.exists(f"{TRACEFS}/events/{cat}/{ev}"):
                raise HostUnsupported(f"tracepoint {tp} is not available on this kernel")
        self.abi = abi()
        self.event_type = self.abi.structs["ckpt_event"]
        self.key_type = self.abi.structs["ckpt_dirty_key"]
        self.faults = faults
        self.focus_ns = focus_ns
        dev, ino = ns_dev_ino("self")
        self.host_ns = ino
        self.ncpu = possible_cpus()
        self.ring_slots = ring_slots or ring_slots_for(self.ncpu, ctypes.sizeof(self.event_type))
        if self.ring_slots & (self.ring_slots - 1):
            raise UsageError(f"ring size {self.ring_slots} is not a power of two")
        cflags = [
            f"-I{BPF_DIR}",
            f"-DCKPT_HOST_DEV={dev}ULL",
            f"-DCKPT_HOST_INO={ino}ULL",
            f"-DCKPT_FOCUS_NS={focus_ns}ULL",
            f"-DCKPT_MAX_NS={max_ns}",
            f"-DCKPT_NCPU={self.ncpu}",
            f"-DCKPT_RING_SLOTS={self.ring_slots}",
            f"-DCKPT_FAULTS={1 if faults else 0}",
            f"-DCKPT_EVENT_SIZE={ctypes.sizeof(self.event_type)}",
        ]
        self.max_ns = max_ns
        try:
            self.bpf = BPF(src_file=str(PROGRAM).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception for compile and load failures
            raise HostUnsupported(f"cannot compile/load {PROGRAM.name}: {str(exc).splitlines()[0]}") from None
        self.attached: list[tuple[str, str]] = []
        try:
            for tp, fn in STRUCTURAL + (FAULTS if faults else []):
                self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                self.attached.append((tp, fn))
        except Exception as exc:  # bcc: bare Exception on attach failure
            self.close()
            raise HostUnsupported(f"cannot attach {tp}: {str(exc).splitlines()[0]}") from None
        self.tracked = self.bpf[b"tracked"]
        self.track_failed = 0  # processes the controller could not add to `tracked` (full)
        self.ns_slots: list[int] = []
        self._lost = self.bpf[b"lost"]
        self._dirty = self.bpf[b"dirty"] if faults else None
        self._reader = None
        self._on_record = None
        self._batch_ok = True
        self._batch_bufs = None
        self.batch_entries = DRAIN_BATCH
        self._key_format = struct_format(self.key_type, ("tgid", "gen", "chunk"))

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "WatchProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        bpf = getattr(self, "bpf", None)
        if bpf is None:
            return
        self.detach()
        self.bpf = None
        if getattr(self, "_reader", None) is not None:
            self._reader.close()  # its mappings hold the ring map open
            self._reader = None
        bpf.cleanup()

    def detach(self) -> None:
        """Detach every program from its tracepoint: no more records come, and a watched
        workload no longer pays for them; the maps stay, for what they hold to be read."""
        bpf = getattr(self, "bpf", None)
        if bpf is None:
            return

        def detach(tp):
            try:
                bpf.detach_tracepoint(tp=tp.encode())  # closes the tracepoint's perf event
            except Exception:  # already gone; cleanup below closes the fds anyway
                pass

        # Each perf event's release waits for the kernel's RCU grace periods (~70 ms here, the
        # syscall tracepoints' included), 26 of them one after the other took ~1.9 s at every
        # exit; closed from threads the waits overlap in part (~0.9 s).
        from concurrent.futures import ThreadPoolExecutor

        attached = [tp for tp, _ in reversed(getattr(self, "attached", []))]
        self.attached = []
        if attached:
            with ThreadPoolExecutor(max_workers=len(attached)) as pool:
                list(pool.map(detach, attached))

    # -- controller -> kernel --------------------------------------------------------------------
    def add_namespace(self, ino: int) -> bool:
        """Tell the kernel side about a watched namespace (False when its slots are full: tasks of
        that namespace are then still resolved by the controller, one discovery event each)."""
        if ino in self.ns_slots:
            return True
        if len(self.ns_slots) >= self.max_ns:
            return False
        table = self.bpf[b"ns_list"]
        table[ctypes.c_int(len(self.ns_slots))] = ctypes.c_uint64(ino)
        self.ns_slots.append(ino)
        return True

    def forget_namespace(self, ino: int) -> None:
        """Free a dead namespace's slot. The slots are rewritten in place: a task placed meanwhile
        may miss its namespace and take the (slower, still correct) discovery path."""
        if ino not in self.ns_slots:
            return
        self.ns_slots.remove(ino)
        table = self.bpf[b"ns_list"]
        for i in range(self.max_ns):
            table[ctypes.c_int(i)] = ctypes.c_uint64(self.ns_slots[i] if i < len(self.ns_slots) else 0)

    def track(self, hostpid: int, ns: int, pid: int = 0) -> None:
        """Tell the kernel side that `hostpid` lives in namespace `ns`, unless it has an entry for
        it already. That entry is the programs': rewriting it, even with the same generation, would
        lose a generation a program stores meanwhile (an update replaces the element, so a store
        into the one a program holds goes nowhere).

        Except an entry the programs could not place (namespace 0: a namespace beyond `ns_list`'s
        slots, which they never will place): it gets its namespace here, its generation copied.
        Left at 0, every record of the process, and of every child it forks (a child is given
        its parent's namespace at fork), would have to be placed from /proc by the controller,
        and a short-lived child is gone from /proc before its records are read. A generation a
        program stores between the read and the update is lost; that window is once per process."""
        from bcc.libbcc import lib  # noqa: PLC0415 - bcc is loaded by now

        t = self.tracked.Leaf()
        t.ns = ns
        t.pid = pid
        t.announced = 1
        key = self.tracked.Key(hostpid)
        res = lib.bpf_update_elem(self.tracked.map_fd, ctypes.byref(key), ctypes.byref(t), BPF_NOEXIST)
        err = _bpf_errno(res)
        if err == errno.EEXIST:
            try:
                old = self.tracked[key]
            except KeyError:
                return  # gone meanwhile (it exited)
            if old.ns:
                return
            t.gen = old.gen
            err = _bpf_errno(lib.bpf_update_elem(self.tracked.map_fd, ctypes.byref(key), ctypes.byref(t), BPF_EXIST))
            if err == errno.ENOENT:
                return
        if err == errno.E2BIG:
            self.track_failed += 1  # the map is full: counted with the kernel side's `tracked`
        elif err != 0:
            raise KernelError(f"track process {hostpid}", err)

    def untrack(self, hostpid: int) -> None:
        try:
            del self.tracked[self.tracked.Key(hostpid)]
        except KeyError:
            pass

    # -- kernel -> controller --------------------------------------------------------------------
    def open_events(self, callback) -> None:
        """callback(event) for each event ring record, event a `record_type` namedtuple of
        struct ckpt_event; callback may return < 0 to stop the current read after that record."""
        from .ringbuf import EventRings  # noqa: PLC0415

        if self._reader is None:
            cls, decode = record_type(self.event_type)
            c = self.abi.consts
            self._reader = EventRings(self.bpf[b"ring"].map_fd, self.bpf[b"ringpos"].map_fd, ncpu=self.ncpu,
                                      slots=self.ring_slots, record_size=ctypes.sizeof(self.event_type),
                                      stride=c["CKPT_POS_STRIDE"], read_at=c["CKPT_POS_READ"], decode=decode,
                                      seq_of=operator.itemgetter(cls._fields.index("seq")))
        self._on_record = callback

    def poll(self, timeout_ms: int) -> int:
        """Read the rings until they are empty or the callback says stop, after sleeping up to
        timeout_ms if they are empty (the programs do not wake us). Returns how many records
        were read."""
        return self._reader.poll(timeout_ms, self._on_record)

    def backlog(self) -> int:
        """Records sent (numbered) but not handed to the callback yet."""
        r = self._reader
        return max(0, r.written() - r.read_to()) if r is not None else 0

    def records_read(self) -> int:
        """Every record numbered below this has been handed to the callback."""
        return self._reader.read_to() if self._reader is not None else 0

    def read_sent(self, wait_s: float = 0.01, max_s: float | None = None) -> int:
        """Read every record reserved before this call (a record still being written is waited
        for, `wait_s` at most), or as many as `max_s` seconds allow: under a flood the backlog
        can be seconds of work, and the caller has other things to do (drain, stop on time).
        Returns how many were read."""
        reader = self._reader
        mark = reader.written()
        stop = None if max_s is None else time.monotonic() + max_s
        deadline = None  # for a record still being written
        n = 0
        while reader.read_to() < mark:
            step = mark if stop is None else min(mark, reader.read_to() + 1024)
            got = reader.consume(self._on_record, until=step)
            n += got
            now = time.monotonic()
            if stop is not None and now >= stop:
                break
            if not got:
                if deadline is None:
                    deadline = now + wait_s
                elif now >= deadline:
                    break
                time.sleep(0.0001)
        return n

    def lost(self) -> dict[str, int]:
        c = self.abi.consts
        vals = {i: v.value for i, v in self._lost.items() for i in [i.value]}
        skipped = self._reader.skipped if self._reader is not None else 0
        return {"ring": vals.get(c["CKPT_LOST_RING"], 0) + skipped, "dirty": vals.get(c["CKPT_LOST_DIRTY"], 0),
                "tracked": vals.get(c["CKPT_LOST_TRACKED"], 0) + self.track_failed}

    def drain_dirty(self) -> dict[int, list[tuple[int, int, int]]]:
        """Take every written-page mask out of the kernel map, as the kernel keeps them:
        {host tgid: [(mm generation, first page number of the chunk, mask of written pages)]}."""
        if self._dirty is None:
            return {}
        shift = self.abi.consts["CKPT_CHUNK_SHIFT"] - self.abi.consts["CKPT_PAGE_SHIFT"]
        out: dict[int, list[tuple[int, int, int]]] = {}
        for tgid, gen, chunk, mask in self._drain_items():
            chunks = out.get(tgid)
            if chunks is None:
                chunks = out[tgid] = []
            chunks.append((gen, chunk << shift, mask))
        return out

    def _drain_items(self) -> list[tuple[int, int, int, int]]:
        """(tgid, gen, chunk, mask) of every entry, each taken out of the map."""
        if self._batch_ok:
            try:
                return self._drain_batch()
            except KernelError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, 524):  # 524: the kernel's ENOTSUPP
                    raise
                self._batch_ok = False
        # Older kernels: one-by-one. A fault landing between lookup and delete is lost; rare.
        items = []
        for k in list(self._dirty.keys()):
            try:
                v = self._dirty[k]
                del self._dirty[k]
            except KeyError:
                continue
            items.append((k.tgid, k.gen, k.chunk, v.value))
        return items

    def _batch_buffers(self):
        """(keys, values, keys as bytes) for `batch_entries` entries, made again only when that
        number changed (a test lowers it; a crowded hash bucket raises it)."""
        if self._batch_bufs is None or len(self._batch_bufs[1]) != self.batch_entries:
            keys = (self.key_type * self.batch_entries)()
            self._batch_bufs = (keys, (ctypes.c_uint64 * self.batch_entries)(), memoryview(keys).cast("B"))
        return self._batch_bufs

    def _drain_batch(self) -> list[tuple[int, int, int, int]]:
        """BPF_MAP_LOOKUP_AND_DELETE_BATCH into buffers kept from call to call, decoded with one
        `struct.iter_unpack` per batch. (bcc's items_lookup_and_delete_batch allocates buffers
        for the whole map, 6 MiB here, at every call and builds two ctypes objects per entry:
        that was a tenth of the controller's CPU in a fork/exec loop.)"""
        from bcc.libbcc import lib  # noqa: PLC0415 - bcc is loaded by now

        keys, values, raw = self._batch_buffers()
        fmt, order = self._key_format
        size = ctypes.sizeof(self.key_type)
        token_in, token_out, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
        items: list[tuple[int, int, int, int]] = []
        first = True
        while True:
            count.value = len(values)
            res = lib.bpf_lookup_and_delete_batch(self._dirty.map_fd, None if first else ctypes.byref(token_in),
                                                  ctypes.byref(token_out), keys, values, ctypes.byref(count))
            err = _bpf_errno(res)
            n = count.value
            if err and err != errno.ENOENT:
                if err == errno.ENOSPC and n == 0:
                    # one hash bucket holds more entries than the buffers: grow them, go on
                    self.batch_entries *= 4
                    keys, values, raw = self._batch_buffers()
                    continue
                raise KernelError("drain dirty-page map", err)
            if n:
                masks = values[:n]
                for i, k in enumerate(struct.iter_unpack(fmt, raw[:n * size])):
                    items.append((k[order[0]], k[order[1]], k[order[2]], masks[i]))
            if err == errno.ENOENT:  # the whole map has been walked
                return items
            first = False
            token_in.value = token_out.value
