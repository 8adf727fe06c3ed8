"""Builds small synthetic images that use every record type, for format and reader tests.

Real images come from real dumps (tests/test_dump*.py); these exist so the reader's checks can be
exercised on inputs a dump would never write.
"""

from __future__ import annotations

import io
import os
import struct

from ckptrace.image.records import (PAGE_SIZE, REG_NAMES, VMA_LAST_PAGE, FileType, ObjType,
                                    RecType, VmaType)
from ckptrace.image.stream import ImageWriter, write_header, write_tail

XSTATE = 1024


def build(extra_task: bool = True, pages: int = 3, chain: int = 0, heap_split: int = 0, zombie: dict | None = None,
          thread_creds: dict | None = None, ns: tuple[int, bytes] | None = None, extra_vmas: int = 0,
          comm: bytes = b"sample", log_path: str = "/tmp/log.txt", ns_own: int | None = None,
          shm: bool = False) -> bytes:
    r, w = os.pipe()
    out = io.BytesIO()
    import threading

    def drain():
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            out.write(chunk)

    th = threading.Thread(target=drain)
    th.start()
    wr = ImageWriter(w)
    write(wr, extra_task=extra_task, pages=pages, chain=chain, heap_split=heap_split, zombie=zombie,
          thread_creds=thread_creds, ns=ns, extra_vmas=extra_vmas, comm=comm, log_path=log_path, ns_own=ns_own,
          shm=shm)
    os.close(w)
    th.join()
    os.close(r)
    return out.getvalue()


def write(wr: ImageWriter, extra_task: bool = True, pages: int = 3, chain: int = 0, heap_split: int = 0,
          zombie: dict | None = None, thread_creds: dict | None = None,
          ns: tuple[int, bytes] | None = None, extra_vmas: int = 0, comm: bytes = b"sample",
          log_path: str = "/tmp/log.txt", ns_own: int | None = None, shm: bool = False) -> None:
    """thread_creds: TASK_CREDS fields of thread 2's own credentials (with "groups": its list).
    chain: that many more processes after pid 1 (no extra_task then), each the child of the
    one before (a fork chain), sharing pid 1's files and mm. heap_split: an address inside the
    heap where it ends instead, the rest mapped as another VMA (read-only, untouched: no pages).
    zombie: TASK fields of a last process, pid 9, child of pid 1, written as a zombie (with
    "pid", "tgid" keys: its TREE entry's instead; "comm": its name, "gone" if not given).
    ns: pid 1's TASK_NS flags and payload, instead of the sample's. extra_vmas: that many more
    VMAs in pid 1's mm after the heap (one page each, a page apart, none stored), for lists
    longer than a screen. comm: every live task's name (at most 16 bytes). log_path: the name of
    the regular file pid 1 has open as fds 0 and 1. ns_own: pid 1's TASK_NS.own, instead of
    the sample's. shm: shared memory on tmpfs whose contents the image carries (SHM_PATH, see
    shm_file), open as pid 1's fd 3 and mapped MAP_SHARED at SHM_VMA by pid 1 (SHM_PAGES pages
    from offset 0, through that fd's object) and by pid 3 with extra_task (one page, file page
    SHM_PGOFF, through an object of its own, which carries nothing)."""
    write_header(wr, time=1700000000, uts=("6.18.0-test", "#1 SMP", "x86_64"), xstate_size=XSTATE, xcr0=0xE7)
    tree = [dict(pid=1, tgid=1, ppid=0, pgid=1, sid=1, hostpid=1000)]
    if extra_task and not chain:
        tree += [dict(pid=2, tgid=1, ppid=0, pgid=1, sid=1, hostpid=1001),
                 dict(pid=3, tgid=3, ppid=1, pgid=1, sid=1, hostpid=1002)]
    tree += [dict(pid=i, tgid=i, ppid=i - 1, pgid=1, sid=1, hostpid=1000 + i) for i in range(2, chain + 2)]
    z = dict(zombie or {})
    zpid, ztgid, zcomm = z.pop("pid", 9), z.pop("tgid", 9), z.pop("comm", "gone")
    if zombie is not None:
        tree.append(dict(pid=zpid, tgid=ztgid, ppid=1, pgid=1, sid=1, hostpid=1009))
    wr.record(RecType.TREE, dict(nr_tasks=len(tree)), tree)
    task(wr, 1, 1, first=True, pages=pages, heap_split=heap_split, ns=ns, extra_vmas=extra_vmas, comm=comm,
         log_path=log_path, ns_own=ns_own, shm=shm)
    if extra_task and not chain:
        task(wr, 2, 1, first=False, pages=pages, creds=thread_creds, comm=comm)
        task(wr, 3, 3, first=False, pages=pages, own_mm=True, heap_split=heap_split, comm=comm, shm=shm)
    for i in range(2, chain + 2):
        task(wr, i, i, first=False, pages=pages, comm=comm)
    if zombie is not None:
        wr.record(RecType.TASK, dict(dict(state=0x80, exit_state=0x20, exit_code=7 << 8, exit_signal=17), **z))
        wr.record(RecType.STRING, payload=zcomm.encode().ljust(16, b"\0"))
        wr.record(RecType.THREAD, dict(tid=zpid, tgid=ztgid))
        wr.record(RecType.TASK_CREDS, dict(uid=1000, euid=1000, suid=1000, fsuid=1000, gid=100, ngroups=1), [dict(gid=100)])
    write_tail(wr)


