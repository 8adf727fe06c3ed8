"""What `ckptrace inspect` shows, as plain data: the textual app only lays these out.

`InspectState` holds every piece of UI state (selected process, open VMA, hex position, last
search) and answers every question the screens ask, so its logic is tested without a terminal.
Page data is read lazily, one 4 KiB page at a time, from the image's page runs (by offset), and
kept in a small LRU cache: opening a huge image costs only its index.
"""

from __future__ import annotations

import bisect
import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO, Callable

from rich.cells import cell_len

from ..errors import ImageError
from ..image.reader import File, FileTable, Image, Mm, PageRun, Task, Vma, file_data_size, read_file_data
from ..image.records import (FILE_NAMES, O_LARGEFILE, signal_name, sigset_names, LOCK_KINDS, LOCK_TYPES, PAGE_SIZE, REG_NAMES,
                             RLIMIT_NAMES, SCHED_POLICIES, SECCOMP_MODES, TCP_LISTEN, RecType,
                             format_time, wait_status_text)
from ..image.render import (cgroup_line, cpu_list, human, namespace_parts, namespaces_summary,
                             open_flags_text, plural, processes_text, prot_str, queue_note, rlimit_text, socket_name,
                             terminal_safe, vma_what)

ROW = 16  # bytes per hex line; 12-digit address + 16 bytes of hex and ASCII fit in 79 columns
HEX_COL = 14  # where the first hex byte starts in a line
ASCII_COL = HEX_COL + 3 * ROW - 1 + 2
MISSING = "--"  # a byte of a page the image does not hold
PEERS_SHOWN = 3  # other ends of a pipe named in the FDs tab; the rest are counted
FD_COLUMNS = ("fd", "kind", "path / peer", "flags", "offset")
FD_TARGET = FD_COLUMNS.index("path / peer")  # the column that takes what the others leave
MIN_TARGET_WIDTH = 12  # narrower than this, the FDs table scrolls sideways instead
CELL_PADDING = 1  # DataTable's blank column either side of a cell

SA_FLAG_NAMES = {0x1: "NOCLDSTOP", 0x2: "NOCLDWAIT", 0x4: "SIGINFO", 0x04000000: "RESTORER",
                 0x08000000: "ONSTACK", 0x10000000: "RESTART", 0x40000000: "NODEFER",
                 0x80000000: "RESETHAND"}


def signame(n: int) -> str:
    return signal_name(n)  # one naming for every tool (image.records)


def parse_address(text: str) -> int:
    """Addresses are typed in hex, with or without 0x."""
    t = text.strip().lower().replace("_", "")
    if t.startswith("0x"):
        t = t[2:]
    if not t:
        raise ValueError("no address given")
    try:
        return int(t, 16)
    except ValueError:
        raise ValueError(f"not a hex address: {text!r}") from None


def parse_needle(text: str) -> bytes:
    """`x:de ad be ef` (or `0x` followed by hex) searches for bytes; anything else for the string."""
    t = text.strip()
    for prefix in ("x:", "0x"):
        if t.lower().startswith(prefix):
            digits = "".join(t[len(prefix):].split())
            try:
                data = bytes.fromhex(digits)
            except ValueError:
                raise ValueError(f"not hex bytes: {t[len(prefix):]!r}") from None
            if not data:
                raise ValueError("no bytes to search for")
            return data
    if not text:
        raise ValueError("nothing to search for")
    return text.encode("utf-8", "surrogateescape")


def format_row(addr: int, data: bytes | None) -> str:
    """One hex line: address, 16 bytes in hex, the same as ASCII; `data` None: not in the image."""
    if data is None:
        hexpart = " ".join([MISSING] * ROW)
        text = " " * ROW
    else:
        hexpart = " ".join(f"{b:02x}" for b in data)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
    return f"{addr:012x}  {hexpart}  {text}"


@dataclass
class Hit:
    addr: int
    length: int


