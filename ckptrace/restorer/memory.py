"""Rebuilding a process's address space inside it, by syscall injection.

The task is a stopped fork of the controller (a Python interpreter). In order:
1. munmap everything but its [vvar]/[vvar_vclock]/[vdso] block (injection needs no memory: the
   `syscall` instruction it runs is in the vdso);
2. mremap that block to where the image had it, all three together (the vdso finds vvar at a
   fixed distance; moving only [vdso] crashes), through a far-away spot if old and new overlap;
3. mmap every VMA MAP_FIXED at its address, from the controller-opened file or memfd the task
   inherited, writable while its pages are written (an injected pread from the image file; a
   shared mapping's through its memfd, from here), then mprotect; the
   VM_* bits that no mmap flag gives back come from madvise (before the pages are written) and
   mlock2 (after the mprotect);
4. prctl(PR_SET_MM_MAP) with the MM fields, the auxv and the exe (once the old exe is unmapped,
   which is why this comes after 1); mlockall(MCL_FUTURE) if the process had it.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import BinaryIO

from ..errors import ImageError, KernelError, Unsupported
from ..image.reader import File, Image, Mm, Vma
from ..image.render import shown_path
from ..image.records import (PAGE_SIZE, PROC_MDWE_NO_INHERIT, PROC_MDWE_REFUSE_EXEC_GAIN, TASK_COMM_LEN,
                              THREAD_TSC_SIGSEGV, VM_EXEC, VM_FLAG_BITS, VM_GROWSDOWN, FileType, RecType, VmaType)
from ..kernel import procfs
from ..kernel.prctl import (PR_GET_MDWE, PR_MDWE_NO_INHERIT, PR_MDWE_REFUSE_EXEC_GAIN, PR_SET_MDWE, PR_SET_MM,
                           PR_SET_MM_MAP, PR_SET_NAME, PR_SET_TSC, PR_TSC_ENABLE, PR_TSC_SIGSEGV)
from ..kernel.ptrace import Injector
from ..kernel.sysno import (SYS_close, SYS_madvise, SYS_mlock2, SYS_mlockall, SYS_mmap, SYS_mprotect,
                            SYS_mremap, SYS_munmap, SYS_prctl, SYS_pread64, SYS_rseq, SYS_set_robust_list,
                            SYS_set_tid_address, SYS_sigaltstack)
from .files import FileSet

ROBUST_LIST_HEAD_SIZE = 24  # struct robust_list_head: the only length set_robust_list takes
RSEQ_FLAG_UNREGISTER = 1
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x1, 0x2, 0x10, 0x20, 0x100
MAP_NORESERVE = 0x4000
MLOCK_ONFAULT = 1
MCL_FUTURE, MCL_ONFAULT = 2, 4
PREAD_PIECE = 64 << 20  # bytes one injected pread copies at most
VM_LOCKED, VM_LOCKONFAULT, VM_NORESERVE = VM_FLAG_BITS["lo"], VM_FLAG_BITS["lf"], VM_FLAG_BITS["nr"]
VM_ACCOUNT = VM_FLAG_BITS["ac"]
# The VM_* bits madvise() sets, with the advice that sets each (asm-generic/mman-common.h).
# MADV_WIPEONFORK is refused (EINVAL) for anything but private anonymous memory, which is the
# only kind a dumped VMA can have it on.
MADVISE = ((VM_FLAG_BITS["sr"], 2, "MADV_SEQUENTIAL"), (VM_FLAG_BITS["rr"], 1, "MADV_RANDOM"),
           (VM_FLAG_BITS["dc"], 10, "MADV_DONTFORK"), (VM_FLAG_BITS["dd"], 16, "MADV_DONTDUMP"),
           (VM_FLAG_BITS["wf"], 18, "MADV_WIPEONFORK"), (VM_FLAG_BITS["hg"], 14, "MADV_HUGEPAGE"),
           (VM_FLAG_BITS["nh"], 15, "MADV_NOHUGEPAGE"), (VM_FLAG_BITS["mg"], 12, "MADV_MERGEABLE"))
# VM_* bits of a VMA that restore cannot give back, and why (validate refuses the image).
UNRESTORABLE = {"sl": "sealed (mseal)",
                "um": "registered with a userfaultfd", "uw": "registered with a userfaultfd",
                "ui": "registered with a userfaultfd"}
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
TASK_SIZE = 0x7FFFFFFFF000  # 47-bit user space (4-level paging)
SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]")
# struct prctl_mm_map: 11 u64 addresses, u64 auxv pointer, u32 auxv_size, u32 exe_fd.
MM_MAP = struct.Struct("<12QII")
_BUF = 16 << 20


def check(ret: int, what: str) -> int:
    if -4096 < ret < 0:
        raise KernelError(what, -ret)
    return ret


def special_maps(pid: int, proc: str = "/proc") -> list[tuple[int, int, str]]:
    """(start, end, name) of the task's vvar/vdso mappings, in address order."""
    return sorted((m.start, m.end, m.path) for m in procfs.maps(pid, proc) if m.path in SPECIAL)