def task(wr, tid, tgid, *, first, pages, own_mm=False, heap_split=0, creds=None, ns=None, extra_vmas=0,
         comm=b"sample", log_path="/tmp/log.txt", ns_own=None, shm=False):
    wr.record(RecType.TASK, dict(state=1, exit_signal=17, clear_child_tid=0x7F0000001000 + tid))
    wr.record(RecType.STRING, payload=comm.ljust(16, b"\0"))
    wr.record(RecType.THREAD, dict(tid=tid, tgid=tgid, blocked=0x4000, sas_ss_flags=2))
    files_ref, mm_ref = 1, 3
    if first:
        wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE_TABLE, objref=1))
        wr.record(RecType.FILE_TABLE, dict(fdt_nfds=4 if shm else 3))
        wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=2))
        wr.record(RecType.FILE, dict(f_type=FileType.REGULAR, f_mode=3, f_flags=0o2002, f_pos=42))
        wr.record(RecType.FILE_NAME, payload=log_path)
        wr.record(RecType.FILE_DESC, dict(fd_objref=2, fd_descriptor=0))
        wr.record(RecType.FILE_DESC, dict(fd_objref=2, fd_descriptor=1, fd_close_on_exec=1))
        wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=5))
        wr.record(RecType.FILE, dict(f_type=FileType.PIPE, f_mode=1, f_flags=0))
        wr.record(RecType.FILE_NAME, payload="pipe:[1234]")
        wr.record(RecType.FILE_PIPE, dict(pipe_id=1234, buffered=5, pipe_size=65536), b"hello")
        wr.record(RecType.FILE_OWNER, dict(owner_type=1, owner_pid=1, signal=39))
        wr.record(RecType.FILE_DESC, dict(fd_objref=5, fd_descriptor=7))
        if shm:
            shm_file(wr, SHM_REF, carried=True)
            wr.record(RecType.FILE_DESC, dict(fd_objref=SHM_REF, fd_descriptor=3))
    if first or own_mm:
        mm_ref = 3 if first else 6
        mm(wr, mm_ref, exe_ref=4 if first else 0, pages=pages, seed=tid, heap_split=heap_split,
           extra_vmas=extra_vmas if first else 0, shm=(SHM_REF if first else SHM_OWN_REF) if shm else 0)
    wr.record(RecType.TASK_OBJS, dict(files_objref=files_ref, mm_objref=mm_ref))
    regs = {n: i * 0x1111 + tid for i, n in enumerate(REG_NAMES)}
    wr.record(RecType.CPU, regs, bytes([tid & 0xFF]) * XSTATE)
    wr.record(RecType.TASK_SCHED, dict(policy=0, nice=tid % 3), b"\x03")  # CPUs 0 and 1
    if first:  # confined like a container's task: no_new_privs and one filter (ld [nr]; ret ALLOW)
        wr.record(RecType.TASK_SECCOMP, dict(mode=2, no_new_privs=1, nfilters=1))
        wr.record(RecType.TASK_SECCOMP_FILTER, dict(flags=2, ninsns=2),
                  [dict(code=0x20, k=0), dict(code=0x06, k=0x7FFF0000)])
    if creds is not None:  # a thread's own credentials, after its seccomp records
        c = dict(creds)
        groups = c.pop("groups", [])
        wr.record(RecType.TASK_CREDS, dict(c, ngroups=len(groups)), [dict(gid=g) for g in groups])
    if tid == 2:  # a thread with a signal queued to it alone (tgkill of an RT signal)
        wr.record(RecType.TASK_SIGINFO, dict(shared=0, nsiginfo=1), struct.pack("<iii", 36, 0, -6).ljust(128, b"\0"))
    if tid == tgid:
        wr.record(RecType.TASK_CREDS, dict(uid=0, gid=0, ngroups=2, cap_eff=0x1FF), [dict(gid=4), dict(gid=27)])
        wr.record(RecType.TASK_SIGHAND, dict(nsig=64), [dict(handler=1 if i == 12 else 0) for i in range(64)])
        wr.record(RecType.TASK_RLIMITS, dict(nlimits=16), [dict(cur=i, max=2 ** 64 - 1) for i in range(16)])
        wr.record(RecType.TASK_PROC, dict(umask=0o22, personality=0), b"/root\0/\0" b"0::/\n\0")
        wr.record(RecType.TASK_ITIMERS, dict(real_interval=100_000, real_value=42_000))
        wr.record(RecType.TASK_POSIX_TIMERS, dict(ntimers=1),
                  [dict(id=3, clock=1, signo=10, notify=0, target=tgid, sival=0x1234, interval=0, value=5 * 10**9)])
        wr.record(RecType.TASK_LOCKS, dict(nlocks=1), [dict(kind=2, type=1, fd=0, start=0, length=0)])
        flags, names = ns or (0, b"sample-host\0(none)\0")
        own = ns_own if ns_own is not None else 0x04020000 | 0x40000000 * (ns is not None)  # own mnt and uts
        wr.record(RecType.TASK_NS, dict(own=own, flags=flags), names)
        wr.record(RecType.TASK_SIGINFO, dict(shared=1, nsiginfo=1), struct.pack("<iii", 35, 0, -1).ljust(128, b"\0"))


