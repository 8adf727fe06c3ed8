"""Address spaces: MM, its VMAs, their present pages, and the auxv.

Speed matters here (a dump is mostly page copying), so per VMA the dumper:
- reads /proc/PID/pagemap once (in windows of at most PAGEMAP_WINDOW pages), and for a big VMA
  only where the PAGEMAP_SCAN ioctl says pages are (kernel/pagemap.py: a reservation of
  terabytes is not read 8 bytes per virtual page),
- finds runs of pages to store without a per-page Python loop: it slices out the top byte of
  every 8-byte entry, maps it to b"1"/b"0" with bytes.translate and lets a regex find the runs,
- copies runs with process_vm_readv in large iovecs into one reused, pre-faulted buffer,
- and hands that buffer to ImageWriter.raw_record, which writes it with writev (no copy).
The dumper's memory stays bounded by the buffer (COPY_BUFFER) whatever the image size.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass

from ..errors import CkptError, Unsupported, from_oserror
from ..image.records import (MAX_PAGES_PER_RECORD, MMF_DUMP_FILTER_MASK, MMF_DUMP_FILTER_SHIFT, MMF_DUMPABLE_MASK,
                             PAGE_SIZE, VM_FLAG_BITS, VM_NOT_SUPPORTED, VMA_LAST_PAGE, FileType, ObjType, RecType,
                             VmaType)
from ..kernel import pagemap, procfs
from ..kernel.sys import buffer_address, data_extents, vm_readv
from .context import DumpContext
from .objhash import KCMP_VM

COPY_BUFFER = MAX_PAGES_PER_RECORD * PAGE_SIZE  # 16 MiB
PAGEMAP_WINDOW = 1 << 20  # pages per pagemap read (8 MiB of entries)
# Ranges of more pages than this are scanned first (kernel/pagemap.py: PAGEMAP_SCAN) and pagemap is
# read only where pages are; below it one read costs less than the ioctl would save.
SCAN_ABOVE = 1 << 14
PAGE_FIXED = struct.Struct("<Q")

# Byte 7 of a pagemap entry holds bits 56..63: 0x80 present, 0x40 swapped, 0x20 file/shared page.
_ANY = bytes(0x31 if b & 0xC0 else 0x30 for b in range(256))
# Private file mappings: only pages that are no longer the file's (copied on write, or swapped).
_ANON_ONLY = bytes(0x31 if (b & 0x40) or ((b & 0x80) and not (b & 0x20)) else 0x30 for b in range(256))
_RUN = re.compile(rb"1+")

SKIP = ("[vsyscall]",)
VVAR = ("[vvar]", "[vvar_vclock]")
SHARED_ANON_PREFIXES = procfs.SHMEM_PREFIXES


def vm_flags(m: procfs.Mapping) -> int:
    return sum(VM_FLAG_BITS.get(f, 0) for f in m.vmflags)


def mm_flags(dumpable: int, coredump_filter: int) -> int:
    """MM.flags (records.py): mm->flags's dumpable bits and core dump filter, as the kernel
    lays them out."""
    return (dumpable & MMF_DUMPABLE_MASK) | (coredump_filter & MMF_DUMP_FILTER_MASK) << MMF_DUMP_FILTER_SHIFT


def check_mapping(nspid: int, hostpid: int, m: procfs.Mapping) -> None:
    """Refuse mappings that cannot be restored faithfully (the seed's CKPT_VMA_NOT_SUPPORTED)."""
    if m.path in VVAR or m.path in SKIP or m.path == "[vdso]":
        return  # the kernel's own special mappings: recreated, never copied
    bad = [name for f, name in VM_NOT_SUPPORTED.items() if f in m.vmflags]
    if bad:
        # (a driver's or kernel object's memory: io_uring's rings are the common case, and are
        # named, since the mapping is met before the fd)
        what = "; io_uring is not supported" if m.path.startswith("anon_inode:[io_uring]") else ""
        raise Unsupported(f"pid {nspid} (host pid {hostpid}): mapping {m.start:#x}-{m.end:#x} "
                          f"{m.path or '(anonymous)'} is {'|'.join(bad)}, which cannot be checkpointed{what}")


def vma_type(m: procfs.Mapping) -> VmaType | None:
    if m.path in SKIP:
        return None
    if m.path == "[vdso]":
        return VmaType.VDSO
    if m.path in VVAR:
        return VmaType.VVAR
    if m.shared:
        if not m.path or m.path.startswith(SHARED_ANON_PREFIXES) or m.deleted:
            return VmaType.SHARED_ANON
        return VmaType.SHARED_FILE
    if not m.path or m.path.startswith("["):
        return VmaType.ANON
    return VmaType.FILE


@dataclass
class PageCopier:
    """One reused, pre-faulted buffer; copies runs of pages from a task into PAGE records."""

    buf: mmap.mmap
    addr: int

    @classmethod
    def create(cls) -> "PageCopier":
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        buf = mmap.mmap(-1, COPY_BUFFER, flags=flags)
        for off in range(0, COPY_BUFFER, PAGE_SIZE):  # fault it in now: a cold buffer copies slowly
            buf[off] = 0
        return cls(buf, buffer_address(buf))

    def close(self) -> None:
        try:
            self.buf.close()
        except BufferError:  # a view still alive; the mapping goes with the process
            pass

    def dump_vma_pages(self, ctx: DumpContext, pid: int, m: procfs.Mapping, table: bytes,
                       start: int | None = None, end: int | None = None) -> int:
        """Write the VMA's stored pages (those of start..end, by default the whole VMA) as PAGE
        records. Returns the number of pages."""
        total = 0
        batch: list[tuple[int, int]] = []  # (vaddr, npages), together at most COPY_BUFFER
        used = 0
        with open(f"{ctx.proc}/{pid}/pagemap", "rb", buffering=0) as pm:
            first = (m.start if start is None else start) // PAGE_SIZE
            last = (m.end if end is None else end) // PAGE_SIZE
            spans = [(first, last)]
            if last - first > SCAN_ABOVE:
                # a big range: read pagemap only where the page tables hold something
                try:
                    found = pagemap.populated(pm.fileno(), first * PAGE_SIZE, last * PAGE_SIZE)
                except OSError as exc:
                    raise from_oserror(exc, f"scan pagemap of {pid}") from None
                if found is not None:
                    spans = [(lo // PAGE_SIZE, hi // PAGE_SIZE) for lo, hi in found]
            for win, n in _windows(spans):
                try:
                    entries = os.pread(pm.fileno(), n * 8, win * 8)
                except OSError as exc:
                    raise from_oserror(exc, f"read pagemap of {pid}") from None
                marks = entries[7::8].translate(table)
                for run in _RUN.finditer(marks):
                    vaddr = (win + run.start()) * PAGE_SIZE
                    left = run.end() - run.start()
                    while left:
                        k = min(left, MAX_PAGES_PER_RECORD - used)
                        batch.append((vaddr, k))
                        used += k
                        vaddr += k * PAGE_SIZE
                        left -= k
                        if used == MAX_PAGES_PER_RECORD:
                            self._flush(ctx, pid, m, batch)
                            total += used
                            batch, used = [], 0
        if batch:
            self._flush(ctx, pid, m, batch)
            total += used
        return total

    def dump_shmem_pages(self, ctx: DumpContext, pid: int, m: procfs.Mapping,
                         ranges: list[tuple[int, int]]) -> int | None:
        """Pages of a shared anonymous/shmem segment in `ranges` (segment offsets, ascending,
        inside the VMA), read from the segment itself through /proc/PID/map_files:
        SEEK_DATA/SEEK_HOLE find every page any process has written (present in our page table
        or not, swapped or not). None when the segment cannot be opened."""
        try:
            fd = os.open(f"{ctx.proc}/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        total = 0
        try:
            base = m.offset
            for lo, hi in ranges:
                total += self._shmem_range(ctx, fd, m, base, lo, hi)
        finally:
            os.close(fd)
        ctx.progress()
        return total

    def _shmem_range(self, ctx: DumpContext, fd: int, m: procfs.Mapping, base: int, pos: int, end: int) -> int:
        total = 0
        view = memoryview(self.buf)
        for start, stop in data_extents(fd, pos, end, PAGE_SIZE):
            while start < stop:
                n = min(stop - start, COPY_BUFFER)
                got = 0
                while got < n:
                    k = os.preadv(fd, [view[got:n]], start + got)
                    if k <= 0:  # past the segment's end: the rest reads as zeros
                        view[got:n] = bytes(n - got)
                        break
                    got += k
                ctx.w.raw_record(RecType.PAGE, PAGE_FIXED.pack(m.start + start - base), view[:n])
                total += n // PAGE_SIZE
                ctx.stats.pages += n // PAGE_SIZE
                start += n
        return total

    def _flush(self, ctx: DumpContext, pid: int, m: procfs.Mapping, batch: list[tuple[int, int]]) -> None:
        ranges = [(a, n * PAGE_SIZE) for a, n in batch]
        want = sum(n for _, n in ranges)
        got = 0
        if m.prot & 1:
            try:
                got = vm_readv(pid, self.addr, ranges)
            except CkptError:
                got = 0
        if got != want:
            # Unreadable for process_vm_readv (PROT_NONE, a racing fault): /proc/PID/mem reads with
            # FOLL_FORCE, as a debugger would.
            self._read_mem(pid, ranges, got)
        view = memoryview(self.buf)
        off = 0
        for a, n in ranges:
            ctx.w.raw_record(RecType.PAGE, PAGE_FIXED.pack(a), view[off:off + n])
            off += n
        ctx.stats.pages += want // PAGE_SIZE
        ctx.progress()

    def _read_mem(self, pid: int, ranges: list[tuple[int, int]], done: int) -> None:
        off = 0
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            view = memoryview(self.buf)
            for a, n in ranges:
                if off + n <= done:
                    off += n
                    continue
                skip = max(0, done - off)
                pos = skip
                while pos < n:
                    try:
                        k = os.preadv(fd, [view[off + pos:off + n]], a + pos)
                    except OSError as exc:
                        raise from_oserror(exc, f"read memory of {pid} at {a + pos:#x}") from None
                    if k <= 0:
                        raise Unsupported(f"pid {pid}: page at {a + pos:#x} is present but unreadable")
                    pos += k
                off += n
        finally:
            os.close(fd)


def dump_mm(ctx: DumpContext, p, copier: PageCopier, files) -> int:
    """The mm of process `p` (a task.ProcState): its objref, writing it if first seen."""
    pid = p.hostpid
    ref = ctx.objhash.lookup_kcmp(KCMP_VM, pid, 0)
    if ref is not None:
        return ref
    ref = ctx.objhash.add_kcmp(KCMP_VM, pid, 0)
    maps = p.maps or procfs.smaps(pid, ctx.proc)
    ctx.w.record(RecType.OBJREF, dict(objtype=ObjType.MM, objref=ref))
    exe_ref = files.dump_exe(ctx, pid)
    kept = [(m, t) for m in maps if (t := vma_type(m)) is not None]
    f = procfs.mm_fields(pid, ctx.proc)
    ctx.w.record(RecType.MM, dict(map_count=len(kept), exe_objref=exe_ref, def_flags=p.def_flags,
                                  flags=mm_flags(p.dumpable, procfs.coredump_filter(pid, ctx.proc)), brk=p.brk, **f))
    mapped = files.MappedFiles(ctx, pid)
    for m, t in kept:
        check_mapping(p.nspid, pid, m)
        objref = 0
        table: bytes | None = _ANY
        if t in (VmaType.FILE, VmaType.SHARED_FILE, VmaType.SHARED_ANON):
            # The file object the VMA names is one its mapping could be made from: an fd's that
            # allows it, or one of its own open as the mapping needs (files.MappedFiles).
            objref = mapped.fd_file(m) or 0
            if objref and t is VmaType.SHARED_ANON:
                # A memfd or deleted file that is also open as an fd: its contents are in that
                # fd's FILE object (FILE_DATA), and a shared mapping of it is a SHARED_FILE,
                # whose contents live in the file, so restore maps the fd's file.
                t = VmaType.SHARED_FILE
        if t is VmaType.SHARED_FILE:
            objref = objref or mapped.own_file(m)
            table = None  # the contents live in the file itself
        elif t is VmaType.FILE:
            objref = objref or mapped.own_file(m)
            if not m.deleted:
                table = _ANON_ONLY
        elif t is VmaType.SHARED_ANON:
            key = ("shmem", m.dev, m.inode)
            objref = ctx.objhash.lookup_key(key) or 0
            if not objref:
                # A FILE object (objtype 2), as the kernel backs the segment with a shmem file:
                # a reader that knows only the seed's object types can still follow the objref.
                objref = ctx.objhash.add_key(key)
                ctx.w.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=objref))
                ctx.w.record(RecType.FILE, dict(f_type=FileType.SHMEM, f_mode=3, f_flags=os.O_RDWR,
                                                f_version=files.segment_seals(ctx, pid, m)))
                ctx.w.record(RecType.FILE_NAME, payload=m.path or "/dev/zero (deleted)")
        elif t is VmaType.VVAR:
            table = None
        ctx.w.record(RecType.VMA, dict(vma_type=t, vma_objref=objref, vm_start=m.start, vm_end=m.end,
                                       vm_page_prot=m.prot, vm_flags=vm_flags(m),
                                       vm_pgoff=m.offset // PAGE_SIZE))
        if t is VmaType.SHARED_ANON:
            # Each VMA stores the part of the segment no VMA before it (in this process or an
            # earlier one) covered: a segment split by munmap or mprotect keeps all its pages,
            # and a part mapped by several VMAs (a forked child's) is stored once.
            stored = ctx.shmem_stored.setdefault(objref, [])
            ranges = _claim(stored, m.offset, m.offset + (m.end - m.start))
            if ranges and copier.dump_shmem_pages(ctx, pid, m, ranges) is None:
                # The segment could not be opened: only the pages this process has mapped can
                # be stored from here, so the range stays open to a later VMA that can do better
                # (a page then stored twice is written twice at restore, the same bytes).
                for lo, hi in ranges:
                    stored.remove((lo, hi))
                    copier.dump_vma_pages(ctx, pid, m, table, m.start + lo - m.offset, m.start + hi - m.offset)
        elif table is not None:
            copier.dump_vma_pages(ctx, pid, m, table)
        ctx.w.raw_record(RecType.PAGE, PAGE_FIXED.pack(VMA_LAST_PAGE), b"")
        ctx.stats.vmas += 1
    aux = procfs.auxv(pid, ctx.proc)
    ctx.w.record(RecType.MM_AUXV, dict(nentries=len(aux)), payload=[dict(a_type=a, a_val=v) for a, v in aux])
    return ref


def _windows(spans: list[tuple[int, int]]):
    """(first page, count) of each pagemap read over `spans` (page-number ranges), at most
    PAGEMAP_WINDOW pages a read."""
    for lo, hi in spans:
        for win in range(lo, hi, PAGEMAP_WINDOW):
            yield win, min(PAGEMAP_WINDOW, hi - win)


def _claim(stored: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of lo..hi not yet in `stored` (sorted, disjoint ranges), ascending; adds them."""
    out = []
    pos = lo
    for a, b in stored:
        if b <= pos or a >= hi:
            continue
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < hi:
        out.append((pos, hi))
    stored.extend(out)
    stored.sort()
    return out