def check_layout(img: Image, ours: list[tuple[int, int, str]]) -> list[str]:
    """Why the image's special mappings cannot take our vdso block; empty when they can."""
    problems = []
    for mm in (o for o in img.objects.values() if isinstance(o, Mm)):
        spec = _image_special(mm)
        if not spec:
            continue
        if [(_size(a, b), k) for a, b, k in spec] != [(_size(a, b), _kind(n)) for a, b, n in ours]:
            problems.append("the image's vdso/vvar layout "
                            f"{[(hex(b - a), k) for a, b, k in spec]} differs from this kernel's "
                            f"{[(hex(b - a), n) for a, b, n in ours]}: dumped on another kernel?")
            continue
        delta = spec[0][0] - ours[0][0]
        if any(s[0] - o[0] != delta for s, o in zip(spec, ours)):
            problems.append("the image's vdso and vvar are not laid out as this kernel lays them out")
        for v in mm.vmas:
            if v.start >= TASK_SIZE:
                continue
            if v.fields["vma_type"] not in (VmaType.VDSO, VmaType.VVAR, VmaType.IGNORE) \
                    and v.fields["vma_type"] not in VmaType._value2member_map_:
                problems.append(f"VMA {v.start:#x} has unknown type {v.fields['vma_type']}")
    return problems


def _mapped_by_restore(v: Vma) -> bool:
    """Whether restore maps VMA v (not the kernel's own vdso/vvar, nothing to map, nothing above
    user space)."""
    return v.fields["vma_type"] not in (VmaType.VDSO, VmaType.VVAR, VmaType.IGNORE) and v.start < TASK_SIZE


def check_vmas(img: Image) -> list[str]:
    """The VMAs whose flags restore cannot give back: it does not seal a VMA again (mseal), and a
    userfaultfd registration belongs to an fd not in the image (dump refuses one a process holds:
    this one was held elsewhere, and its handler would never answer the faults)."""
    problems = []
    for t in img.processes():
        mm = img.obj(t.mm_objref)
        if not isinstance(mm, Mm):
            continue
        for v in mm.vmas:
            if not _mapped_by_restore(v):
                continue
            why = sorted({w for f, w in UNRESTORABLE.items() if v.fields["vm_flags"] & VM_FLAG_BITS[f]})
            if why:
                problems.append(f"process {t.tid}'s mapping {v.start:#x}-{v.end:#x} is {' and '.join(why)}, "
                                "which restore cannot recreate")
    return problems