SHM_PATH = "/dev/shm/sample"
SHM_REF, SHM_OWN_REF = 7, 8  # pid 1's fd 3 (carries the contents); pid 3's mapping's own object
SHM_SIZE = 2 * PAGE_SIZE + 100  # its last page part of a page, and page 1 a hole
SHM_DATA = ((0, b"HELLO".ljust(PAGE_SIZE, b"\0")), (2 * PAGE_SIZE, b"TAIL".ljust(100, b"\x01")))
SHM_VMA, SHM_PAGES = 0x7E0000000000, 4  # pid 1 maps it from offset 0, a page past its end too
SHM_PGOFF = 2  # pid 3 maps one page of it, from file page 2


def shm_file(wr, ref, *, carried):
    """A REGULAR file on tmpfs (SHM_PATH): its FILE_STAT, and with `carried` its contents
    (FILE_DATA: SHM_DATA's extents of a file of SHM_SIZE bytes, as a dump of shared memory
    writes them with the file's first object)."""
    wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=ref))
    wr.record(RecType.FILE, dict(f_type=FileType.REGULAR, f_mode=3, f_flags=0o2))
    wr.record(RecType.FILE_NAME, payload=SHM_PATH)
    wr.record(RecType.FILE_STAT, dict(size=SHM_SIZE, ino=7, dev=27, mode=0o100600))
    for offset, data in SHM_DATA if carried else ():
        wr.record(RecType.FILE_DATA, dict(size=SHM_SIZE, offset=offset), data)