class InspectState:
    def __init__(self, img: Image, f: BinaryIO | None, *, cache_pages: int = 256):
        self.img = img
        self.f = f
        # a stored page's offset in the image, or (carrying file objref, file offset) of a page of
        # file contents the image carries -> its data
        self.cache: OrderedDict[int | tuple[int, int], bytes] = OrderedDict()
        self.cache_pages = cache_pages
        self.tree_rows = process_tree(img)
        self.pid = self.tree_rows[0][1].tid if self.tree_rows else 0
        self.vma: Vma | None = None
        self.top = 0  # address of the first hex line shown
        self.rows = 16  # hex lines on screen; the app sets it from its layout
        self.mark: Hit | None = None  # highlighted bytes (a jump target or a search hit)
        self.needle: bytes | None = None
        self.message = ""
        self._ends = self._fd_index()

    # -- processes -----------------------------------------------------------------------------
    @property
    def process(self) -> Task:
        t = self.img.task(self.pid)
        assert t is not None
        return t

    @property
    def mm(self) -> Mm:
        if self.process.zombie:
            return Mm(0)  # (a zombie has no memory left: no VMAs to list, search or open)
        return self.img.obj(self.process.mm_objref)

    def tree_label(self, depth: int, t: Task) -> str:
        return f"{'  ' * depth}{t.tid} {t.comm}" + (" <defunct>" if t.zombie else "")

    def zombie_text(self) -> str:
        """What is left of a zombie: it exited, its parent has not reaped it."""
        p = self.process
        return (f"process {p.tid} ({terminal_safe(p.comm)}) is a zombie: "
                f"{wait_status_text(p.fields['exit_code'])}, not reaped by its parent yet; "
                "its name, ids, exit status and owner are all it has left")

    def zombie_note(self, what: str) -> str:
        """One line for a tab that a zombie leaves empty (`what`: "memory", "open files"); ""
        for a live process, whose empty table is just empty."""
        p = self.process
        if not p.zombie:
            return ""
        return (f"process {p.tid} is a zombie ({wait_status_text(p.fields['exit_code'])}): "
                f"it has no {what} left to show")

    def select(self, pid: int) -> None:
        if self.img.task(pid) is None or not self.img.task(pid).is_leader:
            raise LookupError(f"no process {pid} in the image")
        if pid != self.pid:
            self.pid = pid
            self.vma = None
            self.mark = None

    # -- tables --------------------------------------------------------------------------------
    def header_line(self) -> str:
        h = self.img.header
        when = format_time(h["time"])
        return (f"{self.img.uts[0]} {self.img.uts[2]} · {when} · {processes_text(self.img)}, "
                f"{plural(len(self.img.tasks), 'task')} · {human(self.img.size)}")

    def image_text(self) -> str:
        """Everything the header says, and what the image holds."""
        h, a, img = self.img.header, self.img.arch, self.img
        when = format_time(h["time"])
        return "\n".join([
            f"taken      {when}",
            f"kernel     {terminal_safe(img.uts[0])} ({h['major']}.{h['minor']}.{h['patch']})",
            f"version    {terminal_safe(img.uts[1])}",
            f"machine    {terminal_safe(img.uts[2])}",
            f"xsave      {a['xstate_size']} bytes, xcr0 {a['xcr0']:#x}",
            f"records    {img.records}",
            f"size       {human(img.size)} ({img.size} bytes)",
            f"pages      {img.page_count} ({human(img.page_count * PAGE_SIZE)})",
            f"tasks      {len(img.tasks)} in {processes_text(img)}"])

    def vma_rows(self) -> list[tuple[str, ...]]:
        """range, size, prot, stored pages, what: sized so that all five fit beside the tree
        in 80 columns (the full path is in the hex screen's title)."""
        return [(f"{v.start:x}-{v.end:x}", short_size(v.end - v.start),
                 prot_str(v.fields["vm_page_prot"], v.fields["vm_flags"]), str(self.stored_pages(v)),
                 self.vma_what(v, short=True)) for v in self.mm.vmas]

    def vma_what(self, v: Vma, *, short: bool = False) -> str:
        """The backing file, else the kind of memory (render.vma_what)."""
        return vma_what(self.img, self.mm, v, short=short)

    def runs_of(self, vma: Vma) -> list[PageRun]:
        """The stored pages of `vma` (Image.runs_of: a shared segment's at every VMA of it)."""
        return self.img.runs_of(vma)

    def stored_pages(self, vma: Vma) -> int:
        return sum(r.npages for r in self.runs_of(vma))

    def fd_rows(self) -> list[tuple[str, ...]]:
        if self.process.zombie:
            return []
        table = self.img.obj(self.process.files_objref)
        rows = []
        for d in sorted(table.fds, key=lambda d: d["fd_descriptor"]):
            f = self.img.obj(d["fd_objref"])
            rows.append((str(d["fd_descriptor"]), FILE_NAMES.get(f.ftype, str(f.ftype)),
                         self.fd_target(d["fd_objref"], f), open_flags(f.fields["f_flags"], d),
                         str(f.fields["f_pos"])))
        return rows

    def fd_target(self, objref: int, f: File) -> str:
        """Path, or for pipes and sockets what is at the other end (when it is in the image)."""
        extra = {r.type: r for r in f.extra}
        if RecType.FILE_PIPE in extra:
            pid_ = extra[RecType.FILE_PIPE].fields["pipe_id"]
            # Other File objects with this pipe id are the other end; the same object seen in
            # another process (fork, shared table) is this end again.
            others = [e for e in self._ends.get(("pipe", pid_), []) if e[1] != objref]
            shown = ", ".join(f"{p}:{fd}" for p, _, fd in others[:PEERS_SHOWN])
            if len(others) > PEERS_SHOWN:
                shown += f" … +{len(others) - PEERS_SHOWN} more"
            return f"pipe:[{pid_}]" + (" ↔ " + shown if others else "")
        if RecType.FILE_SOCKET in extra:
            s = extra[RecType.FILE_SOCKET]
            name = socket_name(s.fields["family"], bytes(s.payload or b"")) or f.name or "socket"
            if s.fields["state"] == TCP_LISTEN:  # sock_diag reports unix listeners with it too
                return f"{name} (listening)"
            peer = [e for e in self._ends.get(("sock", s.fields["peer_ino"]), [])] if s.fields["peer_ino"] else []
            if peer:
                return f"{name} ↔ {peer[0][0]}:{peer[0][2]}" + queue_note(f)
            remote = socket_name(s.fields["family"], bytes(s.payload or b"")[128:])
            return (f"{name} → {remote}" if remote else name) + queue_note(f)
        return f.name or ""

    def _fd_index(self) -> dict[tuple[str, int], list[tuple[int, int, int]]]:
        """(pipe id | socket inode) -> [(pid, objref, fd)] over every process, to name peers."""
        out: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for p in self.img.processes():
            table = self.img.obj(p.files_objref)
            if not isinstance(table, FileTable):
                continue
            for d in table.fds:
                f = self.img.obj(d["fd_objref"])
                for r in f.extra:
                    if r.type == RecType.FILE_PIPE:
                        key = ("pipe", r.fields["pipe_id"])
                    elif r.type == RecType.FILE_SOCKET:
                        key = ("sock", r.fields["ino"])
                    else:
                        continue
                    out.setdefault(key, []).append((p.tid, d["fd_objref"], d["fd_descriptor"]))
        return out

    def thread_rows(self) -> list[tuple[str, ...]]:
        if self.process.zombie:
            return [(str(self.pid), self.process.comm, "exited (zombie)", "-", "-")]
        return [(str(t.tid), t.comm, syscall_state(t), f"{t.regs['rip']:#x}", f"{t.regs['rsp']:#x}")
                for t in self.img.threads_of(self.pid)]

    def registers(self, tid: int) -> str:
        t = self.img.task(tid)
        if t is None:
            return ""
        if t.zombie:
            return self.zombie_text()
        cells = [f"{n:>8} {t.regs[n]:016x}" for n in REG_NAMES]
        half = (len(cells) + 1) // 2
        lines = [f"thread {tid} ({terminal_safe(t.comm)}), xsave {len(t.xsave or b'')} bytes"]
        if t.sched:
            s = t.sched
            cpus = int.from_bytes(t.affinity, "little")
            lines.append(f"{SCHED_POLICIES.get(s['policy'], s['policy'])} nice {s['nice']} priority {s['priority']}"
                         f"  CPUs {cpu_list(cpus)}  timer slack {s['timer_slack']} ns")
        for i in range(half):
            lines.append(cells[i] + ("   " + cells[half + i] if half + i < len(cells) else ""))
        return "\n".join(lines)

    def signals_text(self) -> str:
        p = self.process
        if p.zombie:
            return self.zombie_text()
        out = ["process-wide pending: " + sigset_names(p.proc["shared_pending"] if p.proc else 0)]
        for t in self.img.threads_of(self.pid):
            out.append(f"thread {t.tid}: blocked {sigset_names(t.thread['blocked'])}")
            out.append(f"{'':>{len(str(t.tid)) + 8}}pending {sigset_names(t.thread['pending'])}")
            if t.thread["sas_ss_size"]:
                out.append(f"{'':>{len(str(t.tid)) + 8}}altstack {t.thread['sas_ss_sp']:#x}+{t.thread['sas_ss_size']}")
        it = p.itimers or {}
        armed = [f"{n} {it[n + '_value'] / 1e6:g}s" + (f" every {it[n + '_interval'] / 1e6:g}s" if it[n + "_interval"] else "")
                 for n in ("real", "virtual", "prof") if it.get(n + "_value")]
        out.append("interval timers: " + (", ".join(armed) or "none"))
        for pt in p.posix_timers:
            when = (f"{pt['value'] / 1e9:g}s" + (f" every {pt['interval'] / 1e9:g}s" if pt["interval"] else "")
                    if pt["value"] else "disarmed")
            how = "no signal" if pt["notify"] & 3 == 1 else signame(pt["signo"]) + (
                f" to thread {pt['target']}" if pt["notify"] & 4 else "")
            out.append(f"POSIX timer {pt['id']}: clock {pt['clock']}, {how}, {when}")
        out.append("")
        out.append("handlers (all others SIG_DFL):")
        shown = 0
        for i, sa in enumerate(p.sighand):
            h = sa["handler"]
            if h == 0:
                continue
            what = "SIG_IGN" if h == 1 else f"{h:#x}"
            flags = "|".join(n for bit, n in SA_FLAG_NAMES.items() if sa["flags"] & bit) or "0"
            mask = f" mask {sigset_names(sa['mask'])}" if sa["mask"] else ""
            out.append(f"  {signame(i + 1):<10} {what:<16} {flags}{mask}")
            shown += 1
        if not shown:
            out.append("  (none)")
        return "\n".join(out)

    def creds_text(self) -> str:
        p = self.process
        c = p.creds or {}
        out = [f"uid  {c.get('uid')} euid {c.get('euid')} suid {c.get('suid')} fsuid {c.get('fsuid')}",
               f"gid  {c.get('gid')} egid {c.get('egid')} sgid {c.get('sgid')} fsgid {c.get('fsgid')}",
               "groups " + (" ".join(map(str, p.groups)) or "-"),
               f"securebits {c.get('securebits', 0):#x}"]
        for k in ("cap_eff", "cap_prm", "cap_inh", "cap_bnd", "cap_amb"):
            out.append(f"{k:<10} {c.get(k, 0):016x}")
        if p.proc:
            out.append(f"umask {p.proc['umask']:04o}  personality {p.proc['personality']:#x}")
        sc = p.seccomp or {}
        mode = SECCOMP_MODES.get(sc.get("mode", 0), sc.get("mode"))
        out.append(f"seccomp {mode}" + (f", {len(p.seccomp_filters)} filter(s) of "
                                        + "+".join(str(len(i) // 8) for _, i in p.seccomp_filters) + " insns"
                                        if p.seccomp_filters else "")
                   + f"  no_new_privs {sc.get('no_new_privs', 0)}")
        out += [f"cwd  {terminal_safe(p.cwd)}", f"root {terminal_safe(p.root)}"]
        out += [f"cgroup {terminal_safe(cgroup_line(*cg))}" for cg in p.cgroups]
        ns = namespace_parts(p.tid, namespaces_summary(p))
        out += [f"{'namespaces' if i == 0 else '':<10} {terminal_safe(part)}" for i, part in enumerate(ns)]
        for lk in p.locks:
            span = f"bytes {lk['start']}+{lk['length']}" if lk["length"] else f"from {lk['start']} to EOF"
            out.append(f"lock fd {lk['fd']}: {LOCK_KINDS.get(lk['kind'], lk['kind'])} "
                       f"{LOCK_TYPES.get(lk['type'], lk['type'])} {span}")
        out += ["", "rlimits (soft / hard):"]
        for i, r in enumerate(p.rlimits):
            name = RLIMIT_NAMES[i] if i < len(RLIMIT_NAMES) else str(i)
            out.append(f"  {name:<11} {rlimit_text(r['cur']):>20} {rlimit_text(r['max']):>20}")
        return "\n".join(out)

    # -- pages ---------------------------------------------------------------------------------
    def page(self, vma: Vma, addr: int) -> bytes | None:
        """The page holding `addr` as the image has it, or None when the image has no copy: a
        stored page, else the page of the mapped file's contents the image carries (file_pages)."""
        base = addr - addr % PAGE_SIZE
        runs = self.runs_of(vma)
        i = bisect.bisect_right(runs, base, key=lambda r: r.vaddr) - 1  # runs are in address order
        if i >= 0 and base < runs[i].vaddr + runs[i].npages * PAGE_SIZE:
            return self._read(runs[i].offset + (base - runs[i].vaddr))
        return self._file_page(vma, base)

    def file_pages(self, vma: Vma) -> File | None:
        """The object carrying the contents of the file `vma` maps (shared memory on tmpfs, a
        memfd, a deleted file: Image.contents_of), whose pages restore maps where the image
        stores none; None when they live in the file (or it maps none)."""
        ref = vma.fields["vma_objref"]
        f = self.img.obj(ref) if ref else None
        return self.img.contents_of(f) if isinstance(f, File) else None

    def file_offset(self, vma: Vma, addr: int) -> int:
        """Where in its file the byte of `vma` at `addr` is (the VMA maps from page vm_pgoff)."""
        return vma.fields["vm_pgoff"] * PAGE_SIZE + (addr - vma.start)

    def _file_page(self, vma: Vma, base: int) -> bytes | None:
        """The page at `base` of `vma` from the file contents the image carries; None without
        them, and past the file's end (touching it there is SIGBUS). The last page's bytes past
        the end read as zeros, as the kernel maps them."""
        carrier = self.file_pages(vma)
        if carrier is None:
            return None
        key = (carrier.objref, self.file_offset(vma, base))
        data = self.cache.get(key)
        if data is None:
            data = read_file_data(self.f, carrier, key[1], PAGE_SIZE)
            if data is None:
                return None
            data = data.ljust(PAGE_SIZE, b"\0")
            self._remember(key, data)
        else:
            self.cache.move_to_end(key)
        return data

    def _remember(self, key: int | tuple[int, int], data: bytes) -> None:
        self.cache[key] = data
        if len(self.cache) > self.cache_pages:
            self.cache.popitem(last=False)

    def _read(self, offset: int) -> bytes:
        data = self.cache.get(offset)
        if data is not None:
            self.cache.move_to_end(offset)
            return data
        if self.f is None:
            raise ImageError("the image was read from a stream: page data is not available")
        self.f.seek(offset)
        data = self.f.read(PAGE_SIZE)
        if len(data) != PAGE_SIZE:
            raise ImageError(f"image shrank: page data at offset {offset} is truncated")
        self._remember(offset, data)
        return data

    # -- hex view ------------------------------------------------------------------------------
    def open_vma(self, index: int) -> Vma:
        self.vma = self.mm.vmas[index]
        self.top = self.vma.start
        self.mark = None
        self.message = ""
        return self.vma

    @property
    def vma_index(self) -> int:
        return self.mm.vmas.index(self.vma) if self.vma is not None else -1

    def hex_title(self) -> str:
        v = self.vma
        assert v is not None
        # the page count before the name: a long path is what the screen's width cuts off
        carried = " + file contents" if self.file_pages(v) is not None else ""
        return (f"{v.start:x}-{v.end:x} {prot_str(v.fields['vm_page_prot'], v.fields['vm_flags'])} "
                f"· {self.stored_pages(v)}/{(v.end - v.start) // PAGE_SIZE} pages{carried} in image · {self.vma_what(v)}")

    def hex_rows(self) -> list[tuple[int, bytes | None]]:
        v = self.vma
        assert v is not None
        out = []
        for i in range(self.rows):
            a = self.top + i * ROW
            if a >= v.end:
                break
            page = self.page(v, a)
            out.append((a, None if page is None else page[a % PAGE_SIZE:a % PAGE_SIZE + ROW]))
        return out

    def hex_lines(self) -> list[str]:
        return [format_row(a, d) for a, d in self.hex_rows()]

    def marked_columns(self, addr: int) -> list[int]:
        """Indexes (0..15) of the highlighted bytes in the line starting at `addr`."""
        if self.mark is None:
            return []
        lo, hi = self.mark.addr, self.mark.addr + self.mark.length
        return [i for i in range(ROW) if lo <= addr + i < hi]

    def clamp_top(self, top: int) -> int:
        v = self.vma
        assert v is not None
        last = max(v.start, v.end - self.rows * ROW)
        return min(max(top - top % ROW, v.start), last)

    def hex_status(self) -> str:
        """The line under the bytes: where the screen is (its first and last byte, and which
        page of the VMA the first line is in), then what the last jump or search said."""
        v = self.vma
        assert v is not None
        last = min(self.top + self.rows * ROW, v.end) - 1
        where = (f"{self.top:#x}-{last:#x} · page {(self.top - v.start) // PAGE_SIZE + 1}"
                 f"/{(v.end - v.start) // PAGE_SIZE}")
        parts = [where] + ([self.message] if self.message else []) + [self.file_source(self.top, last)]
        return " · ".join(p for p in parts if p)

    def file_source(self, lo: int, hi: int) -> str:
        """Where the bytes shown at [lo, hi] come from when some are the mapped file's contents
        as the image carries them, not stored pages: "file contents in image, offset 0x1000"
        (the file offset of the first such byte); "" otherwise."""
        v = self.vma
        assert v is not None
        if self.file_pages(v) is None:
            return ""
        runs = self.runs_of(v)
        for base in range(lo - lo % PAGE_SIZE, hi + 1, PAGE_SIZE):
            if any(r.vaddr <= base < r.vaddr + r.npages * PAGE_SIZE for r in runs):
                continue  # (a stored page: what the process wrote over its private copy)
            if self._file_page(v, base) is not None:
                return f"file contents in image, offset {self.file_offset(v, max(base, lo)):#x}"
        return ""

    def scroll(self, lines: int) -> None:
        self.top = self.clamp_top(self.top + lines * ROW)
        self.message = ""  # what a jump or search said is about where the screen no longer is

    def page_down(self) -> None:
        self.scroll(self.rows)

    def page_up(self) -> None:
        self.scroll(-self.rows)

    def home(self) -> None:
        self.top = self.clamp_top(0)
        self.message = ""

    def end(self) -> None:
        self.top = self.clamp_top(1 << 64)
        self.message = ""

    def step_vma(self, delta: int) -> bool:
        """Open the previous (-1) or next (+1) VMA of the process. Past either end, stay where
        the screen is and say why nothing moved (False)."""
        i = self.vma_index + delta
        if not 0 <= i < len(self.mm.vmas):
            self.message = (f"no {'next' if delta > 0 else 'previous'} VMA: this is the "
                            f"{'last' if delta > 0 else 'first'} of process {self.pid}")
            return False
        self.open_vma(i)
        return True

    def vma_at(self, addr: int) -> Vma | None:
        return next((v for v in self.mm.vmas if v.start <= addr < v.end), None)

    def goto(self, addr: int) -> None:
        """Show `addr` on the first line, in whichever VMA of this process holds it."""
        v = self.vma_at(addr)
        if v is None:
            raise LookupError(f"{addr:#x} is not mapped in process {self.pid}")
        self.vma = v
        self.top = addr - addr % ROW
        if self.top + self.rows * ROW > v.end:
            self.top = self.clamp_top(self.top)
        self.mark = Hit(addr, 1)
        self.message = f"at {addr:#x}" + ("" if self.page(v, addr) is not None else " (page not in image)")

    def search(self, needle: bytes) -> Hit | None:
        """Find `needle` from the current position on, through this process's VMAs, wrapping."""
        self.needle = needle
        start = (self.mark.addr + 1) if self.mark else (self.top if self.vma else 0)
        hit = self._find(needle, start)
        if hit is None:
            self.message = f"not found: {_as_typed(needle)}"
            return None
        self.vma = self.vma_at(hit.addr)
        self.top = hit.addr - hit.addr % ROW
        self.top = self.clamp_top(self.top)
        self.mark = hit
        self.message = f"found at {hit.addr:#x}"
        return hit

    def search_next(self) -> Hit | None:
        if not self.needle:
            self.message = "no search yet"
            return None
        return self.search(self.needle)

    def _find(self, needle: bytes, start: int) -> Hit | None:
        for lo, hi in ((start, 1 << 64), (0, start + len(needle) - 1)):
            for addr, data in self._segments(lo, hi):
                i = data.find(needle)
                if i >= 0:
                    return Hit(addr + i, len(needle))
        return None

    def _segments(self, lo: int, hi: int, chunk_pages: int = 64):
        """Yield (address, bytes) of stored page data within [lo, hi), adjacent pages joined so
        that a match may straddle page boundaries. Reads go straight to the image, chunk_pages at
        a time (a search must not flush the hex view's cache), keeping one page of overlap."""
        seg_addr, buf = None, bytearray()
        for v in self.mm.vmas:
            for start, end, read in self._spans(v):
                r_lo = max(start, lo - lo % PAGE_SIZE)
                r_hi = min(end, hi)
                for a in range(r_lo, r_hi, chunk_pages * PAGE_SIZE):
                    n = min(chunk_pages * PAGE_SIZE, r_hi - a + (-(r_hi - a)) % PAGE_SIZE)
                    data = read(a, n)
                    s, e = max(lo - a, 0), min(hi - a, n)
                    if s >= e:
                        continue
                    if seg_addr is not None and seg_addr + len(buf) == a + s:
                        buf += data[s:e]
                    else:
                        if buf:
                            yield seg_addr, bytes(buf)
                        seg_addr, buf = a + s, bytearray(data[s:e])
                    if len(buf) > PAGE_SIZE:
                        yield seg_addr, bytes(buf)
                        seg_addr += len(buf) - PAGE_SIZE
                        buf = buf[-PAGE_SIZE:]
        if buf:
            yield seg_addr, bytes(buf)

    def _spans(self, v: Vma) -> list[tuple[int, int, Callable[[int, int], bytes]]]:
        """(start, end, read(address, n)) of the bytes of `v` the image has, in address order:
        its stored page runs, and where it stores none, the pages of the mapped file's contents
        the image carries (file_pages) up to the file's end, as the hex view shows them."""
        spans = [(r.vaddr, r.vaddr + r.npages * PAGE_SIZE, functools.partial(self._read_run, r))
                 for r in self.runs_of(v)]
        carrier = self.file_pages(v)
        if carrier is None:
            return spans
        size = file_data_size(carrier)[1]
        file_end = min(v.end, v.start + max(0, size - self.file_offset(v, v.start) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)
        read = functools.partial(self._read_file, v, carrier)
        gaps, at = [], v.start
        for start, end, _ in spans:
            if at < min(start, file_end):
                gaps.append((at, min(start, file_end), read))
            at = max(at, end)
        if at < file_end:
            gaps.append((at, file_end, read))
        return sorted(spans + gaps, key=lambda span: span[0])

    def _read_run(self, run: PageRun, addr: int, n: int) -> bytes:
        return self._read_raw(run.offset + (addr - run.vaddr), n)

    def _read_file(self, v: Vma, carrier: File, addr: int, n: int) -> bytes:
        """`n` bytes of `v` at `addr` from the file contents `carrier` holds (zeros past its end)."""
        return (read_file_data(self.f, carrier, self.file_offset(v, addr), n) or b"").ljust(n, b"\0")

    def _read_raw(self, offset: int, n: int) -> bytes:
        if self.f is None:
            raise ImageError("the image was read from a stream: page data is not available")
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise ImageError(f"image shrank: page data at offset {offset} is truncated")
        return data


def process_tree(img: Image) -> list[tuple[int, Task]]:
    """(depth, leader) in tree order: parents before children, as TREE lists them; zombies too."""
    procs = [t for t in img.tasks if t.is_leader]
    entry = {e["pid"]: e for e in img.tree}
    pids = {p.tid for p in procs}
    kids: dict[int, list[Task]] = {}
    for p in procs:
        ppid = entry.get(p.tid, {}).get("ppid", 0)
        kids.setdefault(ppid if ppid in pids else 0, []).append(p)
    out: list[tuple[int, Task]] = []
    stack = [(r, 0) for r in reversed(kids.get(0, []))]  # no recursion: chains can be long
    while stack:
        p, depth = stack.pop()
        out.append((depth, p))
        stack += [(c, depth + 1) for c in reversed(kids.get(p.tid, []))]
    return out


def short_size(n: int) -> str:
    """4K, 132K, 1.7M, 8G: at most five characters."""
    for unit in ("K", "M", "G", "T"):
        n /= 1024
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if n >= 10 or n == int(n) else f"{n:.1f}{unit}"
    return str(n)


def open_flags(flags: int, desc: dict) -> str:
    """The FDs tab's flags: open(2)'s names without `O_`, and without LARGEFILE, which the kernel
    sets on every open by a 64-bit process and which only cost the column its room."""
    names = open_flags_text(flags & ~O_LARGEFILE).split("|") + (["CLOEXEC"] if desc.get("fd_close_on_exec") else [])
    return "|".join(n.removeprefix("O_") for n in names)


def fd_column_widths(rows: list[tuple[str, ...]], width: int) -> list[int]:
    """Widths of the FDs table's columns (FD_COLUMNS, padding not counted) in a table `width`
    cells wide: each as wide as its label or widest cell, as shown (terminal_safe), but the
    path / peer column, which takes what the others leave (no more than its widest cell needs,
    no less than MIN_TARGET_WIDTH): the flags and offset stay on screen, and a long path is cut
    rather than pushing them off it."""
    widths = [max([cell_len(label)] + [cell_len(terminal_safe(r[i])) for r in rows]) for i, label in enumerate(FD_COLUMNS)]
    others = sum(w + 2 * CELL_PADDING for i, w in enumerate(widths) if i != FD_TARGET)
    room = width - others - 2 * CELL_PADDING
    widths[FD_TARGET] = max(MIN_TARGET_WIDTH, min(widths[FD_TARGET], room))
    return widths


# x86_64 numbers of the calls a stopped process usually sits in (the rest show as a number).
BLOCKING_SYSCALLS = {0: "read", 1: "write", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep",
                     42: "connect", 43: "accept", 44: "sendto", 45: "recvfrom", 61: "wait4",
                     128: "rt_sigtimedwait", 130: "rt_sigsuspend", 202: "futex", 230: "clock_nanosleep",
                     232: "epoll_wait", 247: "waitid", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
                     288: "accept4", 441: "epoll_pwait2"}


def syscall_state(t: Task) -> str:
    """In which system call the thread was stopped (orig_rax; -1 when in user code)."""
    nr = t.regs["orig_rax"]
    if nr >= 1 << 63:
        return "user"
    return BLOCKING_SYSCALLS.get(nr, f"syscall {nr}")


__all__ = ["InspectState", "format_row", "parse_address", "parse_needle", "process_tree"]


def _as_typed(needle: bytes) -> str:
    """A search needle as the user can type it: quoted text, or x:HEX (the two forms / takes)."""
    try:
        text = needle.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return f'"{text}"'
    return f"x:{needle.hex()}"