def check_mapped_files(img: Image) -> list[str]:
    """Files whose pages restore takes from the file itself (the image holds only the pages
    written) and that hold code: the executable and every file mapped privately and executable
    (a library), that have changed since the dump (FILE_STAT: size or mtime). A shared mapping's
    contents are the file's, now, by design; so are a privately mapped data file's, but for the
    pages the image holds, which must still lie within the file (`_pages_past_eof`). A file whose
    contents the image carries (shared memory on tmpfs) is put back as dumped: not checked."""
    carried = img.carried_files()
    named: dict[int, str] = {}  # FILE objref -> how the first user names it
    for t in img.processes():
        mm = img.obj(t.mm_objref)
        if not isinstance(mm, Mm):
            continue
        if mm.fields["exe_objref"]:
            named.setdefault(mm.fields["exe_objref"], f"process {t.tid}'s executable")
        for v in mm.vmas:
            # code: a binary's or library's (its data segments map the same file, and are checked
            # with it). A data file mapped privately may have grown by appends, harmlessly.
            if v.fields["vma_type"] == VmaType.FILE and v.fields["vma_objref"] and v.fields["vm_flags"] & VM_EXEC:
                named.setdefault(v.fields["vma_objref"], f"process {t.tid}'s code mapping {v.start:#x}-{v.end:#x}")
    problems = []
    reported: set[int] = set()
    for ref, who in named.items():
        f = img.obj(ref)
        st = next((r for r in f.extra if r.type == RecType.FILE_STAT), None) if isinstance(f, File) else None
        if st is None or not f.name or f.name in carried:
            continue
        path = img.at(f.name)
        try:
            now = os.stat(path)
        except OSError:
            continue  # (check_files says it does not exist)
        # (under --root the files are copies, whose times a plain cp does not keep: size only;
        # --root / is no copy)
        grew = now.st_size != st.fields["size"]
        if grew or (img.root in ("", "/") and now.st_mtime_ns != st.fields["mtime_ns"]):
            how = f"size {st.fields['size']} -> {now.st_size}" if grew else "modified since, same size"
            problems.append(f"{who} is '{shown_path(path)}', which has changed since the dump ({how}): the pages the "
                            "image does not hold would come from the new contents")
            reported.add(ref)
    return problems + _pages_past_eof(img, reported | {o.objref for o in img.objects.values()
                                                       if isinstance(o, File) and o.name in carried})


def _last_page(v: Vma) -> int:
    """The address of the last page the image holds for VMA v."""
    return max(r.vaddr + (r.npages - 1) * PAGE_SIZE for r in v.runs)


def _pages_past_eof(img: Image, reported: set[int]) -> list[str]:
    """Files mapped privately (data files too) of which the image holds written pages that now
    lie past the file's end (it was truncated since the dump): the kernel maps no page of a
    file past its end, a private mapping's copy included (a fault there is SIGBUS, an injected
    pread into it EFAULT), so those pages cannot be put back. The original could not have had
    them either unless the file then reached them: a write there needed the page faulted in, and
    truncating a file discards even the private copies of its pages past the new end."""
    furthest: dict[int, tuple[int, int, Vma, int]] = {}  # objref -> (offset, pid, VMA, address)
    for t in img.processes():
        mm = img.obj(t.mm_objref)
        if not isinstance(mm, Mm):
            continue
        for v in mm.vmas:
            ref = v.fields["vma_objref"]
            if v.fields["vma_type"] != VmaType.FILE or not v.runs or not ref or ref in reported:
                continue
            addr = _last_page(v)
            off = v.fields["vm_pgoff"] * PAGE_SIZE + addr - v.start
            if off >= furthest.get(ref, (-1,))[0]:
                furthest[ref] = (off, t.tid, v, addr)
    problems = []
    for ref, (off, tid, v, addr) in furthest.items():
        f = img.obj(ref)
        if not isinstance(f, File) or f.ftype != FileType.REGULAR or not f.name:
            continue  # (memfds and deleted files are made from the image, at its size)
        path = img.at(f.name)
        try:
            size = os.stat(path).st_size
        except OSError:
            continue  # (check_files says it does not exist)
        if size <= off:
            problems.append(f"file '{shown_path(path)}' is now {size} bytes; process {tid}'s private mapping of it at "
                            f"{v.start:#x}-{v.end:#x} holds a written page at file offset {off} ({addr:#x}), "
                            "which the kernel cannot map past the file's end (truncated since the dump?)")
    return problems


def _size(a: int, b: int) -> int:
    return b - a


def _kind(name: str) -> str:
    return "vdso" if name == "[vdso]" else "vvar"


def _image_special(mm: Mm) -> list[tuple[int, int, str]]:
    return [(v.start, v.end, "vdso" if v.fields["vma_type"] == VmaType.VDSO else "vvar")
            for v in mm.vmas if v.fields["vma_type"] in (VmaType.VDSO, VmaType.VVAR)]


