"""`ckptrace diff A B`: what changed between two images of the same namespace.

Processes and threads are matched by their pid inside the namespace, VMAs by start address, fds
by number. Pages are compared by content where both images store them: the two images' page runs are read
side by side, a megabyte at a time (by offset), so memory use stays bounded whatever the size.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, BinaryIO, Iterator

from .image.reader import File, FileTable, Image, Mm, Vma, read_image
from .image.records import (FILE_NAMES, PAGE_SIZE, RECORDS, RLIMIT_NAMES, VM_FLAG_NAMES, VMA_NAMES, RecType, sigset_names,
                            flag_names, format_time, json_safe, pretty_value, signal_name, wait_status_text)
from .image.render import cpu_list, human, open_flags_text, plural, prot_str, rlimit_text, terminal_safe

_CHUNK_PAGES = 256  # pages compared per read (1 MiB from each image)


def _intervals(img: Image, vma: Vma, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(start, end, offset of start in the image) of the stored pages of `vma` within [lo, hi),
    a shared segment's wherever they are stored (Image.runs_of)."""
    out = []
    for r in img.runs_of(vma):
        s, e = max(r.vaddr, lo), min(r.vaddr + r.npages * PAGE_SIZE, hi)
        if s < e:
            out.append((s, e, r.offset + (s - r.vaddr)))
    return out