def mm(wr, ref, exe_ref, pages, seed, heap_split=0, extra_vmas=0, shm=0):
    """shm: the objref of the shared memory file the mm maps (SHM_OWN_REF: one of its own,
    written here), 0 for none."""
    wr.record(RecType.OBJREF, dict(objtype=ObjType.MM, objref=ref))
    if shm == SHM_OWN_REF:
        shm_file(wr, SHM_OWN_REF, carried=False)
    if exe_ref:
        wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=exe_ref))
        wr.record(RecType.FILE, dict(f_type=FileType.REGULAR, f_mode=1))
        wr.record(RecType.FILE_NAME, payload="/usr/bin/sample")
    base = 0x400000
    wr.record(RecType.MM, dict(map_count=(3 if heap_split else 2) + bool(shm) + extra_vmas, exe_objref=exe_ref,
                               start_code=base, end_code=base + 0x1000,
                               start_brk=0x600000, brk=0x621000, start_stack=0x7FFF0000))
    if exe_ref:
        wr.record(RecType.VMA, dict(vma_type=VmaType.FILE, vma_objref=exe_ref, vm_start=base,
                                    vm_end=base + 0x1000, vm_page_prot=5, vm_flags=0x75))
    else:
        wr.record(RecType.VMA, dict(vma_type=VmaType.ANON, vm_start=base, vm_end=base + 0x1000,
                                    vm_page_prot=1, vm_flags=0x71))
    wr.record(RecType.PAGE, dict(vaddr=VMA_LAST_PAGE))
    heap = 0x600000
    heap_end = heap + 0x21000
    wr.record(RecType.VMA, dict(vma_type=VmaType.ANON, vm_start=heap, vm_end=heap_split or heap_end,
                                vm_page_prot=3, vm_flags=0x100073))
    if pages:
        wr.raw_record(RecType.PAGE, (heap).to_bytes(8, "little"),
                      b"".join(bytes([(seed + i) & 0xFF]) * PAGE_SIZE for i in range(pages)))
        if not heap_split:
            wr.raw_record(RecType.PAGE, (heap + 0x10000).to_bytes(8, "little"), b"\xAB" * PAGE_SIZE)
    wr.record(RecType.PAGE, dict(vaddr=VMA_LAST_PAGE))
    if heap_split:
        wr.record(RecType.VMA, dict(vma_type=VmaType.ANON, vm_start=heap_split, vm_end=heap_end,
                                    vm_page_prot=1, vm_flags=0x71))
        wr.record(RecType.PAGE, dict(vaddr=VMA_LAST_PAGE))
    if shm:
        npages, pgoff = (SHM_PAGES, 0) if shm == SHM_REF else (1, SHM_PGOFF)
        wr.record(RecType.VMA, dict(vma_type=VmaType.SHARED_FILE, vma_objref=shm,
                                    vm_start=SHM_VMA, vm_end=SHM_VMA + npages * PAGE_SIZE, vm_page_prot=3,
                                    vm_flags=0xFB, vm_pgoff=pgoff))
        wr.record(RecType.PAGE, dict(vaddr=VMA_LAST_PAGE))
    for i in range(extra_vmas):
        start = 0x7F0000000000 + 2 * i * PAGE_SIZE
        wr.record(RecType.VMA, dict(vma_type=VmaType.ANON, vm_start=start, vm_end=start + PAGE_SIZE,
                                    vm_page_prot=3, vm_flags=0x73))
        wr.record(RecType.PAGE, dict(vaddr=VMA_LAST_PAGE))
    wr.record(RecType.MM_AUXV, dict(nentries=2), [dict(a_type=6, a_val=4096), dict(a_type=0, a_val=0)])