class MemoryRestorer:
    """Rebuilds one process's memory; page data is read from the (seekable) image file."""

    def __init__(self, img: Image, image_file: BinaryIO, files: FileSet):
        self.img = img
        self.f = image_file
        self.files = files
        # The image itself, inherited by every restored task (kept until its memory is done):
        # the task then pread()s its pages straight from the page cache into place, one copy.
        self.image_fd = files.place(os.dup(image_file.fileno()))
        files.extra.append(self.image_fd)
        self.buf = bytearray(_BUF)
        self.view = memoryview(self.buf)
        self.bytes_written = files.bytes_filled  # (sealed segments' pages, written by files.create)
        self.tick = lambda: None  # called as work is done (the caller's progress line)
        self.who = ""  # the process being rebuilt, as errors name it (rebuild)

    def rebuild(self, inj: Injector, host_pid: int, mm: Mm, ns_pid: int | None = None) -> None:
        tid = host_pid
        self.who = f"pid {ns_pid} (host pid {host_pid})" if ns_pid is not None else f"host pid {host_pid}"
        ours = special_maps(host_pid)
        if [n for _, _, n in ours] != list(SPECIAL):
            raise Unsupported(f"task {host_pid} has special mappings {[n for *_, n in ours]}, "
                              f"expected {list(SPECIAL)}")
        lo, hi = ours[0][0], ours[-1][1]
        unregister_rseq(inj)
        check(inj.syscall(SYS_munmap, 0, lo), f"munmap below the vdso in {tid}")
        check(inj.syscall(SYS_munmap, hi, TASK_SIZE - hi), f"munmap above the vdso in {tid}")
        spec = _image_special(mm)
        if spec and spec[0][0] != lo:
            self._move_vdso(inj, ours, spec[0][0] - lo, tid)
        for v in mm.vmas:
            if not _mapped_by_restore(v):
                continue
            self._map(inj, host_pid, v)
            self.tick()

    def _move_vdso(self, inj: Injector, ours, delta: int, tid: int) -> None:
        lo, hi = ours[0][0], ours[-1][1]
        dest_lo = lo + delta
        steps = []
        if dest_lo < hi and lo < dest_lo + (hi - lo):
            # Overlapping moves are refused by mremap: go through a spot nothing uses now.
            far = (1 << 44) if not (1 << 44) <= dest_lo < (1 << 45) else (1 << 45)
            steps = [far - lo, dest_lo - far]
        else:
            steps = [delta]
        cur = ours
        for d in steps:
            # Move the vdso last: the injected syscall runs from inside it.
            for a, b, name in sorted(cur, key=lambda m: m[2] == "[vdso]"):
                ret = check(inj.syscall(SYS_mremap, a, b - a, b - a, MREMAP_MAYMOVE | MREMAP_FIXED, a + d),
                            f"mremap {name} of {tid} to {a + d:#x}")
                if ret != a + d:
                    raise KernelError(f"mremap {name} of {tid} landed at {ret:#x}", errno.EFAULT)
            inj.insn += d
            cur = [(a + d, b + d, n) for a, b, n in cur]

    def _map(self, inj: Injector, pid: int, v: Vma) -> None:
        vf = v.fields
        t = VmaType(vf["vma_type"])
        vm_flags = vf["vm_flags"]
        prot = vm_flags & 7
        length = v.end - v.start
        fd, flags, off = -1, MAP_FIXED, 0
        if vm_flags & VM_NORESERVE:
            # Without it a writable private mapping is charged against the overcommit limit whole:
            # a sparse reservation bigger than RAM and swap (the original's MAP_NORESERVE) gets
            # ENOMEM. Any mapping type takes it; under overcommit mode 2 the kernel ignores it.
            flags |= MAP_NORESERVE
        if t is VmaType.ANON:
            flags |= MAP_PRIVATE | MAP_ANONYMOUS
            if vm_flags & VM_GROWSDOWN:
                flags |= MAP_GROWSDOWN
        elif t in (VmaType.FILE, VmaType.SHARED_FILE):
            fd = self.files.vma_fd(vf)
            flags |= MAP_PRIVATE if t is VmaType.FILE else MAP_SHARED
            off = vf["vm_pgoff"] * PAGE_SIZE
        elif t is VmaType.SHARED_ANON:
            fd = self.files.shmem[vf["vma_objref"]]
            flags |= MAP_SHARED
            off = vf["vm_pgoff"] * PAGE_SIZE
        else:
            raise Unsupported(f"VMA {v.start:#x} of type {t.name} cannot be restored")
        in_process = bool(v.runs) and t is not VmaType.SHARED_ANON
        map_prot = prot | (PROT_READ | PROT_WRITE if in_process else 0)
        if vm_flags & VM_ACCOUNT and t in (VmaType.ANON, VmaType.FILE):
            # charged to the commit limit since it was writable (mprotect keeps the charge when
            # write goes): mapped writable, it is charged again; mapped read-only, it would not be
            map_prot |= PROT_WRITE
        ret = check(inj.syscall(SYS_mmap, v.start, length, map_prot, flags, fd, off),
                    f"mmap {t.name} {v.start:#x}-{v.end:#x} in {pid}")
        if ret != v.start:
            raise KernelError(f"mmap of {v.start:#x} in {pid} landed at {ret:#x}", errno.EFAULT)
        # Before the pages are written: they are faulted in under the VMA's own policy (huge
        # pages or not, KSM, readahead), as the original's were.
        for bit, advice, name in MADVISE:
            if vm_flags & bit:
                check(inj.syscall(SYS_madvise, v.start, length, advice),
                      f"madvise({name}) of {t.name} {v.start:#x}-{v.end:#x} in {pid}")
        for run in v.runs:
            if in_process:
                try:
                    self._pread_run(inj, pid, run)
                except KernelError as exc:
                    if exc.errno != errno.EFAULT or t is not VmaType.FILE:
                        raise
                    # a page past the file's end (validation checks that, but the file may have
                    # been truncated since): name the file and the process as the user knows it
                    path = self.files.vma_path(vf)
                    try:
                        size = f"is now {os.fstat(fd).st_size} bytes"
                    except OSError:
                        size = "cannot be looked at"
                    raise KernelError(f"{self.who}: writing the image's pages of '{path}' at {v.start:#x}-{v.end:#x} "
                                      f"(file offset {off}): the file {size}, and the kernel maps no page past "
                                      "its end", errno.EFAULT) from None
            elif vf["vma_objref"] not in self.files.filled:  # (a sealed segment has its pages)
                self._write_shmem(fd, v, run)
        if map_prot != prot:
            check(inj.syscall(SYS_mprotect, v.start, length, prot), f"mprotect {v.start:#x} in {pid}")
        if vm_flags & VM_LOCKED:
            self._lock(inj, pid, v, t, prot, vm_flags & VM_LOCKONFAULT)

    def _lock(self, inj: Injector, pid: int, v: Vma, t: VmaType, prot: int, onfault: int) -> None:
        # Last: mlock faults the whole VMA in (MLOCK_ONFAULT locks what is there), so the image's
        # pages must be in place, and at the VMA's own protection, or a private file mapping still
        # writable for the restore would have every page copied. The restorer is still root here
        # (credentials come after memory): RLIMIT_MEMLOCK does not stop it, and the locked pages
        # count against the process's limit afterwards as the original's did.
        ret = inj.syscall(SYS_mlock2, v.start, v.end - v.start, MLOCK_ONFAULT if onfault else 0)
        if ret == -errno.ENOMEM and not prot and not onfault:
            # A PROT_NONE VMA cannot be faulted in: the kernel has set VM_LOCKED and then fails,
            # as it did for the original (or mlockall(MCL_FUTURE) locked it at its mmap).
            return
        check(ret, f"mlock2 of {t.name} {v.start:#x}-{v.end:#x} in {pid}")

    def _read_run(self, run) -> memoryview:
        n = run.npages * PAGE_SIZE
        if n > len(self.buf):
            self.buf = bytearray(n)
            self.view = memoryview(self.buf)
        self.f.seek(run.offset)
        got = self.f.readinto(self.view[:n])
        if got != n:
            raise ImageError(f"page data at offset {run.offset} is truncated")
        return self.view[:n]

    def _pread_run(self, inj: Injector, pid: int, run) -> None:
        n = run.npages * PAGE_SIZE
        done = 0
        while done < n:  # (in pieces: a progress line moves during a GiB-sized run)
            piece = min(n - done, PREAD_PIECE)
            got = check(inj.syscall(SYS_pread64, self.image_fd, run.vaddr + done, piece, run.offset + done),
                        f"pread of pages {run.vaddr + done:#x} in {pid}")
            if got == 0:
                raise ImageError(f"page data at offset {run.offset + done} is truncated")
            done += got
            self.bytes_written += got
            self.tick()

    def _write_shmem(self, fd: int, v: Vma, run) -> None:
        data = self._read_run(run)
        os.pwrite(fd, data, v.fields["vm_pgoff"] * PAGE_SIZE + (run.vaddr - v.start))
        self.bytes_written += len(data)