def _subtract(xs: list[tuple[int, int, int]], ys: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Address ranges covered by `xs` and not by `ys` (both sorted, non-overlapping)."""
    out: list[tuple[int, int]] = []
    j = 0
    for s, e, _ in xs:
        while j < len(ys) and ys[j][1] <= s:
            j += 1
        k, cur = j, s
        while k < len(ys) and ys[k][0] < e:
            if ys[k][0] > cur:
                _add(out, cur, ys[k][0])
            cur = max(cur, ys[k][1])
            k += 1
        if cur < e:
            _add(out, cur, e)
    return out


def _read(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        from .errors import ImageError

        raise ImageError(f"image shrank: page data at offset {offset} is truncated")
    return data


def _add(rs: list[tuple[int, int]], s: int, e: int) -> None:
    if rs and rs[-1][1] == s:
        rs[-1] = (rs[-1][0], e)
    else:
        rs.append((s, e))


def _merged(rs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`rs` sorted, touching ranges joined."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(rs):
        if out and out[-1][1] >= s:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _pages(rs: list[tuple[int, int]]) -> int:
    return sum(e - s for s, e in rs) // PAGE_SIZE


def changed_ranges(fa: BinaryIO, xs, fb: BinaryIO, ys) -> list[tuple[int, int]]:
    """Ranges of pages stored in both images whose bytes differ: equal megabytes are skipped with
    one comparison, only differing ones are split into pages."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        s, e = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if s < e:
            for c in range(s, e, _CHUNK_PAGES * PAGE_SIZE):
                n = min(_CHUNK_PAGES * PAGE_SIZE, e - c)
                a = _read(fa, xs[i][2] + (c - xs[i][0]), n)
                b = _read(fb, ys[j][2] + (c - ys[j][0]), n)
                if a == b:
                    continue
                va, vb = memoryview(a), memoryview(b)
                for k in range(0, n, PAGE_SIZE):
                    if va[k:k + PAGE_SIZE] != vb[k:k + PAGE_SIZE]:
                        _add(out, c + k, c + k + PAGE_SIZE)
        if xs[i][1] <= ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def ranges(addrs: list[int]) -> list[tuple[int, int]]:
    """Sorted page addresses -> [start, end) ranges of adjacent pages."""
    out: list[tuple[int, int]] = []
    for a in addrs:
        _add(out, a, a + PAGE_SIZE)
    return out


def vma_doc(img: Image, v: Vma) -> dict[str, Any]:
    # The file's path, never an objref: objref numbers shift between two dumps whenever an object
    # is added earlier in the stream, so they cannot identify anything across images.
    ref = v.fields["vma_objref"]
    o = img.obj(ref) if ref else None
    return dict(start=v.start, end=v.end, prot=prot_str(v.fields["vm_page_prot"], v.fields["vm_flags"]),
                type=VMA_NAMES.get(v.fields["vma_type"], v.fields["vma_type"]),
                file=(o.name or "") if isinstance(o, File) else "", pages=sum(r.npages for r in img.runs_of(v)))


def fd_docs(img: Image, table: FileTable | None) -> dict[int, dict[str, Any]]:
    out = {}
    for d in (table.fds if table else []):
        f: File = img.obj(d["fd_objref"])
        out[d["fd_descriptor"]] = dict(fd=d["fd_descriptor"], kind=FILE_NAMES.get(f.ftype, str(f.ftype)),
                                       path=f.name, flags=f.fields["f_flags"], pos=f.fields["f_pos"],
                                       cloexec=bool(d["fd_close_on_exec"]))
    return out


def diff_pages(ia: Image, fa: BinaryIO, va: Vma, ib: Image, fb: BinaryIO, vb: Vma, a_vmas: list[Vma] = (),
               b_vmas: list[Vma] = ()) -> dict[str, Any] | None:
    """Pages of a VMA stored in both images whose contents differ, or stored in only one. In a
    part of one VMA the other does not reach (a heap grown or shrunk, a part split off into a VMA
    of its own, or a neighbour merged in or grown over), each address is compared with what the
    other image stores there, whichever of its VMAs (`a_vmas`, `b_vmas`) holds it: such a VMA
    starts inside this one, so it is matched with nothing, and no other comparison sees those
    pages. A page at an address the other image stores nothing at is in that image only. The
    entry's start and end are the span of both VMAs, which holds every range it reports."""
    lo, hi = max(va.start, vb.start), min(va.end, vb.end)
    xs, ys = _intervals(ia, va, lo, hi), _intervals(ib, vb, lo, hi)
    changed = changed_ranges(fa, xs, fb, ys)
    only_a, only_b = _subtract(xs, ys), _subtract(ys, xs)

    def beyond(v: Vma) -> list[tuple[int, int]]:
        return [(s, e) for s, e in ((v.start, min(lo, v.end)), (max(hi, v.start), v.end)) if s < e]

    def stored(img: Image, vmas, parts) -> list[tuple[int, int, int]]:
        return sorted(iv for s, e in parts for o in vmas if o.start < e and o.end > s
                      for iv in _intervals(img, o, s, e))

    for parts, one_a in ((beyond(va), True), (beyond(vb), False)):
        if not parts:
            continue
        xa = stored(ia, [va] if one_a else a_vmas, parts)
        yb = stored(ib, b_vmas if one_a else [vb], parts)
        changed += changed_ranges(fa, xa, fb, yb)
        only_a += _subtract(xa, yb)
        only_b += _subtract(yb, xa)
    changed, only_a, only_b = _merged(changed), _merged(only_a), _merged(only_b)
    if not (changed or only_a or only_b):
        return None
    # the span both VMAs cover (one start, two ends): every range reported lies within it
    return dict(start=min(va.start, vb.start), end=max(va.end, vb.end), file=None, changed=_pages(changed), ranges=changed,
                only_in_a=_pages(only_a), only_in_a_ranges=only_a,
                only_in_b=_pages(only_b), only_in_b_ranges=only_b)


def diff_mm(ia: Image, fa: BinaryIO, ma: Mm, ib: Image, fb: BinaryIO, mb: Mm) -> dict[str, Any]:
    a = {v.start: v for v in ma.vmas}
    b = {v.start: v for v in mb.vmas}
    out: dict[str, Any] = dict(added=[vma_doc(ib, b[s]) for s in sorted(b.keys() - a.keys())],
                               removed=[vma_doc(ia, a[s]) for s in sorted(a.keys() - b.keys())],
                               resized=[], reprotected=[], reflagged=[], pages=[])
    for s in sorted(a.keys() & b.keys()):
        va, vb = a[s], b[s]
        da, db = vma_doc(ia, va), vma_doc(ib, vb)
        # A shared anonymous segment's name is the kernel's, not the program's: restore makes it
        # anew as a memfd ("/memfd:shmem (deleted)" for what was "/dev/zero (deleted)"), so before
        # and after a restore it is the same segment, its pages compared.
        same_shm = da["type"] == db["type"] == "SHARED_ANON"
        if (da["type"], da["file"]) != (db["type"], db["file"]) and not same_shm:
            # Something else is mapped at this address now: a replacement, not a change.
            out["removed"].append(da)
            out["added"].append(db)
            continue
        if va.end != vb.end:
            out["resized"].append(dict(start=s, end_a=va.end, end_b=vb.end, file=db["file"]))
        if da["prot"] != db["prot"]:
            out["reprotected"].append(dict(start=s, end=vb.end, prot_a=da["prot"], prot_b=db["prot"],
                                           file=db["file"]))
        # VmFlags beyond the protection (ac, nr, dc, lo, hg...): what mmap flags, madvise and mlock set
        fa_, fb_ = (set(flag_names(v.fields["vm_flags"] & ~0xF, VM_FLAG_NAMES)) for v in (va, vb))
        if fa_ != fb_:
            out["reflagged"].append(dict(start=s, end=vb.end, lost=sorted(fa_ - fb_), gained=sorted(fb_ - fa_),
                                         file=db["file"]))
        p = diff_pages(ia, fa, va, ib, fb, vb, ma.vmas, mb.vmas)
        if p:
            p["file"] = db["file"] or db["type"]
            out["pages"].append(p)
    out["added"].sort(key=lambda x: x["start"])
    out["removed"].sort(key=lambda x: x["start"])
    return out


# Record fields that move by themselves while a namespace runs, or that restore makes anew:
# not changes of state. (Pending signals are compared: one lost by a restore is a change.)
_VOLATILE = {
    RecType.TASK_ITIMERS: {"real_value", "virtual_value", "prof_value"},  # count down
    RecType.THREAD: {"tid", "tgid"},
}


# Record fields that hold a signal number but whose record table gives them no "signal" kind
# (decode prints them as numbers): diff names them. 0 is no signal.
_SIGNALS = {RecType.TASK_PROC: {"pdeath_signal"}}
# And those that hold a signal set (decode: hex): diff names their signals.
_SIGSETS = {RecType.TASK_PROC: {"shared_pending"}, RecType.THREAD: {"blocked", "pending"}}


def _fields_changed(rtype: RecType, a: dict | None, b: dict | None, what: str) -> list[dict[str, Any]]:
    """{what, a, b} for each field of record type `rtype` that differs, shown as decode shows it
    (but for a signal number or set, named)."""
    if a is None or b is None:
        return [] if a is b else [dict(what=what, a="(none)" if a is None else "set", b="(none)" if b is None else "set")]
    out = []
    for f in RECORDS[rtype].fields:
        if f.is_pad or f.name in _VOLATILE.get(rtype, ()) or a.get(f.name) == b.get(f.name):
            continue
        if f.name in _SIGNALS.get(rtype, ()):
            show = _signal_text
        elif f.name in _SIGSETS.get(rtype, ()):
            show = partial(sigset_names, empty="(none)")
        else:
            show = partial(pretty_value, f)
        out.append(dict(what=f"{what}{f.name}", a=show(a.get(f.name, 0)), b=show(b.get(f.name, 0))))
    return out


def _signal_text(n: int) -> str:
    return signal_name(n) if n > 0 else "(none)"


def _list_text(items: list) -> str:
    """A list of values for `a` or `b`: space-separated, "(none)" when empty (not a blank that
    leaves "groups:  ->" on the line)."""
    return " ".join(map(str, items)) or "(none)"


def diff_state(ia: Image, pa, ib: Image, pb) -> list[dict[str, Any]]:
    """What else differs between two images of one process: credentials, per-process state
    (umask, personality, pdeath signal, flags, oom_score_adj, cwd, root), rlimits, signal
    handlers, interval timers' intervals, seccomp, and per thread the signal mask, pending
    signals, sigaltstack, rseq, robust list, I/O priority, scheduling and CPU affinity. Each
    as {what, a, b}: what a restore must keep, which `diff` after a restore shows if it did not."""
    out = _fields_changed(RecType.TASK_CREDS, pa.creds, pb.creds, "")
    if pa.groups != pb.groups:
        out.append(dict(what="groups", a=_list_text(pa.groups), b=_list_text(pb.groups)))
    out += _fields_changed(RecType.TASK_PROC, pa.proc, pb.proc, "")
    for what, x, y in (("cwd", pa.cwd, pb.cwd), ("root", pa.root or "/", pb.root or "/")):
        if x != y:
            out.append(dict(what=what, a=x or "(none)", b=y or "(none)"))
    for i, (x, y) in enumerate(zip(pa.rlimits, pb.rlimits)):
        name = RLIMIT_NAMES[i] if i < len(RLIMIT_NAMES) else str(i)
        for k in ("cur", "max"):
            if x[k] != y[k]:
                out.append(dict(what=f"RLIMIT_{name} {k}", a=rlimit_text(x[k]), b=rlimit_text(y[k])))
    handler = RECORDS[RecType.TASK_SIGHAND].entry
    for i, (x, y) in enumerate(zip(pa.sighand, pb.sighand)):
        for f in handler:
            if x[f.name] != y[f.name]:
                show = partial(sigset_names, empty="(none)") if f.name == "mask" else partial(pretty_value, f)
                out.append(dict(what=f"{signal_name(i + 1)} {f.name}", a=show(x[f.name]), b=show(y[f.name])))
    out += _fields_changed(RecType.TASK_ITIMERS, pa.itimers, pb.itimers, "itimer ")
    out += _fields_changed(RecType.TASK_SECCOMP, pa.seccomp, pb.seccomp, "seccomp ")
    if pa.seccomp_filters != pb.seccomp_filters and pa.seccomp and pb.seccomp:
        out.append(dict(what="seccomp filters", a=f"{len(pa.seccomp_filters)}", b=f"{len(pb.seccomp_filters)}"))
    threads_b = {t.tid: t for t in ib.threads_of(pb.tgid)}
    for ta in ia.threads_of(pa.tgid):
        tb = threads_b.get(ta.tid)
        if tb is None:
            continue
        of = "" if ta.is_leader else f" (thread {ta.tid})"
        for item in (_fields_changed(RecType.THREAD, ta.thread, tb.thread, "")
                     + _fields_changed(RecType.TASK_SCHED, ta.sched, tb.sched, "sched ")):
            item["what"] += of
            out.append(item)
        if ta.affinity.rstrip(b"\0") != tb.affinity.rstrip(b"\0"):
            out.append(dict(what="CPU affinity" + of, a=cpu_list(ta.affinity), b=cpu_list(tb.affinity)))
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
        if q is None or not q.is_leader or q.zombie:
            continue
        d: dict[str, Any] = dict(pid=p.tid, comm=p.comm)
        if q.comm != p.comm:
            d["comm_a"] = q.comm
        d["vmas"] = diff_mm(ia, fa, ia.obj(q.mm_objref), ib, fb, ib.obj(p.mm_objref))
        d["fds"] = diff_fds(ia, ia.obj(q.files_objref), ib, ib.obj(p.files_objref))
        d["state"] = diff_state(ia, q, ib, p)
        procs.append(d)
    notes = []
    init_a = next((e["hostpid"] for e in ia.tree if e["pid"] == 1), None)
    init_b = next((e["hostpid"] for e in ib.tree if e["pid"] == 1), None)
    if init_a is not None and init_b is not None and init_a != init_b:
        # Images carry no namespace id; a different host pid of init means another namespace,
        # or the same one restored: pids still match, but say so.
        notes.append(f"pid 1 was host pid {init_a} in A and {init_b} in B: not the same namespace "
                     f"instance (a restore, or another namespace)")
    # the same pid in both, in another role: a thread of one process that is now a process of
    # its own (or a thread of another), and the other way round
    moved = [dict(tid=t, tgid_a=ta[t].tgid, tgid_b=tb[t].tgid, comm_a=ta[t].comm, comm_b=tb[t].comm)
             for t in sorted(ta.keys() & tb.keys()) if ta[t].tgid != tb[t].tgid]
    # a process that has exited in B, its parent not having reaped it, or the other way round
    # (a zombie in A whose number a new process has in B)
    died = [dict(tid=t, comm=tb[t].comm, zombie_in="b" if tb[t].zombie else "a",
                 exited=wait_status_text((tb[t] if tb[t].zombie else ta[t]).fields["exit_code"]))
            for t in sorted(ta.keys() & tb.keys()) if ta[t].zombie != tb[t].zombie]
    # a zombie in both with another name or status: its pid went to a process that died too, or
    # the zombie was not restored as it was dumped (a zombie has nothing else to compare)
    rezombied = [dict(tid=t, comm_a=ta[t].comm, comm_b=tb[t].comm,
                      exited_a=wait_status_text(ta[t].fields["exit_code"]),
                      exited_b=wait_status_text(tb[t].fields["exit_code"]))
                 for t in sorted(ta.keys() & tb.keys()) if ta[t].zombie and tb[t].zombie
                 and (ta[t].comm, ta[t].fields["exit_code"]) != (tb[t].comm, tb[t].fields["exit_code"])]
    return dict(a=image_doc(path_a, ia), b=image_doc(path_b, ib), notes=notes,
                tasks=dict(added=[tdoc(tb[t]) for t in sorted(tb.keys() - ta.keys())],
                           gone=[tdoc(ta[t]) for t in sorted(ta.keys() - tb.keys())],
                           changed=moved, exited=died, zombies_changed=rezombied),
                processes=procs)


def _empty(p: dict[str, Any]) -> bool:
    v, f = p["vmas"], p["fds"]
    return not any(v[k] for k in ("added", "removed", "resized", "reprotected", "reflagged", "pages")) and \
        not any(f[k] for k in ("added", "removed", "changed")) and "comm_a" not in p and not p["state"]


def _rng(rs: list[tuple[int, int]], limit: int = 8) -> Iterator[str]:
    for s, e in rs[:limit]:
        yield f"{s:x}-{e:x}"
    if len(rs) > limit:
        yield f"... {len(rs) - limit} more"


def _fd_value(key: str, v) -> str:
    """A changed property of an fd as a user reads it, not as Python prints it: yes/no for
    close-on-exec, O_ names for the flags, "(none)" for a file without a path."""
    if key == "cloexec":
        return "yes" if v else "no"
    if key == "flags":
        return open_flags_text(v)
    if v is None or v == "":
        return "(none)"
    return str(v)


def _sizes(start: int, end_a: int, end_b: int) -> str:
    """"1.2 MiB -> 1.2 MiB, +4 pages": the sizes, and the change exactly, which two sizes that
    round alike would not show."""
    delta = (end_b - end_a) // PAGE_SIZE
    return f"{human(end_a - start)} -> {human(end_b - start)}, {'+' if delta > 0 else '-'}{plural(abs(delta), 'page')}"


def diff_text(d: dict[str, Any]) -> str:
    def stamp(x):
        return format_time(x["time"])

    def counts(x):
        return f"{plural(x['tasks'], 'task')}, {plural(x['pages'], 'page')}"

    out = [f"--- {d['a']['path']}  {stamp(d['a'])}  {counts(d['a'])}",
           f"+++ {d['b']['path']}  {stamp(d['b'])}  {counts(d['b'])}"]
    out += [f"note: {n}" for n in d["notes"]]
    for t in d["tasks"]["added"]:
        out.append(f"+ task {t['tid']} {t['comm']}" + (f" (thread of {t['tgid']})" if t["tid"] != t["tgid"] else ""))
    for t in d["tasks"]["gone"]:
        out.append(f"- task {t['tid']} {t['comm']}" + (f" (thread of {t['tgid']})" if t["tid"] != t["tgid"] else ""))
    for t in d["tasks"]["changed"]:
        def role(tgid, comm):
            return f"process ({comm})" if tgid == t["tid"] else f"thread of {tgid} ({comm})"
        out.append(f"~ task {t['tid']}: {role(t['tgid_a'], t['comm_a'])} -> {role(t['tgid_b'], t['comm_b'])}")
    for t in d["tasks"]["exited"]:
        out.append(f"~ process {t['tid']} {t['comm']}: " + (f"a zombie in B ({t['exited']})" if t["zombie_in"] == "b"
                                                           else f"a zombie in A ({t['exited']}), alive in B"))
    for t in d["tasks"]["zombies_changed"]:
        name = t["comm_b"] if t["comm_a"] == t["comm_b"] else f"{t['comm_a']} -> {t['comm_b']}"
        status = t["exited_b"] if t["exited_a"] == t["exited_b"] else f"{t['exited_a']} -> {t['exited_b']}"
        out.append(f"~ zombie {t['tid']} {name}: {status}")
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
                       f"({_sizes(x['start'], x['end_a'], x['end_b'])}) {x['file']}".rstrip())
        for x in v["reprotected"]:
            out.append(f"  ~ vma {x['start']:x}-{x['end']:x}: {x['prot_a']} -> {x['prot_b']} {x['file']}")
        for x in v["reflagged"]:
            change = " ".join([f"-{n}" for n in x["lost"]] + [f"+{n}" for n in x["gained"]])
            out.append(f"  ~ vma {x['start']:x}-{x['end']:x}: flags {change} {x['file']}".rstrip())
        for x in p["state"]:
            out.append(f"  ~ {x['what']}: {x['a']} -> {x['b']}")
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
            what = ", ".join(f"{k} {_fd_value(k, a)} -> {_fd_value(k, b)}" for k, (a, b) in x["changes"].items())
            out.append(f"  ~ fd {x['fd']} {x['kind']}{' ' + x['path'] if x['path'] else ''}: {what}")
    if same:
        out.append(f"{plural(same, 'process')} unchanged")
    return "\n".join(terminal_safe(line) for line in out)


def main(args) -> int:
    from .image.stream import open_seekable

    if args.a == "-" and args.b == "-":
        from .errors import UsageError

        raise UsageError("only one of A and B can be standard input")
    with _named("A", args.a, open_seekable, args.a) as fa, _named("B", args.b, open_seekable, args.b) as fb:
        ia, ib = _named("A", args.a, read_image, fa), _named("B", args.b, read_image, fb)
        d = diff_images(ia, fa, ib, fb, path_a=args.a, path_b=args.b)
    if args.json:
        print(json.dumps(json_safe(d)))
    else:
        print(diff_text(d))
    return 0


def _named(which: str, path: str, fn, *args):
    """fn(*args) (open_seekable validates a spooled input, read_image a file), its image errors
    saying which of the two images is bad."""
    from .errors import ImageError

    try:
        return fn(*args)
    except ImageError as exc:
        raise ImageError(f"{exc.what} (in {which}, {path})", index=exc.index, offset=exc.offset) from None
