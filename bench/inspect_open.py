"""How long `ckptrace inspect` and `ckptrace diff` take to open a big image: they index records and
read page data only when shown (inspect) or compared (diff).

    .venv/bin/python bench/inspect_open.py [GiB]     (default 2)

Writes a synthetic image with one process holding GiB of pages (16 MiB PAGE records, as a dump of
a big heap would), then prints: index time, first hex screen time, full diff time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from ckptrace.image.reader import read_image  # noqa: E402
from ckptrace.image.records import PAGE_SIZE, REG_NAMES, VMA_LAST_PAGE, ObjType, RecType, VmaType  # noqa: E402
from ckptrace.image.stream import ImageWriter, create_image_file, write_header, write_tail  # noqa: E402


def write_big(path: str, gib: float) -> int:
    npages = int(gib * (1 << 30)) // PAGE_SIZE
    fd = create_image_file(path)
    w = ImageWriter(fd)
    write_header(w, time=int(time.time()), uts=("6.18.0-bench", "#1", "x86_64"), xstate_size=1024, xcr0=0xE7)
    w.record(RecType.TREE, dict(nr_tasks=1), [dict(pid=1, tgid=1, ppid=0, pgid=1, sid=1, hostpid=1)])
    w.record(RecType.TASK, dict(state=1))
    w.record(RecType.STRING, payload=b"big".ljust(16, b"\0"))
    w.record(RecType.THREAD, dict(tid=1, tgid=1))
    w.record(RecType.OBJREF, dict(objtype=ObjType.FILE_TABLE, objref=1))
    w.record(RecType.FILE_TABLE, dict(fdt_nfds=0))
    w.record(RecType.OBJREF, dict(objtype=ObjType.MM, objref=2))
    w.record(RecType.MM, dict(map_count=1))
    base = 0x7F0000000000
    w.record(RecType.VMA, dict(vma_type=VmaType.ANON, vm_start=base, vm_end=base + npages * PAGE_SIZE,
                               vm_page_prot=3, vm_flags=0x73))
    chunk = bytes(range(256)) * (4096 * PAGE_SIZE // 256)
    done = 0
    while done < npages:
        n = min(4096, npages - done)
        w.raw_record(RecType.PAGE, (base + done * PAGE_SIZE).to_bytes(8, "little"), chunk[:n * PAGE_SIZE])
        done += n
    w.record(RecType.PAGE, dict(vaddr=VMA_LAST_PAGE))
    w.record(RecType.MM_AUXV, dict(nentries=1), [dict(a_type=0, a_val=0)])
    w.record(RecType.TASK_OBJS, dict(files_objref=1, mm_objref=2))
    w.record(RecType.CPU, {n: 0 for n in REG_NAMES}, bytes(1024))
    w.record(RecType.TASK_CREDS, dict(ngroups=0), [])
    w.record(RecType.TASK_SIGHAND, dict(nsig=64), [dict() for _ in range(64)])
    w.record(RecType.TASK_RLIMITS, dict(nlimits=16), [dict() for _ in range(16)])
    w.record(RecType.TASK_PROC, dict(umask=0o22), b"/\0/\0")
    write_tail(w)
    os.close(fd)
    return npages


def main() -> None:
    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    from ckptrace.imgdiff import diff_images
    from ckptrace.tui.state import InspectState

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big.img")
        npages = write_big(path, gib)
        print(f"image: {os.path.getsize(path) / (1 << 30):.2f} GiB, {npages} pages")
        t0 = time.perf_counter()
        f = open(path, "rb")
        img = read_image(f)
        t1 = time.perf_counter()
        st = InspectState(img, f)
        st.open_vma(0)
        st.rows = 20
        st.goto(st.vma.end - 100)
        st.hex_lines()
        t2 = time.perf_counter()
        print(f"index (open): {(t1 - t0) * 1000:.1f} ms; jump to the last page and draw: {(t2 - t1) * 1000:.2f} ms")
        st.mark = None
        st.top = st.vma.start
        t5 = time.perf_counter()
        assert st.search(b"not in the image at all") is None
        t6 = time.perf_counter()
        print(f"search that finds nothing (reads every page): {t6 - t5:.2f} s, "
              f"{npages * PAGE_SIZE / (t6 - t5) / (1 << 30):.2f} GiB/s")
        g = open(path, "rb")
        t3 = time.perf_counter()
        diff_images(img, f, read_image(g), g)
        t4 = time.perf_counter()
        print(f"diff of the image with itself (reads and compares every page of both): {t4 - t3:.2f} s, "
              f"{2 * npages * PAGE_SIZE / (t4 - t3) / (1 << 30):.2f} GiB/s")
        f.close()
        g.close()


if __name__ == "__main__":
    main()