def unregister_rseq(inj: Injector) -> None:
    """Drop the interpreter's rseq registration: its area lives in memory about to be unmapped,
    and the kernel's next rseq update there would SIGSEGV the task on its way to user mode."""
    ptr, size, sig = inj.t.get_rseq()
    if ptr:
        check(inj.syscall(SYS_rseq, ptr, size, RSEQ_FLAG_UNREGISTER, sig), f"rseq unregister in {inj.t.tid}")


def close_fds(inj: Injector, fds: list[int]) -> None:
    for fd in fds:
        inj.syscall(SYS_close, fd)  # EBADF is fine: the task may have closed it itself


def set_mm(inj: Injector, mm: Mm, exe_fd: int | None) -> None:
    """prctl(PR_SET_MM_MAP). Needs the task's registers already at the image's (its stack hosts
    the struct and auxv for the duration of the call, restored after)."""
    f = mm.fields
    auxv = b"".join(struct.pack("<QQ", a, b) for a, b in mm.auxv)
    with inj.scratch(MM_MAP.size + len(auxv)) as (addr, mem):
        auxv_addr = addr + MM_MAP.size
        mem.seek(addr)
        mem.write(MM_MAP.pack(f["start_code"], f["end_code"], f["start_data"], f["end_data"],
                              f["start_brk"], f["brk"], f["start_stack"], f["arg_start"], f["arg_end"],
                              f["env_start"], f["env_end"], auxv_addr if auxv else 0, len(auxv),
                              0xFFFFFFFF if exe_fd is None else exe_fd))
        mem.write(auxv)
        check(inj.syscall(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, addr, MM_MAP.size, 0),
              f"prctl(PR_SET_MM_MAP) in {inj.t.tid}")


