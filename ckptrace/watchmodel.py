"""What `watch` knows about each watched pid namespace, kept current from BPF events.

Pure Python, no bcc and no /proc: the controller (ckptrace.watch) feeds it events as dicts (the
same dicts `--json` prints) and seeds processes from /proc. Per namespace: its processes as a
tree (fork/exec/exit, comm); per process: its VMA table (seeded from /proc/PID/maps, then kept
current from mmap/munmap/mprotect/mremap/brk events); per VMA: the pages written since the
namespace's last dump.

Write faults arrive late (drained from a kernel map up to a second after they happened), so
VMAs that an munmap/mremap/mprotect/exec removed are kept a few seconds as tombstones, and every
VMA records the mm generation it was born in (and a tombstone the one it died in). The kernel
keys written pages by the generation they were written in, so a page written just before an
munmap is attributed to the mapping it was written in, not to a new mapping that later took the
same address. VMAs split by mprotect or moved by mremap keep their `lineage`, and their dirt:
pages written before the split or move and drained after it are reported on the live piece.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from .image.records import json_safe

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
TOMBSTONE_SECONDS = 5.0
DEAD_SECONDS = 5.0
TOMB_INDEX_MIN = 64  # tombstones from which a drain indexes them (TombIndex) rather than scanning
RECENT = 300
OWED_NS = 100_000_000  # how late another thread's munmap may come (see Model.apply)
RENAME_EXEC_NS = 1_000_000_000  # an exec's rename comes at most this long before its exec record


_LIVE = 1 << 62  # Vma.died of a mapping that has not died
_MM_KINDS = frozenset(("exec", "mmap", "munmap", "mprotect", "mremap", "brk"))


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def public(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if not k.startswith("_")}


def prot_str(prot: int) -> str:
    return ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-")


@dataclass(slots=True)
class Vma:
    start: int
    end: int
    prot: int
    path: str = ""
    dirty: set[int] = field(default_factory=set)  # page numbers (addr >> 12) written since the last dump
    born: int = 0  # mm generation the mapping appeared in
    lineage: int = 0  # shared by the pieces mprotect splits and mremap moves
    died: int = _LIVE  # for tombstones: generation it disappeared in
    moved: int = 0  # for tombstones of an mremap: how far the mapping moved
    heirs: bool = False  # for tombstones: the pages live on in the table (mprotect, mremap), not gone
    # An mmap the kernel placed over mappings the model still had: their munmap, by another
    # thread, comes later (see Model.apply). (thread that made this mapping, ts until which such
    # an munmap is taken for that one)
    owed: tuple[int, int] | None = None
    shared: bool = False  # MAP_SHARED ("s" in /proc/PID/maps), from /proc or the mmap's flags

    @property
    def pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def slice(self, start: int, end: int) -> "Vma":
        dirty = self.dirty
        if dirty:  # most mappings carved by mm events have no dirt yet: skip the scan
            lo, hi = start >> PAGE_SHIFT, end >> PAGE_SHIFT
            dirty = {p for p in dirty if lo <= p < hi}
        else:
            dirty = set()
        return Vma(start, end, self.prot, self.path, dirty, self.born, self.lineage, owed=self.owed, shared=self.shared)

    def shifted(self, delta: int) -> "Vma":
        d = delta >> PAGE_SHIFT
        return Vma(self.start + delta, self.end + delta, self.prot, self.path, {p + d for p in self.dirty},
                   self.born, self.lineage, shared=self.shared)

    def ghost(self, start: int | None = None, end: int | None = None, **kw) -> "Vma":
        """A tombstone for [start, end) of this mapping (all of it by default): no dirt of its
        own, same birth and lineage; `kw` sets `moved`/`heirs`."""
        return Vma(self.start if start is None else start, self.end if end is None else end, self.prot,
                   self.path, set(), self.born, self.lineage, shared=self.shared, **kw)

    def valid_at(self, gen: int) -> bool:
        return self.born <= gen < self.died


def _start(v: Vma) -> int:
    return v.start


# a mapping read from /proc: (start, end, prot, path) or (start, end, prot, path, shared)
ProcMapping = tuple


def _entry(mapping: ProcMapping) -> tuple[int, int, int, str, bool]:
    """A mapping read from /proc as (start, end, prot, path, shared); `shared` may be left out
    (a private mapping)."""
    start, end, prot, path, *shared = mapping
    return start, end, prot, path, bool(shared and shared[0])


@dataclass(slots=True)
class Proc:
    hostpid: int
    pid: int
    ns: int
    ppid: int = 0  # host pid of the parent, 0 when unknown
    comm: str = ""
    vmas: list[Vma] = field(default_factory=list)
    alive: bool = True
    code: int | None = None
    forked: bool = False  # its fork has been applied (a dead one's pid, forked again, is reused)
    died: float = 0.0
    brk: int = 0
    heap_freed_to: int = 0  # highest heap end a brk shrink gave back (growing again there is new memory)
    heap_shrunk: int = -1  # generation of the last brk shrink
    gen: int = 0  # mm generation, as the kernel counts it (events carry it)
    exec_gen: int = 0  # the generation its last exec began (the mappings exec made are that old)
    # CLOCK_MONOTONIC ns at which the table was last read from /proc (0: never), and the ts of its
    # last rename (exec renames the process just before its exec record): see apply's "exec"
    maps_at: int = 0
    renamed: int = 0
    tombstones: list[tuple[float, Vma]] = field(default_factory=list)

    def dirty_pages(self) -> int:
        return sum(len(v.dirty) for v in self.vmas)

    def find(self, addr: int) -> Vma | None:
        i = bisect.bisect_right(self.vmas, addr, key=_start) - 1
        if i >= 0 and self.vmas[i].start <= addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def carve(self, start: int, end: int) -> list[Vma]:
        """Remove [start, end) from the table; returns the removed pieces (with their dirt).
        Touches only the VMAs that overlap (found by bisection): this runs for every mm event."""
        lo = max(0, bisect.bisect_right(self.vmas, start, key=_start) - 1)
        hi = lo
        keep: list[Vma] = []
        removed: list[Vma] = []
        while hi < len(self.vmas) and self.vmas[hi].start < end:
            v = self.vmas[hi]
            hi += 1
            if v.end <= start:
                keep.append(v)
                continue
            if v.start < start:
                keep.append(v.slice(v.start, start))
            removed.append(v.slice(max(v.start, start), min(v.end, end)))
            if v.end > end:
                keep.append(v.slice(end, v.end))
        if removed:
            self.vmas[lo:hi] = keep
        return removed

    def uncovered(self, start: int, end: int, covers=lambda v: True) -> list[tuple[int, int]]:
        """The parts of [start, end) no mapping of the table covers, ascending, counting only the
        mappings `covers(vma)` accepts (it sees each one overlapping the range, in order)."""
        out, at = [], start
        i = max(0, bisect.bisect_right(self.vmas, start, key=_start) - 1)
        while i < len(self.vmas) and self.vmas[i].start < end:
            v = self.vmas[i]
            i += 1
            if v.end <= start or not covers(v):
                continue
            if v.start > at:
                out.append((at, v.start))
            at = max(at, v.end)
        if at < end:
            out.append((at, end))
        return out

    def unowed(self, start: int, end: int, tid: int, ts: int) -> list[tuple[int, int]]:
        """The parts of an munmap of [start, end) by thread `tid` at `ts` that apply: not those
        over a mapping that owes that range an munmap from another thread (Vma.owed), which each
        let pass once."""

        def owed_to_this_munmap(v: Vma) -> bool:
            if v.owed is None:
                return False
            maker, until = v.owed
            v.owed = None
            return maker != tid and ts <= until

        return self.uncovered(start, end, owed_to_this_munmap)

    def insert(self, vma: Vma) -> None:
        self.carve(vma.start, vma.end)
        bisect.insort(self.vmas, vma, key=_start)

    def bury(self, vmas: list[Vma], now: float) -> None:
        for v in vmas:
            v.died = self.gen
        self.tombstones += [(now, v) for v in vmas]

    def owner(self, addr: int, gen: int | None, tomb=None) -> Vma | None:
        """The mapping that held `addr` in generation `gen` (None: unknown, take today's).
        `tomb` answers Proc.tomb's question faster for many tombstones (TombIndex.tomb)."""
        tomb = tomb or self.tomb
        live = self.find(addr)
        if gen is None or (live is not None and live.valid_at(gen)):
            return live or tomb(addr, None)
        return tomb(addr, gen) or live

    def tomb(self, addr: int, gen: int | None) -> Vma | None:
        """The latest-buried tombstone over `addr` (valid at `gen` unless gen is None)."""
        for _, t in reversed(self.tombstones):
            if t.start <= addr < t.end and (gen is None or t.valid_at(gen)):
                return t
        return None


def _heir(p: Proc, v: Vma, pn: int, tomb) -> tuple[Vma, int]:
    """Where page `pn` of tombstone `v` (an mprotect's or mremap's) is now: the piece of the same
    lineage that took it over, followed through every later mprotect and move (realloc can move
    a block twice between two drains), as (mapping, page number there). Where the chain ends in a
    mapping that is gone, its last tombstone keeps the page."""
    cur = v
    for _ in range(64):  # a bound, not an expected depth
        npn = pn + (cur.moved >> PAGE_SHIFT)
        nxt = p.owner(npn << PAGE_SHIFT, cur.died, tomb)
        if nxt is None or nxt is cur or nxt.lineage != v.lineage:
            break
        cur, pn = nxt, npn
        if cur.died == _LIVE or not cur.heirs:
            break
    return cur, pn


class TombIndex:
    """Proc.tomb for a drain over a process with many tombstones: Proc.tomb looks at every
    tombstone for every run of pages, and a loop that maps, writes and unmaps a page 20 000 times
    between two drains made that 20 000 x 20 000 (a drain took 10 - 15 s, and the controller
    stood still meanwhile). Same answers, quickly: tombstones filed under every 2 MiB stretch of
    address space they cover (those over 8 GiB in a short list of their own), and within a stretch
    grouped by start address, each group ordered by the generation it was born in. (One bound for
    all, the longest tombstone, let a single large munmap make every lookup walk every start.)"""

    SHIFT = 21
    HUGE = 4096  # stretches: a tombstone over more is looked at on its own

    def __init__(self, p: "Proc"):
        stretches: dict[int, dict[int, list]] = {}
        self.huge: list[tuple[int, Vma]] = []
        for order, (_, t) in enumerate(p.tombstones):
            first, last = t.start >> self.SHIFT, (t.end - 1) >> self.SHIFT
            if last - first >= self.HUGE:
                self.huge.append((order, t))
                continue
            for n in range(first, last + 1):
                stretches.setdefault(n, {}).setdefault(t.start, []).append((t.born, order, t))
        self.stretches = {}
        for n, groups in stretches.items():
            starts = sorted(groups)
            maxlen = 0
            table = {}
            for start, entries in groups.items():
                entries.sort(key=lambda e: (e[0], e[1]))
                reach, top = [], -1  # reach[i]: the latest death among entries[:i + 1]
                for _, _, t in entries:
                    top = max(top, t.died)
                    reach.append(top)
                    maxlen = max(maxlen, t.end - t.start)
                table[start] = ([e[0] for e in entries], reach, entries)
            self.stretches[n] = (starts, maxlen, table)

    def tomb(self, addr: int, gen: int | None) -> Vma | None:
        """What Proc.tomb(addr, gen) says."""
        best, best_order = None, -1
        for order, t in self.huge:
            if t.start <= addr < t.end and order > best_order and (gen is None or t.valid_at(gen)):
                best, best_order = t, order
        stretch = self.stretches.get(addr >> self.SHIFT)
        if stretch is None:
            return best
        starts, maxlen, table = stretch
        i = bisect.bisect_right(starts, addr) - 1
        while i >= 0 and starts[i] + maxlen > addr:
            borns, reach, entries = table[starts[i]]
            i -= 1
            k = len(entries) - 1 if gen is None else bisect.bisect_right(borns, gen) - 1
            while k >= 0 and (gen is None or reach[k] > gen):
                _, order, t = entries[k]
                k -= 1
                if t.end > addr and order > best_order and (gen is None or t.died > gen):
                    best, best_order = t, order
        return best


@dataclass
class Namespace:
    ino: int
    events: int = 0
    last_dump: int | None = None  # notify.last_dump stamp last seen
    # none of its processes is alive any more (its init exited: the kernel ends the rest with it);
    # set by Model.gc, before the dead are forgotten
    ended: bool = False
    window: deque = field(default_factory=lambda: deque(maxlen=4096))  # wall times of recent events

    def rate(self, now: float, span: float = 2.0) -> float:
        n = sum(1 for t in self.window if now - t <= span)
        return n / span


class Model:
    def __init__(self, *, clock=time.monotonic):
        self.clock = clock
        self.namespaces: dict[int, Namespace] = {}
        self.procs: dict[int, Proc] = {}
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.counts: Counter[str] = Counter()
        self.lost: dict[str, int] = {}
        self.unattributed = 0  # written pages no known mapping held
        self.unattributed_gone = 0  # of those, pages of processes that had exited (or were never placed)
        self.exited: list[Proc] = []  # exited since the last take_exited(), tombstones still kept
        self._lineage = itertools.count(1)
        self.status = "starting"
        self.faults = True  # write faults are traced (not `--no-faults`): dirty counts mean something
        # the namespace `--pidns` names: kept once it has ended, which the dashboard then says
        # (forgotten, it read "no watched namespace yet")
        self.focus: int | None = None

    # -- setup -------------------------------------------------------------------------------------
    def add_namespace(self, ino: int) -> Namespace:
        ns = self.namespaces.get(ino)
        if ns is None:
            ns = self.namespaces[ino] = Namespace(ino)
        return ns

    def seed_proc(self, hostpid: int, pid: int, ns: int, *, ppid: int = 0, comm: str = "",
                  maps: list[ProcMapping] = (), maps_at: int = 0) -> Proc:
        """A process found in /proc (at start, or when an event names one we have not seen);
        `maps_at`: when `maps` was read (CLOCK_MONOTONIC ns, as the events' ts)."""
        self.add_namespace(ns)
        p = self.procs.get(hostpid)
        if p is None or not p.alive:
            p = self.procs[hostpid] = Proc(hostpid, pid, ns, ppid, comm)
        p.pid, p.ns = pid or p.pid, ns
        p.ppid = ppid or p.ppid
        p.comm = comm or p.comm
        if maps:
            self.set_maps(p, maps, at=maps_at)
        return p

    def set_maps(self, p: Proc, maps: list[ProcMapping], *, at: int = 0) -> None:
        """Replace the VMA table with /proc's view (read at `at`, CLOCK_MONOTONIC ns), keeping
        dirt on pages still mapped, and the lineage of the mapping a piece overlaps (pages
        written before an mprotect and drained after this still find their heir)."""
        old = p.vmas
        p.maps_at = at
        p.vmas = []
        for start, end, prot, path, shared in map(_entry, sorted(maps)):
            v = Vma(start, end, prot, path, born=p.gen, lineage=0, shared=shared)
            for o in old:
                if o.end > start and o.start < end:
                    v.dirty |= o.slice(max(o.start, start), min(o.end, end)).dirty
                    v.lineage = v.lineage or o.lineage
            v.lineage = v.lineage or next(self._lineage)
            p.vmas.append(v)
            if path == "[heap]" and not p.brk:
                p.brk = end

    def fill_maps(self, p: Proc, maps: list[ProcMapping], *, at: int = 0) -> None:
        """Add /proc's mappings where the table has none, after an exec: the mappings exec made
        itself (program, loader, stack) come with no event, while those made since by mm calls
        are in the table from their events, with their own generations, which /proc's view
        (merged by the kernel, and only as it is now) would lose. What is added is as old as the
        exec. `at`: when `maps` was read."""
        p.maps_at = at or p.maps_at
        for start, end, prot, path, shared in map(_entry, sorted(maps)):
            for a, b in p.uncovered(start, end):
                bisect.insort(p.vmas, Vma(a, b, prot, path, born=p.exec_gen, lineage=next(self._lineage),
                                          shared=shared), key=_start)
            if path == "[heap]" and not p.brk:
                p.brk = end

    def merge_maps(self, p: Proc, maps: list[ProcMapping]) -> int:
        """Join the pieces of the table that /proc shows as one mapping. The kernel merges a
        mapping with its neighbours when their flags, protection and backing allow (an mprotect
        undone, an mremap that shrank a split mapping), and tracepoint arguments do not say when
        it did; the table kept the pieces, and `dirty` events named ranges /proc/PID/maps does not
        have. The pieces (the table's mappings that tile /proc's one exactly, same protection) are
        buried as tombstones whose pages live on (`heirs`), in the joined mapping, which is born
        in the current generation; pages written in the pieces before it are found through those
        tombstones, as after an mprotect. Pieces of different lineages (a neighbour mapped next
        to an existing mapping, merged by the kernel) become one lineage, their earlier
        tombstones too, since an heir is followed only within its lineage. Returns how many
        pieces went."""
        vmas = p.vmas
        runs = []  # (index of the first piece, index after the last, the /proc mapping)
        for start, end, prot, _path, shared in map(_entry, sorted(maps)):
            i = bisect.bisect_left(vmas, start, key=_start)
            if i >= len(vmas) or vmas[i].start != start or vmas[i].end >= end:
                continue
            j = i + 1
            first = vmas[i]
            while j < len(vmas) and vmas[j].start == vmas[j - 1].end and vmas[j].end <= end and \
                    vmas[j].prot == first.prot and vmas[j].shared == first.shared:
                j += 1
            run = vmas[i:j]
            if run[-1].end == end and first.prot == prot and first.shared == shared and \
                    all(v.owed is None for v in run):
                runs.append((i, j))
        if not runs:
            return 0
        now = self.clock()
        joined = 0
        for i, j in reversed(runs):  # (from the end: the indices before stay right)
            run = vmas[i:j]
            first = run[0]
            others = {v.lineage for v in run} - {first.lineage}
            if others:
                for v in itertools.chain(vmas, (t for _, t in p.tombstones)):
                    if v.lineage in others:
                        v.lineage = first.lineage
            p.bury([v.ghost(heirs=True) for v in run], now)
            dirty = set().union(*(v.dirty for v in run))
            vmas[i:j] = [Vma(first.start, run[-1].end, first.prot, first.path, dirty, p.gen, first.lineage,
                             shared=first.shared)]
            joined += len(run) - 1
        return joined

    # -- queries -----------------------------------------------------------------------------------
    def ns_procs(self, ino: int) -> list[Proc]:
        return sorted((p for p in self.procs.values() if p.ns == ino), key=lambda p: p.pid)

    def init_of(self, ino: int) -> Proc | None:
        procs = self.ns_procs(ino)
        ones = [p for p in procs if p.pid == 1]
        return ones[0] if ones else (procs[0] if procs else None)

    def tree(self, ino: int) -> list[tuple[int, Proc]]:
        """(depth, proc) in depth-first order: roots are processes whose parent is not in `ino`."""
        procs = self.ns_procs(ino)
        by_host = {p.hostpid: p for p in procs}
        kids: dict[int, list[Proc]] = {}
        roots = []
        for p in procs:
            if p.ppid in by_host and p.ppid != p.hostpid:
                kids.setdefault(p.ppid, []).append(p)
            else:
                roots.append(p)
        out: list[tuple[int, Proc]] = []
        seen: set[int] = set()

        def walk(p: Proc, depth: int) -> None:
            if p.hostpid in seen:
                return
            seen.add(p.hostpid)
            out.append((depth, p))
            for c in kids.get(p.hostpid, []):
                walk(c, depth + 1)

        for r in roots:
            walk(r, 0)
        return out

    # -- events ------------------------------------------------------------------------------------
    def apply(self, ev: dict, *, gen: int | None = None, childhost: int | None = None,
              want: int | None = None, got: int | None = None, tid: int = 0, fixed: bool = True,
              shared: bool = False) -> dict | None:
        """Apply one structural event; returns the event to report (possibly completed, e.g. brk's
        addr/len), or None when it is internal (rename, brk queries). What the report leaves out
        comes as keywords (the mm generation, a fork's child host pid, brk's requested and
        resulting break, the thread of an mmap or munmap, whether the mmap was MAP_FIXED and whether
        it was MAP_SHARED) or,
        equivalently, as keys starting with "_" (`public` strips them).
        This runs for every event the kernel sends: keep it lean."""
        now = self.clock()
        kind = ev["event"]
        ns = self.namespaces.get(ev["ns"]) or self.add_namespace(ev["ns"])
        p = self.procs.get(ev["hostpid"])
        if p is None or (not p.alive and kind != "exit"):
            p = self.seed_proc(ev["hostpid"], ev["pid"], ev["ns"], comm=ev.get("comm", ""))
        if kind in _MM_KINDS and not (kind == "brk" and (ev["_want"] if want is None else want) == 0):
            # The kernel numbers generations; events without one (tests) are counted here. A brk
            # query (brk(0)) changes nothing and starts none, there as here: counted, it made
            # the model's generation run ahead of the kernel's.
            p.gen = gen or ev.get("_gen") or p.gen + 1
        if kind == "mmap":
            addr = ev["addr"]
            end = addr + page_up(ev["len"])
            gone = p.carve(addr, end)
            p.bury(gone, now)
            v = Vma(addr, end, ev["prot"], ev.get("path", ""), set(), p.gen, next(self._lineage), shared=shared)
            if gone and tid and not fixed:
                # The kernel puts a mapping made without MAP_FIXED only where nothing is mapped:
                # what the model still had there was unmapped first, by another thread whose
                # munmap is reported after this one (calls are reported when they return, and a
                # thread can be preempted in between). That munmap must not take this mapping.
                v.owed = (tid, ev.get("ts", 0) + OWED_NS)
            bisect.insort(p.vmas, v, key=_start)
        elif kind == "munmap":
            start = ev["addr"]
            for a, b in p.unowed(start, start + page_up(ev["len"]), tid, ev.get("ts", 0)):
                p.bury(p.carve(a, b), now)
        elif kind == "mprotect":
            for v in p.carve(ev["addr"], ev["addr"] + page_up(ev["len"])):
                p.bury([v.ghost(heirs=True)], now)
                v.prot, v.born = ev["prot"], p.gen
                p.insert(v)
        elif kind == "fork":
            childhost = childhost or ev["_childhost"]
            child = self.procs.get(childhost)
            if child is not None and not child.alive and not child.forked and child.ppid in (0, p.hostpid) \
                    and child.ns == p.ns:
                # A fork reported after the child's own exec and exit (vfork, posix_spawn: the
                # parent's clone returns once the child has exec'd, and a short-lived child can
                # be gone by then). It is that child, dead: not a new process with its pid. (One
                # whose fork was applied already is another, and its pid is reused.)
                child.ppid = p.hostpid
            elif child is None or not child.alive:
                child = self.procs[childhost] = Proc(childhost, ev["child"], p.ns, p.hostpid, p.comm)
                lineage = self._lineage
                child.vmas = [Vma(v.start, v.end, v.prot, v.path, set(), 0, next(lineage), shared=v.shared)
                              for v in p.vmas]
                child.brk = p.brk  # its heap has no history here: heap_freed_to and heap_shrunk start afresh
            else:
                child.ppid = p.hostpid
            child.forked = True
        elif kind == "exec":
            # A table read from /proc after this exec had replaced the address space is the new
            # program's (a process first met at the exec's rename, which comes just before, or
            # found by a drain or a discover record while this record waited in the ring): not
            # the old one to bury. Buried, its mappings were tombstones of the very ranges fill_maps
            # then adds again, and the pages execve itself wrote (the new stack, the program's
            # and ld.so's data: the old generation's) were reported `gone` on them. Dropped, it
            # is read again as of the exec (the controller re-reads every exec'd table).
            ts = ev.get("ts", 0)
            since = p.renamed if p.renamed and 0 <= ts - p.renamed < RENAME_EXEC_NS else ts
            if not (p.maps_at and p.maps_at >= since):
                p.bury(p.vmas, now)
            p.vmas = []
            p.maps_at = p.renamed = 0
            p.brk = p.heap_freed_to = 0
            p.heap_shrunk = -1
            p.exec_gen = p.gen
            p.comm = ev["comm"]
        elif kind == "rename":
            p.comm = ev["comm"]
            p.renamed = ev.get("ts", 0)
            return None
        elif kind == "exit":
            self._died(p, ev["code"], now)
        elif kind == "mremap":
            self._mremap(p, ev, now)
        elif kind == "brk":
            ev = self._brk(p, ev, now, ev["_want"] if want is None else want, ev["_got"] if got is None else got)
            if ev is None:
                return None
        self._tally(ns, kind, ev, now)
        return ev

    def _tally(self, ns: Namespace, kind: str, ev: dict, now: float) -> None:
        """Count an event reported for namespace `ns` (its rate, the totals, the recent log)."""
        ns.events += 1
        ns.window.append(now)
        self.counts[kind] += 1
        self.recent.append(ev)

    def _died(self, p: Proc, code: int | None, now: float) -> None:
        p.alive = False
        p.code = code
        p.died = now
        # the kernel starts no generation at exit: the mappings held the current one to the
        # end, so their tombstones cover it (pages written after the last mm event included)
        p.gen += 1
        p.bury(p.vmas, now)
        p.vmas = []
        self.exited.append(p)

    def vanished(self, hostpid: int) -> None:
        """A process found gone whose exit event never came (lost with a full ring): dead, status
        unknown."""
        p = self.procs.get(hostpid)
        if p is not None and p.alive:
            self._died(p, None, self.clock())

    def _mremap(self, p: Proc, ev: dict, now: float) -> None:
        old, olen = ev["addr"], page_up(ev["len"])
        new, nlen = ev["new_addr"], page_up(ev["new_len"])
        parts = p.carve(old, old + olen)
        if not parts:
            return
        delta = new - old
        moved = [v.shifted(delta) for v in parts]
        for v in moved:
            v.born = p.gen
        # the pages within the new length moved; a shrink unmapped the rest
        kept_end = old + nlen
        tombs = []
        for v in parts:
            if v.start < kept_end:
                tombs.append(v.ghost(end=min(v.end, kept_end), moved=delta, heirs=True))
            if v.end > kept_end:
                tombs.append(v.ghost(start=max(v.start, kept_end)))
        p.bury(tombs, now)
        p.bury(p.carve(new, new + nlen), now)
        for v in moved:
            if v.start < new + nlen:
                p.insert(v.slice(v.start, min(v.end, new + nlen)))
        last = max(moved, key=lambda v: v.end)
        if new + nlen > last.end:  # grown in place or while moving: the last piece gets longer
            tail = p.find(last.end - PAGE)
            if tail is not None:
                tail.end = new + nlen

    def _brk(self, p: Proc, ev: dict, now: float, want: int, got: int) -> dict | None:
        """want: the requested break (0: a query); got: the resulting break."""
        old = p.brk
        p.brk = got
        if want == 0 or not old or got == old:
            return None  # a query, or a first call we have no baseline for
        heap = max((v for v in p.vmas if v.path == "[heap]"), key=_start, default=None)
        if got > old:
            if heap is None:
                p.insert(Vma(old & ~(PAGE - 1), page_up(got), 3, "[heap]", born=p.gen, lineage=next(self._lineage)))
            elif page_up(got) > heap.end:
                if heap.end < p.heap_freed_to and heap.born <= p.heap_shrunk:
                    # growing back over heap a shrink gave up: a new piece, born now, of its own
                    # lineage, so pages written there before the shrink are not taken for this
                    # memory's (later growth extends this piece)
                    p.insert(Vma(heap.end, page_up(got), heap.prot, "[heap]", set(), p.gen, next(self._lineage)))
                else:
                    heap.end = page_up(got)
        else:
            p.bury(p.carve(page_up(got), page_up(old)), now)
            p.heap_freed_to = max(p.heap_freed_to, page_up(old))
            p.heap_shrunk = p.gen
        out = {k: v for k, v in ev.items() if k not in ("_want", "_got")}
        out.update(addr=old, len=got - old)  # len < 0: the heap shrank
        return out

    def add_dirty(self, hostpid: int, pages: list, ts: int) -> list[dict]:
        """Written pages of one process as (generation, address) pairs or bare addresses
        (generation unknown): `add_dirty_masks` of the same pages."""
        masks: dict[tuple[int | None, int], int] = {}
        for page in pages:
            gen, addr = page if isinstance(page, tuple) else (None, page)
            pn = addr >> PAGE_SHIFT
            key = (gen, pn & ~63)
            masks[key] = masks.get(key, 0) | (1 << (pn & 63))
        return self.add_dirty_masks(hostpid, [(g, base, m) for (g, base), m in masks.items()], ts)

    def add_dirty_masks(self, hostpid: int, chunks: list[tuple[int | None, int, int]], ts: int) -> list[dict]:
        """Written pages drained from the kernel for one process, as the kernel keeps them:
        (mm generation or None, first page number of a 64-page chunk, mask of written pages).
        Adds them to the VMAs they were written in and returns one `dirty` event per VMA that got
        any. A mapping is looked up once per run of pages it holds, not once per page."""
        p = self.procs.get(hostpid)
        if p is None:
            self.unplaced(sum(m.bit_count() for _, _, m in chunks), gone=True)
            return []
        # A dead process's mappings are dropped once this drain is over (release_exited): its
        # pages are only counted for the report, not recorded page by page.
        keep = p.alive
        hits: dict[int, list] = {}  # id(vma) -> [vma, page numbers (keep), page count (not keep)]
        tomb = TombIndex(p).tomb if len(p.tombstones) > TOMB_INDEX_MIN else p.tomb
        for gen, base, mask in chunks:
            while mask:
                low = (mask & -mask).bit_length() - 1
                v = p.owner((base + low) << PAGE_SHIFT, gen, tomb)
                if v is None:
                    self.unplaced(1, gone=not keep)
                    mask &= mask - 1
                    continue
                if (v.died < _LIVE) if gen is None else not v.valid_at(gen):
                    sub = 1 << low  # a fallback answer (see owner): it holds for this page only
                else:
                    lo = max((v.start >> PAGE_SHIFT) - base, 0)
                    hi = min((v.end >> PAGE_SHIFT) - base, 64)
                    sub = mask & ((1 << hi) - (1 << lo))
                mask ^= sub
                hit = hits.get(id(v))
                if hit is None:
                    hit = hits[id(v)] = [v, [], 0]
                if not keep:
                    hit[2] += sub.bit_count()
                    continue
                pnums = hit[1]
                while sub:
                    bit = sub & -sub
                    pnums.append(base + bit.bit_length() - 1)
                    sub ^= bit
        # Pages written before an mprotect or mremap are drained after it: they are added to, and
        # reported on, the live mapping that holds them now (same lineage, shifted by the move),
        # as a reader that applied the mprotect/mremap event expects; pages of a mapping that is
        # gone stay with its tombstone.
        reports: dict[int, list] = {}  # id(vma) -> [vma reported on, its page numbers or a count]
        for v, pnums, count in hits.values():
            if not keep:
                reports[id(v)] = [v, count]
                continue
            if v.died == _LIVE or not v.heirs:
                v.dirty.update(pnums)
                reports.setdefault(id(v), [v, set()])[1].update(pnums)
                continue
            for pn in pnums:
                heir, hpn = _heir(p, v, pn, tomb)
                heir.dirty.add(hpn)
                reports.setdefault(id(heir), [heir, set()])[1].add(hpn)
        out = []
        ns = self.add_namespace(p.ns)
        now = self.clock()
        for v, pages in reports.values():
            ev = {"event": "dirty", "pid": p.pid, "hostpid": p.hostpid, "ns": p.ns, "ts": ts,
                  "start": v.start, "end": v.end, "pages": pages if isinstance(pages, int) else len(pages)}
            if v.died != _LIVE:
                # written to a mapping unmapped (or mapped over) since: a live one may have the same
                # range in this very drain, and a reader must not add the two up
                ev["gone"] = True
            out.append(ev)
            self._tally(ns, "dirty", ev, now)
        return out

    def forget_namespace(self, ino: int) -> None:
        """Drop a namespace that is gone and its processes (its inode number is someone else's
        now: watch.Controller.ended)."""
        for hp in [hp for hp, p in self.procs.items() if p.ns == ino]:
            del self.procs[hp]
        self.namespaces.pop(ino, None)

    def reset_dirty(self, ino: int) -> int:
        """The namespace was just dumped: nothing is dirty relative to that checkpoint. Returns
        how many pages of live mappings were dirty until then."""
        cleared = 0
        for p in self.ns_procs(ino):
            for v in p.vmas:
                cleared += len(v.dirty)
                v.dirty.clear()
            for _, v in p.tombstones:
                v.dirty.clear()
        return cleared

    def unplaced(self, pages: int, *, gone: bool) -> None:
        """Count written pages no known mapping held; `gone`: their process had exited, or was
        never placed (watch's closing note tells those apart)."""
        self.unattributed += pages
        if gone:
            self.unattributed_gone += pages

    def dumped(self, ino: int, ts: int, image: str = "") -> dict:
        """Namespace `ino` was dumped at `ts` (its notify stamp, CLOCK_MONOTONIC ns): its dirty
        counts start again from nothing, and the `dump` event returned says so, so that a reader
        adding up `dirty` pages knows where to start again. It names the namespace's init (pid 1;
        hostpid 0 when the model does not know it); `pages`: the dirty pages the reset cleared;
        `image`: the image file's path (null when it went to a pipe or standard output)."""
        cleared = self.reset_dirty(ino)
        init = self.init_of(ino)
        hostpid = init.hostpid if init is not None and init.pid == 1 else 0
        # (json_safe: a path is any bytes; one that is not UTF-8 gets its exact bytes in image_hex)
        ev = json_safe({"event": "dump", "pid": 1, "hostpid": hostpid, "ns": ino, "ts": ts, "pages": cleared,
                        "image": image or None})
        self._tally(self.add_namespace(ino), "dump", ev, self.clock())
        return ev

    def take_exited(self) -> list[Proc]:
        """Processes whose exit was applied since the last call."""
        out, self.exited = self.exited, []
        return out

    def release_exited(self, procs: list[Proc]) -> None:
        """Forget the mappings of processes that had exited before a drain of the kernel's
        written pages began: nothing is recorded for a process once its exit record is made (the
        exit program deletes its `tracked` entry, which the fault program needs), so that drain
        held the last of its pages. Without this a fork
        storm kept every dead child's tombstones for TOMBSTONE_SECONDS: ~130 MiB here."""
        for p in procs:
            if not p.alive:
                p.tombstones = []

    def gc(self) -> None:
        """Forget tombstones and dead processes once late write faults can no longer need them."""
        now = self.clock()
        known, alive = set(), set()  # namespaces with processes, and with live ones
        for hp, p in list(self.procs.items()):
            p.tombstones = [(t, v) for t, v in p.tombstones if now - t < TOMBSTONE_SECONDS]
            known.add(p.ns)
            if p.alive:
                alive.add(p.ns)
            elif now - p.died > DEAD_SECONDS:
                del self.procs[hp]
        for ino in known - alive:
            if ino in self.namespaces:
                self.namespaces[ino].ended = True
        # a pid namespace without processes is gone for good (it dies with its init)
        live = {p.ns for p in self.procs.values()}
        for ino, ns in list(self.namespaces.items()):
            if ino not in live and ino != self.focus and ns.window and now - ns.window[-1] > DEAD_SECONDS:
                del self.namespaces[ino]
