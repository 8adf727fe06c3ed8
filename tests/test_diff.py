"""`ckptrace diff`: two real dumps of a workload that rewrote known pages and opened a file in
between; plus the page-range arithmetic on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import imagegen
from ckptrace.image.records import PAGE_SIZE
from ckptrace.imgdiff import _subtract, ranges
from test_inspect import CHANGED_PAGES, PAGES, SPLIT_PAGE, Workload


def run_diff(a: str, b: str, *extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "ckptrace", "diff", a, b, *extra], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def test_ranges_join_adjacent_pages():
    P = PAGE_SIZE
    assert ranges([]) == []
    assert ranges([0, P, 2 * P, 5 * P, 9 * P, 10 * P]) == [(0, 3 * P), (5 * P, 6 * P), (9 * P, 11 * P)]


def test_subtract_page_intervals():
    xs = [(0, 10, 0), (10, 20, 0), (30, 40, 0)]
    assert _subtract(xs, [(5, 12, 0), (35, 36, 0)]) == [(0, 5), (12, 20), (30, 35), (36, 40)]
    assert _subtract(xs, xs) == []
    assert _subtract(xs, []) == [(0, 20), (30, 40)]


def test_synthetic_tasks_gone_and_pages_only_in_one(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(imagegen.build(pages=3))
    b.write_bytes(imagegen.build(extra_task=False, pages=5))
    d = json.loads(run_diff(str(a), str(b), "--json").stdout)
    assert [t["tid"] for t in d["tasks"]["gone"]] == [2, 3] and d["tasks"]["added"] == []
    assert d["notes"] == []  # same init host pid: same namespace as far as images can tell
    (p,) = d["processes"]
    (pages,) = p["vmas"]["pages"]
    assert pages["changed"] == 0 and pages["only_in_b"] == 2
    assert pages["only_in_b_ranges"] == [[0x603000, 0x605000]]
    # B from standard input gives the same answer.
    with open(b, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "ckptrace", "diff", str(a), "-", "--json"], stdin=f,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["processes"] == d["processes"]


def test_a_thread_that_became_a_process_is_shown(tmp_path):
    import io

    from ckptrace.image.reader import read_image
    from ckptrace.imgdiff import diff_images, diff_text

    data = imagegen.build()
    ia, ib = read_image(io.BytesIO(data)), read_image(io.BytesIO(data))
    two = next(t for t in ib.tasks if t.tid == 2)
    assert two.tgid == 1  # a thread of 1 in A...
    two.thread = dict(two.thread, tgid=2)  # ...and its own process in B
    d = diff_images(ia, io.BytesIO(data), ib, io.BytesIO(data))
    assert d["tasks"]["changed"] == [dict(tid=2, tgid_a=1, tgid_b=2, comm_a=two.comm, comm_b=two.comm)]
    assert f"~ task 2: thread of 1 ({two.comm}) -> process ({two.comm})" in diff_text(d)


def test_header_lines_count_in_the_singular_for_one(tmp_path):
    """`1 task`, not `1 tasks` (and `1 page`, `0 pages`)."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(imagegen.build(pages=1))
    b.write_bytes(imagegen.build(extra_task=False, pages=0))
    first, second = run_diff(str(a), str(b)).stdout.splitlines()[:2]
    assert first.startswith("--- ") and first.endswith("  3 tasks, 4 pages"), first
    assert second.startswith("+++ ") and second.endswith("  1 task, 0 pages"), second