def lock_future(inj: Injector, mm: Mm) -> None:
    """mlockall(MCL_FUTURE) again if the process had it (MM.def_flags), without MCL_CURRENT: the
    VMAs it locked came back locked each (step 3), and only mappings made from now on take it.
    Before the seccomp filters, which could refuse mlockall."""
    flags = mm.fields["def_flags"]
    if flags & VM_FLAG_BITS["lo"]:
        how = MCL_FUTURE | (MCL_ONFAULT if flags & VM_FLAG_BITS["lf"] else 0)
        check(inj.syscall(SYS_mlockall, how), f"mlockall(MCL_FUTURE) in {inj.t.tid}")


def mdwe_bits(proc_flags: int) -> int:
    """PR_SET_MDWE's argument for a process's TASK_PROC.flags (0: it had none)."""
    return (PR_MDWE_REFUSE_EXEC_GAIN if proc_flags & PROC_MDWE_REFUSE_EXEC_GAIN else 0) | \
           (PR_MDWE_NO_INHERIT if proc_flags & PROC_MDWE_NO_INHERIT else 0)


def mdwe_problems(t, supported: bool | None = None) -> list[str]:
    """A process with memory-deny-write-execute, on a kernel without it (before 6.3; `supported`:
    whether the kernel has it, this one's by default): it cannot be given back, and restoring the
    process without it would lift a protection."""
    from ..kernel.sys import libc

    if not t.proc or not mdwe_bits(t.proc["flags"]):
        return []
    if supported is None:
        supported = libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0
    if supported:
        return []
    return [f"process {t.tid} denies write-execute memory (PR_SET_MDWE), which this kernel does not support"]


