"""`ckptrace diff A B`: what changed between two images of the same namespace.

Processes and threads are matched by their pid inside the namespace, VMAs by start address, fds
by number. Pages are compared by content: each image's page runs are read (by offset, a run at
a time) and hashed, so memory use is a digest per page, not the pages themselves.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, BinaryIO, Iterator

from .image.reader import File, FileTable, Image, Mm, Vma, read_image
from .image.records import FILE_NAMES, PAGE_SIZE, VMA_NAMES
from .image.render import human, prot_str, vma_label

_READ_PAGES = 256  # pages per read while hashing (1 MiB)


def page_digests(f: BinaryIO, vma: Vma) -> dict[int, bytes]:
    """address -> digest of every page the image stores for this VMA."""
    out: dict[int, bytes] = {}
    for run in vma.runs:
        for first in range(0, run.npages, _READ_PAGES):
            n = min(_READ_PAGES, run.npages - first)
            f.seek(run.offset + first * PAGE_SIZE)
            data = f.read(n * PAGE_SIZE)
            if len(data) != n * PAGE_SIZE:
                from .errors import ImageError

                raise ImageError(f"image shrank: page data at offset {run.offset} is truncated")
            view = memoryview(data)
            for k in range(n):
                out[run.vaddr + (first + k) * PAGE_SIZE] = hashlib.blake2b(
                    view[k * PAGE_SIZE:(k + 1) * PAGE_SIZE], digest_size=16).digest()
    return out


def ranges(addrs: list[int]) -> list[tuple[int, int]]:
    """Sorted page addresses -> [start, end) ranges of adjacent pages."""
    out: list[tuple[int, int]] = []
    for a in addrs:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], a + PAGE_SIZE)
        else:
            out.append((a, a + PAGE_SIZE))
    return out


def vma_doc(img: Image, v: Vma) -> dict[str, Any]:
    return dict(start=v.start, end=v.end, prot=prot_str(v.fields["vm_page_prot"], v.fields["vm_flags"]),
                type=VMA_NAMES.get(v.fields["vma_type"], v.fields["vma_type"]), file=vma_label(img, v),
                pages=v.npages)


def fd_docs(img: Image, table: FileTable | None) -> dict[int, dict[str, Any]]:
    out = {}
    for d in (table.fds if table else []):
        f: File = img.obj(d["fd_objref"])
        out[d["fd_descriptor"]] = dict(fd=d["fd_descriptor"], kind=FILE_NAMES.get(f.ftype, str(f.ftype)),
                                       path=f.name, flags=f.fields["f_flags"], pos=f.fields["f_pos"],
                                       cloexec=bool(d["fd_close_on_exec"]))
    return out


def diff_pages(fa: BinaryIO, va: Vma, fb: BinaryIO, vb: Vma) -> dict[str, Any] | None:
    """Pages of a VMA present in both images whose contents differ, or present in only one."""
    lo, hi = max(va.start, vb.start), min(va.end, vb.end)
    da = {a: h for a, h in page_digests(fa, va).items() if lo <= a < hi}
    db = {a: h for a, h in page_digests(fb, vb).items() if lo <= a < hi}
    changed = sorted(a for a in da.keys() & db.keys() if da[a] != db[a])
    only_a = sorted(da.keys() - db.keys())
    only_b = sorted(db.keys() - da.keys())
    if not (changed or only_a or only_b):
        return None
    return dict(start=vb.start, end=vb.end, file=None, changed=len(changed), ranges=ranges(changed),
                only_in_a=len(only_a), only_in_a_ranges=ranges(only_a),
                only_in_b=len(only_b), only_in_b_ranges=ranges(only_b))


def diff_mm(ia: Image, fa: BinaryIO, ma: Mm, ib: Image, fb: BinaryIO, mb: Mm) -> dict[str, Any]:
    a = {v.start: v for v in ma.vmas}
    b = {v.start: v for v in mb.vmas}
    out: dict[str, Any] = dict(added=[vma_doc(ib, b[s]) for s in sorted(b.keys() - a.keys())],
                               removed=[vma_doc(ia, a[s]) for s in sorted(a.keys() - b.keys())],
                               resized=[], reprotected=[], pages=[])
    for s in sorted(a.keys() & b.keys()):
        va, vb = a[s], b[s]
        da, db = vma_doc(ia, va), vma_doc(ib, vb)
        if va.end != vb.end:
            out["resized"].append(dict(start=s, end_a=va.end, end_b=vb.end, file=db["file"]))
        if da["prot"] != db["prot"]:
            out["reprotected"].append(dict(start=s, end=vb.end, prot_a=da["prot"], prot_b=db["prot"],
                                           file=db["file"]))
        p = diff_pages(fa, va, fb, vb)
        if p:
            p["file"] = db["file"] or db["type"]
            out["pages"].append(p)
    return out


def diff_fds(ia: Image, ta, ib: Image, tb) -> dict[str, Any]:
    a, b = fd_docs(ia, ta), fd_docs(ib, tb)
    changed = []
    for fd in sorted(a.keys() & b.keys()):
        what = {k: [a[fd][k], b[fd][k]] for k in ("kind", "path", "flags", "pos", "cloexec") if a[fd][k] != b[fd][k]}
        if what:
            changed.append(dict(fd=fd, kind=b[fd]["kind"], path=b[fd]["path"], changes=what))
    return dict(added=[b[fd] for fd in sorted(b.keys() - a.keys())],
                removed=[a[fd] for fd in sorted(a.keys() - b.keys())], changed=changed)


def image_doc(path: str, img: Image) -> dict[str, Any]:
    return dict(path=path, time=img.header["time"], release=img.uts[0], tasks=len(img.tasks),
                pages=img.page_count)


def diff_images(ia: Image, fa: BinaryIO, ib: Image, fb: BinaryIO, *, path_a: str = "A",
                path_b: str = "B") -> dict[str, Any]:
    """The `diff --json` document."""
    ta = {t.tid: t for t in ia.tasks}
    tb = {t.tid: t for t in ib.tasks}

    def tdoc(t):
        return dict(tid=t.tid, tgid=t.tgid, comm=t.comm)

    procs = []
    for p in ib.processes():
        q = ta.get(p.tid)
        if q is None or not q.is_leader:
            continue
        d: dict[str, Any] = dict(pid=p.tid, comm=p.comm)
        if q.comm != p.comm:
            d["comm_a"] = q.comm
        d["vmas"] = diff_mm(ia, fa, ia.obj(q.mm_objref), ib, fb, ib.obj(p.mm_objref))
        d["fds"] = diff_fds(ia, ia.obj(q.files_objref), ib, ib.obj(p.files_objref))
        procs.append(d)
    return dict(a=image_doc(path_a, ia), b=image_doc(path_b, ib),
                tasks=dict(added=[tdoc(tb[t]) for t in sorted(tb.keys() - ta.keys())],
                           gone=[tdoc(ta[t]) for t in sorted(ta.keys() - tb.keys())]),
                processes=procs)


def _empty(p: dict[str, Any]) -> bool:
    v, f = p["vmas"], p["fds"]
    return not any(v[k] for k in ("added", "removed", "resized", "reprotected", "pages")) and \
        not any(f[k] for k in ("added", "removed", "changed")) and "comm_a" not in p


def _rng(rs: list[tuple[int, int]], limit: int = 8) -> Iterator[str]:
    for s, e in rs[:limit]:
        yield f"{s:x}-{e:x}"
    if len(rs) > limit:
        yield f"... {len(rs) - limit} more"


def diff_text(d: dict[str, Any]) -> str:
    def stamp(x):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(x["time"]))

    out = [f"--- {d['a']['path']}  {stamp(d['a'])}  {d['a']['tasks']} tasks, {d['a']['pages']} pages",
           f"+++ {d['b']['path']}  {stamp(d['b'])}  {d['b']['tasks']} tasks, {d['b']['pages']} pages"]
    for t in d["tasks"]["added"]:
        out.append(f"+ task {t['tid']} {t['comm']}" + (f" (thread of {t['tgid']})" if t["tid"] != t["tgid"] else ""))
    for t in d["tasks"]["gone"]:
        out.append(f"- task {t['tid']} {t['comm']}" + (f" (thread of {t['tgid']})" if t["tid"] != t["tgid"] else ""))
    same = 0
    for p in d["processes"]:
        if _empty(p):
            same += 1
            continue
        out.append(f"process {p['pid']} {p['comm']}" + (f" (was {p['comm_a']})" if "comm_a" in p else ""))
        v = p["vmas"]
        for x in v["added"]:
            out.append(f"  + vma {x['start']:x}-{x['end']:x} {x['prot']} {x['type']} {human(x['end'] - x['start'])} {x['file']}")
        for x in v["removed"]:
            out.append(f"  - vma {x['start']:x}-{x['end']:x} {x['prot']} {x['type']} {human(x['end'] - x['start'])} {x['file']}")
        for x in v["resized"]:
            out.append(f"  ~ vma {x['start']:x}: end {x['end_a']:x} -> {x['end_b']:x} "
                       f"({human(x['end_a'] - x['start'])} -> {human(x['end_b'] - x['start'])}) {x['file']}")
        for x in v["reprotected"]:
            out.append(f"  ~ vma {x['start']:x}-{x['end']:x}: {x['prot_a']} -> {x['prot_b']} {x['file']}")
        for x in v["pages"]:
            line = f"  * pages {x['start']:x}-{x['end']:x} {x['file']}: {x['changed']} changed"
            if x["only_in_a"]:
                line += f", {x['only_in_a']} only in A"
            if x["only_in_b"]:
                line += f", {x['only_in_b']} only in B"
            out.append(line)
            for key, sign in (("ranges", "changed"), ("only_in_a_ranges", "only in A"), ("only_in_b_ranges", "only in B")):
                if x[key]:
                    out.append(f"      {sign}: " + " ".join(_rng(x[key])))
        f = p["fds"]
        for x in f["added"]:
            out.append(f"  + fd {x['fd']} {x['kind']} {x['path'] or ''}".rstrip())
        for x in f["removed"]:
            out.append(f"  - fd {x['fd']} {x['kind']} {x['path'] or ''}".rstrip())
        for x in f["changed"]:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in x["changes"].items())
            out.append(f"  ~ fd {x['fd']} {x['kind']} {x['path'] or ''}: {what}")
    if same:
        out.append(f"{same} process{'es' if same > 1 else ''} unchanged")
    return "\n".join(out)


def main(args) -> int:
    from .tui.source import open_seekable

    if args.a == "-" and args.b == "-":
        from .errors import UsageError

        raise UsageError("only one of A and B can be standard input")
    with open_seekable(args.a) as fa, open_seekable(args.b) as fb:
        ia, ib = read_image(fa), read_image(fb)
        d = diff_images(ia, fa, ib, fb, path_a=args.a, path_b=args.b)
    if args.json:
        print(json.dumps(d))
    else:
        print(diff_text(d))
    return 0