def test_a_bad_image_is_named(tmp_path):
    good, bad = tmp_path / "good.img", tmp_path / "bad.img"
    good.write_bytes(imagegen.build())
    bad.write_bytes(imagegen.build()[:-5])
    for args, which in (((good, bad), f"(in B, {bad})"), ((bad, good), f"(in A, {bad})")):
        r = subprocess.run([sys.executable, "-m", "ckptrace", "diff", *map(str, args)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and which in r.stderr and "record" in r.stderr, r.stderr


@pytest.mark.kernel
def test_diff_of_two_real_dumps(pidns, tmp_path):
    w = Workload(pidns, tmp_path)
    a = w.dump(str(tmp_path / "a.img"))
    new_fd, rx, new_map = w.change()
    b = w.dump(str(tmp_path / "b.img"))
    log_path = w.ready + ".log"
    assert os.readlink(f"/proc/{w.child_host}/fd/{new_fd}") == log_path
    with open(f"/proc/{w.child_host}/maps") as maps:
        host_maps = maps.read()
    w.ns.kill()

    d = json.loads(run_diff(a, b, "--json").stdout)
    assert d["tasks"] == {"added": [], "gone": [], "changed": [], "exited": [], "zombies_changed": []} and d["notes"] == []
    proc = next(p for p in d["processes"] if p["pid"] == w.child_nspid)
    v = proc["vmas"]
    P = PAGE_SIZE
    # r-x -> r-- of a whole mapping: re-protected, same range.
    assert [(x["start"], x["end"], x["prot_a"], x["prot_b"]) for x in v["reprotected"]] == [(rx, rx + 2 * P, "r-xp", "r--p")]
    # mprotect of one page inside the region splits its VMA: the part before it ends there, the
    # page and the rest are new VMAs; the 3 fresh pages are a new VMA.
    split = w.base + SPLIT_PAGE * P
    assert [(x["end_a"] >= w.base + PAGES * P, x["end_b"]) for x in v["resized"]] == [(True, split)]
    added = {x["start"]: (x["end"], x["prot"]) for x in v["added"]}
    assert added == {new_map: (new_map + 3 * P, "rwxp"), split: (split + P, "r--p"),
                     split + P: (added[split + P][0], "rw-p")}
    assert not v["removed"]
    assert f"{split:x}-{split + P:x} r--p" in host_maps  # what the kernel shows, too
    lo, hi = w.base, w.base + PAGES * PAGE_SIZE
    entry = next(x for x in v["pages"] if x["start"] <= w.base < x["end"])
    for x in v["pages"]:  # each entry spans what it reports (not the shrunk VMA of B only)
        for key in ("ranges", "only_in_a_ranges", "only_in_b_ranges"):
            assert all(x["start"] <= s < e <= x["end"] for s, e in x[key]), (x, key)

    def clip(rs):
        return [(max(s, lo), min(e, hi)) for s, e in rs if s < hi and e > lo]

    want = ranges([w.base + i * PAGE_SIZE for i in sorted(CHANGED_PAGES)])
    assert clip(entry["ranges"]) == want
    assert not clip(entry["only_in_a_ranges"]) and not clip(entry["only_in_b_ranges"])
    # The new descriptor, and nothing else about the descriptors, changed in the child.
    assert [(f["fd"], f["path"]) for f in proc["fds"]["added"]] == [(new_fd, log_path)]
    assert proc["fds"]["removed"] == []

    text = run_diff(a, b).stdout
    assert f"+ fd {new_fd} REGULAR {log_path}" in text
    assert f"~ vma {rx:x}-{rx + 2 * P:x}: r-xp -> r--p" in text
    assert f"+ vma {new_map:x}-{new_map + 3 * P:x} rwxp ANON 12.0 KiB" in text
    assert f"{w.base + 2 * PAGE_SIZE:x}-{w.base + 5 * PAGE_SIZE:x}" in text

    # An image compared with itself has no differences at all.
    same = json.loads(run_diff(a, a, "--json").stdout)
    assert same["tasks"] == {"added": [], "gone": [], "changed": [], "exited": [], "zombies_changed": []}
    for p in same["processes"]:
        assert not any(p["vmas"][k] for k in ("added", "removed", "resized", "reprotected", "pages"))
        assert not any(p["fds"][k] for k in ("added", "removed", "changed"))
    assert "unchanged" in run_diff(a, a).stdout


def test_pages_in_the_part_of_a_vma_that_grew_or_went_count_as_only_in_one():
    """A heap grown between the dumps, with a page touched in the new part: that page is only in
    B (it was clipped to the range both VMAs share, and not reported at all); the reverse diff
    has it only in A."""
    import io
    from types import SimpleNamespace as NS

    from ckptrace.imgdiff import diff_pages

    P = PAGE_SIZE
    run = lambda vaddr, n, off: NS(vaddr=vaddr, npages=n, offset=off)  # noqa: E731
    fa = io.BytesIO(b"\1" * P)
    fb = io.BytesIO(b"\2" * P + b"\3" * P)
    va = NS(start=0x600000, end=0x610000, runs=[run(0x600000, 1, 0)])
    vb = NS(start=0x600000, end=0x620000, runs=[run(0x600000, 1, 0), run(0x618000, 1, P)])
    img = NS(runs_of=lambda v: v.runs)  # no shared segment here: a VMA's own runs
    d = diff_pages(img, fa, va, img, fb, vb, [va], [vb])
    assert d["changed"] == 1 and d["only_in_b_ranges"] == [(0x618000, 0x619000)] and d["only_in_a"] == 0
    r = diff_pages(img, fb, vb, img, fa, va, [vb], [va])
    assert r["only_in_a_ranges"] == [(0x618000, 0x619000)] and r["only_in_b"] == 0
    # the grown part a VMA of its own in A (B merged it in, or grew over it): compared with what
    # that VMA stores, which is matched with nothing in B and compared nowhere else
    fa2 = io.BytesIO(b"\1" * P + b"\3" * P)
    split = NS(start=0x610000, end=0x620000, runs=[run(0x618000, 1, P)])
    d = diff_pages(img, fa2, va, img, fb, vb, [va, split], [vb])
    assert (d["changed"], d["only_in_a"], d["only_in_b"]) == (1, 0, 0)  # the same page at 0x618000
    fb2 = io.BytesIO(b"\2" * P + b"\4" * P)
    d = diff_pages(img, fa2, va, img, fb2, vb, [va, split], [vb])
    assert d["ranges"] == [(0x600000, 0x601000), (0x618000, 0x619000)] and d["only_in_b"] == 0
    # ...and where it stores nothing, B's page there is B's alone (it used to be dropped)
    empty = NS(start=0x610000, end=0x620000, runs=[])
    d = diff_pages(img, fa, va, img, fb, vb, [va, empty], [vb])
    assert d["only_in_b_ranges"] == [(0x618000, 0x619000)]
    # the other way round: the part split off in B, compared with B's VMA there
    r = diff_pages(img, fb2, vb, img, fa2, va, [vb], [va, split])
    assert r["ranges"] == [(0x600000, 0x601000), (0x618000, 0x619000)] and r["only_in_a"] == 0
    # the entry spans what it reports: A's VMA, which reached further than B's (it was under B's
    # shrunk VMA's own 0x600000-0x610000, its ranges outside it)
    assert (r["start"], r["end"]) == (0x600000, 0x620000)


def test_pages_a_vma_grew_over_a_mapping_b_removed_are_only_in_b(tmp_path):
    """A's heap ended at 0x610000 with an untouched mapping above it; in B that mapping is gone
    and the heap reaches over it, with a page stored at 0x610000. That page is B's alone: diff
    dropped it, because a VMA of A (the one B no longer has) covered the address."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(imagegen.build(heap_split=0x610000))
    b.write_bytes(imagegen.build())
    d = json.loads(run_diff(str(a), str(b), "--json").stdout)
    for p in d["processes"]:  # pid 1 and pid 3 (its own mm)
        v = p["vmas"]
        assert [x["start"] for x in v["removed"]] == [0x610000]
        assert v["resized"] == [dict(start=0x600000, end_a=0x610000, end_b=0x621000, file="")]
        (pages,) = v["pages"]
        assert pages["only_in_b_ranges"] == [[0x610000, 0x611000]] and pages["only_in_b"] == 1
        assert pages["changed"] == 0 and pages["only_in_a"] == 0
    r = json.loads(run_diff(str(b), str(a), "--json").stdout)
    for p in r["processes"]:
        (pages,) = p["vmas"]["pages"]
        assert pages["only_in_a_ranges"] == [[0x610000, 0x611000]] and pages["only_in_b"] == 0
    assert "only in B: 610000-611000" in run_diff(str(a), str(b)).stdout


def test_text_shows_values_as_a_user_reads_them():
    """diff's text printed Python values: `-> None` for a file that lost its path, `cloexec True
    -> False`, f_flags as integers (`flags 32770 -> 2050`), and a resize whose sizes round alike
    as `1.2 MiB -> 1.2 MiB`. --json keeps the values as they are."""
    import io

    from ckptrace.image.reader import read_image
    from ckptrace.imgdiff import diff_images, diff_text

    data = imagegen.build()
    ia, ib = read_image(io.BytesIO(data)), read_image(io.BytesIO(data))
    ia.obj(2).fields["f_flags"] = 0o100002  # O_RDWR|O_LARGEFILE
    ib.obj(2).fields["f_flags"] = 0o4002  # O_RDWR|O_NONBLOCK
    ib.obj(1).fds[1]["fd_close_on_exec"] = 0
    ib.obj(5).name = None
    heap_a, heap_b = ia.obj(3).vmas[1], ib.obj(3).vmas[1]
    heap_a.fields["vm_end"], heap_b.fields["vm_end"] = 0x600000 + 0x136000, 0x600000 + 0x13A000
    d = diff_images(ia, io.BytesIO(data), ib, io.BytesIO(data))
    text = diff_text(d)
    lines = text.splitlines()
    assert "  ~ fd 0 REGULAR /tmp/log.txt: flags O_RDWR|O_LARGEFILE -> O_RDWR|O_NONBLOCK" in lines
    assert "  ~ fd 1 REGULAR /tmp/log.txt: flags O_RDWR|O_LARGEFILE -> O_RDWR|O_NONBLOCK, cloexec yes -> no" in lines
    assert "  ~ fd 7 PIPE: path pipe:[1234] -> (none)" in lines
    assert "  ~ vma 600000: end 736000 -> 73a000 (1.2 MiB -> 1.2 MiB, +4 pages)" in lines
    for python in ("None", "True", "False", "32770", "2050"):
        assert python not in text, python
    (p,) = [p for p in d["processes"] if p["pid"] == 1]
    assert p["fds"]["changed"][1]["changes"] == {"flags": [0o100002, 0o4002], "cloexec": [True, False]}


def test_a_process_that_became_a_zombie_is_named_not_compared():
    """A process alive in A and a zombie in B (exited, not reaped) has no memory or files left to
    compare: diff says it exited, with its status, and compares the rest; a zombie in both is
    no change."""
    import io

    from ckptrace.image.reader import read_image
    from ckptrace.imgdiff import diff_images, diff_text

    a = imagegen.build(extra_task=False, chain=2)  # 1 <- 2 <- 3
    b = imagegen.build(extra_task=False, chain=1, zombie=dict(pid=3, tgid=3, exit_code=9))  # 3 killed
    ia, ib = read_image(io.BytesIO(a)), read_image(io.BytesIO(b))
    d = diff_images(ia, io.BytesIO(a), ib, io.BytesIO(b))
    assert d["tasks"]["exited"] == [dict(tid=3, comm="gone", zombie_in="b", exited="killed by SIGKILL")]
    assert [p["pid"] for p in d["processes"]] == [1, 2]
    assert "~ process 3 gone: a zombie in B (killed by SIGKILL)" in diff_text(d)
    back = diff_images(ib, io.BytesIO(b), ia, io.BytesIO(a))
    assert back["tasks"]["exited"][0]["zombie_in"] == "a" and [p["pid"] for p in back["processes"]] == [1, 2]
    same = diff_images(ib, io.BytesIO(b), ib, io.BytesIO(b))
    assert same["tasks"] == dict(added=[], gone=[], changed=[], exited=[], zombies_changed=[])


def test_a_zombie_with_another_name_or_status_is_reported():
    """A zombie has no memory or files to compare, but its name and wait status are all it has:
    a restore that lost either, or a pid that went to another process which died too, shows."""
    import io

    from ckptrace.image.reader import read_image
    from ckptrace.imgdiff import diff_images, diff_text

    a = imagegen.build(extra_task=False, chain=1, zombie=dict(pid=3, tgid=3, exit_code=9))
    b = imagegen.build(extra_task=False, chain=1, zombie=dict(pid=3, tgid=3, exit_code=3 << 8, comm="other"))
    ia, ib = read_image(io.BytesIO(a)), read_image(io.BytesIO(b))
    d = diff_images(ia, io.BytesIO(a), ib, io.BytesIO(b))
    assert d["tasks"]["zombies_changed"] == [dict(tid=3, comm_a="gone", comm_b="other",
                                                  exited_a="killed by SIGKILL", exited_b="exited with status 3")]
    assert d["tasks"]["exited"] == []
    assert "~ zombie 3 gone -> other: killed by SIGKILL -> exited with status 3" in diff_text(d).splitlines()
    c = imagegen.build(extra_task=False, chain=1, zombie=dict(pid=3, tgid=3, exit_code=3 << 8))
    d = diff_images(read_image(io.BytesIO(c)), io.BytesIO(c), ib, io.BytesIO(b))
    assert "~ zombie 3 gone -> other: exited with status 3" in diff_text(d).splitlines()


def test_process_state_that_a_restore_must_keep_is_compared():
    """Owner, limits, handlers, masks, scheduling, affinity, I/O priority and VmFlags: a restore
    that lost one shows in `diff` before/after; counting-down timer values do not."""
    import io

    from ckptrace.image.reader import read_image
    from ckptrace.imgdiff import diff_images, diff_text

    data = imagegen.build()
    ia, ib = read_image(io.BytesIO(data)), read_image(io.BytesIO(data))
    p, thread = ib.task(1), ib.task(2)
    p.creds["euid"] = 1000
    p.groups = [4]
    p.proc["umask"] = 0o77
    p.rlimits[7]["cur"] = (1 << 64) - 1  # RLIMIT_NOFILE unlimited (RLIM_INFINITY)
    p.sighand[9]["handler"] = 1  # SIGUSR1 ignored
    p.itimers["real_value"] += 5  # moves by itself: not a change
    p.sched["nice"] = 5
    thread.thread["blocked"] = 0
    thread.thread["pending"] = 1 << 9 | 1 << 34  # SIGUSR1, SIGRTMIN+1
    p.sighand[14]["mask"] = 1 << 1  # SIGTERM's handler blocks SIGINT
    thread.thread["ioprio"] = (2 << 13) | 4
    thread.affinity = b"\x01"
    vma = ib.obj(p.mm_objref).vmas[0]
    vma.fields["vm_flags"] |= 1 << 20  # ac
    d = diff_images(ia, io.BytesIO(data), ib, io.BytesIO(data))
    (p1,) = [x for x in d["processes"] if x["pid"] == 1]
    got = {x["what"]: (x["a"], x["b"]) for x in p1["state"]}
    assert got == {"euid": ("0", "1000"), "groups": ("4 27", "4"), "umask": ("0o22", "0o77"),
                   "RLIMIT_NOFILE cur": ("7", "unlimited"), "SIGUSR1 handler": ("0x0", "0x1"),
                   "sched nice": ("1", "5"), "blocked (thread 2)": ("SIGTERM", "(none)"),
                   "pending (thread 2)": ("(none)", "SIGUSR1 SIGRTMIN+1"), "SIGTERM mask": ("(none)", "SIGINT"),
                   "ioprio (thread 2)": ("0x0", "0x4004"), "CPU affinity (thread 2)": ("0-1", "0")}, got
    assert p1["vmas"]["reflagged"] == [dict(start=vma.start, end=vma.end, lost=[], gained=["ac"], file=p1["vmas"]["reflagged"][0]["file"])]
    text = diff_text(d)
    assert "  ~ sched nice: 1 -> 5" in text and "  ~ blocked (thread 2): SIGTERM -> (none)" in text
    assert f"  ~ vma {vma.start:x}-{vma.end:x}: flags +ac" in text
    same = diff_images(ia, io.BytesIO(data), ia, io.BytesIO(data))
    assert all(x["state"] == [] and x["vmas"]["reflagged"] == [] for x in same["processes"])


SHM_WORKLOAD = r"""
import mmap, os, sys, time
m = mmap.mmap(-1, 4 * 4096)  # MAP_SHARED | MAP_ANONYMOUS: "/dev/zero (deleted)" in /proc/PID/maps
m[:5] = b"kept!"
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def test_a_shared_segment_before_and_after_a_restore_is_compared_not_replaced(pidns, tmp_path):
    """Restore makes a shared anonymous segment anew as a memfd ("/memfd:shmem (deleted)"), so a
    diff of the image against a dump of its restore showed the segment removed and another added
    at the same address, in every process mapping it, and never compared its pages: the very
    check "before and after a restore" is for."""
    import signal

    w = pidns([sys.executable, "-c", SHM_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    cli = [sys.executable, "-m", "ckptrace"]
    subprocess.run([*cli, "dump", "--pidns", str(w.ns), "--kill", "-q", "-o", a], check=True)
    r = subprocess.run([*cli, "restore", "--json", a], capture_output=True, text=True, check=True)
    init = json.loads(r.stdout)["init_pid"]
    shown = json.loads(subprocess.run([*cli, "show", "--json", a], capture_output=True, check=True).stdout)
    (seg,) = [v["start"] for v in shown["procs"][0]["vmas"] if v["type"] == "SHARED_ANON"]
    try:
        with open(f"/proc/{init}/mem", "r+b", buffering=0) as mem:  # one byte of it changed since
            mem.seek(seg + 4)
            mem.write(b"?")
        ns = os.stat(f"/proc/{init}/ns/pid").st_ino
        subprocess.run([*cli, "dump", "--pidns", str(ns), "-q", "-o", b], check=True)
    finally:
        os.kill(init, signal.SIGKILL)
    (proc,) = json.loads(run_diff(a, b, "--json").stdout)["processes"]
    assert not proc["vmas"]["added"] and not proc["vmas"]["removed"], proc["vmas"]
    (pages,) = [x for x in proc["vmas"]["pages"] if x["start"] == seg]  # compared: that one page
    assert pages["ranges"] == [[seg, seg + 4096]], pages


def test_diff_names_signals_and_says_none_for_an_empty_list():
    """diff printed `signal 10 handler` and `pdeath_signal: 0 -> 9` where it could name the
    signals, and an empty group list (or cwd) as nothing at all (`groups: 4 27 -> `,
    `groups:  -> 4`)."""
    import io

    from ckptrace.image.reader import read_image
    from ckptrace.imgdiff import diff_images, diff_text

    data = imagegen.build()
    ia, ib = read_image(io.BytesIO(data)), read_image(io.BytesIO(data))
    p = ib.task(1)
    p.groups = []
    p.sighand[9]["handler"] = 1  # SIGUSR1
    p.sighand[35]["flags"] = 0x10000000  # signal 36: SIGRTMIN+2, as kill -l names it
    p.proc["pdeath_signal"] = 9
    p.cwd = ""  # (an image without the process's TASK_PROC)
    text = diff_text(diff_images(ia, io.BytesIO(data), ib, io.BytesIO(data))).splitlines()
    for line in ("  ~ groups: 4 27 -> (none)", "  ~ pdeath_signal: (none) -> SIGKILL",
                 "  ~ SIGUSR1 handler: 0x0 -> 0x1", "  ~ SIGRTMIN+2 flags: 0x0 -> 0x10000000",
                 "  ~ cwd: /root -> (none)"):
        assert line in text, text
    assert not [line for line in text if line.endswith("-> ") or ":  ->" in line]
    back = diff_text(diff_images(ib, io.BytesIO(data), ia, io.BytesIO(data))).splitlines()
    assert "  ~ groups: (none) -> 4 27" in back and "  ~ pdeath_signal: SIGKILL -> (none)" in back