def deny_write_exec(inj: Injector, tid: int, proc_flags: int) -> None:
    """PR_SET_MDWE again if the process had it, once its memory and every injected mapping are in
    place: it cannot be undone, and it refuses a mapping both writable and executable and an
    mprotect that makes memory executable (all of its threads: it is the mm's). Late also because
    without PR_MDWE_NO_INHERIT a fork keeps it, and its children are forked before."""
    if bits := mdwe_bits(proc_flags):
        check(inj.syscall(SYS_prctl, PR_SET_MDWE, bits, 0, 0, 0), f"prctl(PR_SET_MDWE) in {tid}")


def set_comm(inj: Injector, comm: str) -> None:
    """The task's name (comm, as the image reader decoded it). Without this every restored task
    is named after the process it was forked from (ps shows "ckptrace"): a comm is per thread and
    only the thread itself may set it (PR_SET_NAME)."""
    name = comm.encode("utf-8", "surrogateescape")[:TASK_COMM_LEN - 1]
    with inj.scratch(TASK_COMM_LEN) as (addr, mem):
        mem.seek(addr)
        mem.write(name.ljust(TASK_COMM_LEN, b"\0"))
        check(inj.syscall(SYS_prctl, PR_SET_NAME, addr), f"prctl(PR_SET_NAME) in {inj.t.tid}")


def set_thread_state(inj: Injector, task, inherited: int = 0) -> None:
    """The task's name (comm), set_tid_address(clear_child_tid), the rseq registration, the robust
    futex list, the sigaltstack and the TSC mode of one task (memory and registers already in
    place: registering rseq makes the kernel write the area). `inherited`: the THREAD.flags of
    the task it was cloned from once that one's state was set (a thread's leader), 0 for a
    process forked by the restore (which runs with the TSC enabled)."""
    set_comm(inj, task.comm)
    # Where it differs from what the clone inherited, PR_TSC_ENABLE too: a thread cloned from a
    # leader with PR_TSC_SIGSEGV has it. (Nothing injected runs rdtsc: the restored task executes
    # only the syscall instruction.)
    if (task.thread["flags"] ^ inherited) & THREAD_TSC_SIGSEGV:
        tsc = PR_TSC_SIGSEGV if task.thread["flags"] & THREAD_TSC_SIGSEGV else PR_TSC_ENABLE
        check(inj.syscall(SYS_prctl, PR_SET_TSC, tsc), f"prctl(PR_SET_TSC) in {inj.t.tid}")
    check(inj.syscall(SYS_set_tid_address, task.fields["clear_child_tid"]), f"set_tid_address in {inj.t.tid}")
    th = task.thread
    if th["rseq_ptr"]:
        # glibc registers every thread's area at its start and never again: without this,
        # sched_getcpu() and rseq users would read a cpu number frozen at dump time.
        check(inj.syscall(SYS_rseq, th["rseq_ptr"], th["rseq_len"], 0, th["rseq_sig"]),
              f"rseq register in {inj.t.tid}")
    # Always, even for a head of 0: a leader forked from the controller has the interpreter's
    # head (glibc sets it again after fork), now pointing into whatever the image mapped there,
    # which the kernel would walk at exit. glibc registers each thread's list once, at its start:
    # without this a mutex held by a restored task that dies never reports EOWNERDEAD.
    check(inj.syscall(SYS_set_robust_list, th["robust_list"], th["robust_len"] or ROBUST_LIST_HEAD_SIZE),
          f"set_robust_list in {inj.t.tid}")
    if th["sas_ss_size"] and not th["sas_ss_flags"] & 2:  # SS_DISABLE
        with inj.scratch(24) as (addr, mem):
            mem.seek(addr)
            # stack_t {ss_sp, int ss_flags, ss_size}; of the flags only SS_AUTODISARM can be set.
            mem.write(struct.pack("<QI4xQ", th["sas_ss_sp"], th["sas_ss_flags"] & 0x80000000,
                                  th["sas_ss_size"]))
            check(inj.syscall(SYS_sigaltstack, addr, 0), f"sigaltstack in {inj.t.tid}")
