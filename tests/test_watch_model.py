"""watch without the kernel: the event ABI parse against gcc's layout of bpf/events.h, the
per-namespace model, and the dashboard's render function on model states."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import time
import shutil
import struct
import re
import subprocess

import pytest
from rich.console import Console

from ckptrace.kernel import bpfload
from ckptrace.watchmodel import Model, public
from ckptrace.watchview import Selection, handle_key, heat_bar, render, selected_ns, selected_proc

P = 4096
NS = 4026532999


# -- the event ABI: one header, two readers ----------------------------------------------------

def test_header_parse_matches_gcc_layout(tmp_path):
    """The ctypes types parsed from bpf/events.h have gcc's sizes and offsets for every field,
    and every #define has gcc's value."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    abi = bpfload.parse_header(bpfload.HEADER.read_text())
    assert {"ckpt_event", "ckpt_dirty_key", "ckpt_task"} <= set(abi.structs)
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "events.h"', "int main(void) {"]
    for name, st in abi.structs.items():
        lines.append(f'printf("{name} size %zu\\n", sizeof(struct {name}));')
        for fname, _ in st._fields_:
            lines.append(f'printf("{name}.{fname} %zu %zu\\n", offsetof(struct {name}, {fname}), '
                         f'sizeof(((struct {name} *)0)->{fname}));')
    for const in abi.consts:
        lines.append(f'printf("{const} %lld\\n", (long long){const});')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["gcc", f"-I{bpfload.BPF_DIR}", "-o", str(exe), str(src)], check=True)
    gcc = dict(line.split(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                               check=True).stdout.splitlines())
    for name, st in abi.structs.items():
        assert int(gcc[name].split()[1]) == ctypes.sizeof(st), name
        for fname, _ in st._fields_:
            off, size = map(int, gcc[f"{name}.{fname}"].split())
            field = getattr(st, fname)
            assert (field.offset, field.size) == (off, size), f"{name}.{fname}"
    for const, value in abi.consts.items():
        assert int(gcc[const]) == value, const


def test_header_parse_rejects_unknown_field_types():
    from ckptrace.errors import UsageError

    with pytest.raises(UsageError):
        bpfload.parse_header("struct x { float f; };")


def test_bulk_format_decodes_what_ctypes_encodes_padding_included():
    """struct_format follows the ctypes offsets: a struct with a hole after a u8 and tail padding
    decodes field by field, and the dirty-map key round-trips."""
    abi = bpfload.parse_header("struct k { __u8 a; __u64 b; __u32 c; };")
    k = abi.structs["k"]
    fmt, order = bpfload.struct_format(k, ("c", "a", "b"))
    assert struct.calcsize(fmt) == ctypes.sizeof(k) == 24
    v = k(a=7, b=(1 << 63) + 5, c=0xDEADBEEF)
    t = struct.unpack(fmt, bytes(v))
    assert (t[order[0]], t[order[1]], t[order[2]]) == (0xDEADBEEF, 7, (1 << 63) + 5)
    key = bpfload.abi().structs["ckpt_dirty_key"]
    fmt, order = bpfload.struct_format(key, ("tgid", "gen", "chunk"))
    t = struct.unpack(fmt, bytes(key(tgid=4242, gen=17, chunk=0x7FFF12345)))
    assert [t[i] for i in order] == [4242, 17, 0x7FFF12345]


def test_bulk_format_refuses_arrays_other_than_char():
    from ckptrace.errors import UsageError

    y = bpfload.parse_header("struct y { __u32 a[4]; };").structs["y"]
    with pytest.raises(UsageError):
        bpfload.struct_format(y, ("a",))


def test_ring_records_decode_every_event_field_as_the_compiler_lays_it_out():
    """The ring reader's record type against ctypes (whose layout tests/ compare with gcc's):
    every field of a ckpt_event, set to distinct values, comes back; comm with its NULs."""
    E = bpfload.abi().structs["ckpt_event"]
    values = {}
    for i, (name, t) in enumerate(E._fields_):
        if name == "comm":
            values[name] = b"true"
        else:
            values[name] = (0x0102030405060708 * (i + 1)) & ((1 << (8 * ctypes.sizeof(t))) - 1)
    raw = bytes(E(**values))
    cls, decode = bpfload.record_type(E)
    rec = decode(b"\xff" * 8 + raw, 8)  # at an offset, as in the ring
    assert isinstance(rec, cls) and rec._fields == tuple(n for n, _ in E._fields_)
    for name, want in values.items():
        got = getattr(rec, name)
        assert (got.split(b"\0", 1)[0] if name == "comm" else got) == want, name
    assert len(rec.comm) == 16


def test_event_names_from_header():
    names = bpfload.abi().event_names()
    assert {"fork", "exec", "exit", "mmap", "munmap", "mprotect", "mremap", "brk"} <= set(names.values())


# -- the model ------------------------------------------------------------------------------------

def ev(kind, hostpid=100, pid=1, **kw):
    return {"event": kind, "pid": pid, "hostpid": hostpid, "ns": NS, "ts": 1, **kw}


@pytest.fixture
def model():
    clock = [1000.0]
    m = Model(clock=lambda: clock[0])
    m.tick = lambda s: clock.__setitem__(0, clock[0] + s)
    m.seed_proc(100, 1, NS, comm="init", maps=[(0x400000, 0x401000, 5, "/bin/init"),
                                                (0x600000, 0x700000, 3, "[heap]")])
    return m


def spans(p):
    return [(v.start, v.end, v.prot) for v in p.vmas]


def test_mmap_mprotect_munmap_keep_the_vma_table(model):
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x10000000, len=10 * P - 100, prot=3))
    assert (0x10000000, 0x10000000 + 10 * P, 3) in spans(p)  # length rounded up to pages
    model.apply(ev("mprotect", addr=0x10000000 + 2 * P, len=3 * P, prot=1))
    assert [s for s in spans(p) if s[0] >= 0x10000000] == [
        (0x10000000, 0x10000000 + 2 * P, 3), (0x10000000 + 2 * P, 0x10000000 + 5 * P, 1),
        (0x10000000 + 5 * P, 0x10000000 + 10 * P, 3)]
    model.apply(ev("munmap", addr=0x10000000 + P, len=8 * P))
    assert [s for s in spans(p) if s[0] >= 0x10000000] == [
        (0x10000000, 0x10000000 + P, 3), (0x10000000 + 9 * P, 0x10000000 + 10 * P, 3)]


def test_dirty_pages_land_on_their_vma_and_count_once_since_dump(model):
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x20000000, len=8 * P, prot=3))
    out = model.add_dirty(100, [0x20000000 + i * P for i in range(5)] + [0x600000], ts=7)
    by_start = {e["start"]: e for e in out}
    assert by_start[0x20000000]["pages"] == 5 and by_start[0x20000000]["end"] == 0x20000000 + 8 * P
    assert by_start[0x600000]["pages"] == 1
    assert set(out[0]) == {"event", "pid", "hostpid", "ns", "ts", "start", "end", "pages"}
    vma = p.find(0x20000000)
    model.add_dirty(100, [0x20000000, 0x20000000 + 6 * P], ts=8)  # one page again, one new
    assert len(vma.dirty) == 6
    model.reset_dirty(NS)
    assert p.dirty_pages() == 0


def test_unplaced_pages_of_processes_gone_are_told_apart(model):
    """watch's closing note said "415 written pages could not be placed on a mapping" for a loop
    of /bin/true children: pages of processes gone before their mappings were read after exec
    (docs/watch.md), which the user could not tell from pages of live processes it lost."""
    model.apply(ev("fork", child=2, hostpid=100), childhost=101)
    assert model.add_dirty(100, [0x900000], ts=2) == [] and (model.unattributed, model.unattributed_gone) == (1, 0)
    model.apply(ev("exit", hostpid=101, pid=2, code=0))
    assert model.add_dirty(101, [0x900000, 0x901000], ts=3) == []
    assert model.add_dirty(555, [0x900000], ts=3) == []  # never placed
    assert (model.unattributed, model.unattributed_gone) == (4, 3)


def test_pages_written_before_an_munmap_still_find_their_mapping(model):
    """Faults are drained after the munmap event was applied: the tombstone takes them."""
    model.apply(ev("mmap", addr=0x30000000, len=4 * P, prot=3))
    model.apply(ev("munmap", addr=0x30000000, len=4 * P))
    out = model.add_dirty(100, [0x30000000 + i * P for i in range(4)], ts=9)
    assert [(e["start"], e["end"], e["pages"]) for e in out] == [(0x30000000, 0x30000000 + 4 * P, 4)]
    model.tick(10)
    model.gc()
    assert model.add_dirty(100, [0x30000000], ts=10) == []
    assert model.unattributed == 1


def test_generations_attribute_pages_to_the_mapping_they_were_written_in(model):
    """munmap, then a new mapping at the same address, then the drain: the pages (written in
    generation 1) belong to the old mapping, not to the new one."""
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x30000000, len=8 * P, prot=3, _gen=1))
    model.apply(ev("munmap", addr=0x30000000, len=8 * P, _gen=2))
    model.apply(ev("mmap", addr=0x30000000, len=2 * P, prot=3, _gen=3))
    out = model.add_dirty(100, [(1, 0x30000000), (1, 0x30000000 + 5 * P), (3, 0x30000000 + P)], ts=1)
    got = sorted((e["start"], e["end"], e["pages"]) for e in out)
    assert got == [(0x30000000, 0x30000000 + 2 * P, 1), (0x30000000, 0x30000000 + 8 * P, 2)]
    assert p.find(0x30000000).dirty == {(0x30000000 + P) >> 12}


def test_pages_written_before_an_mprotect_stay_with_the_split_piece(model):
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x30000000, len=8 * P, prot=3, _gen=1))
    model.apply(ev("mprotect", addr=0x30000000, len=2 * P, prot=1, _gen=2))
    out = model.add_dirty(100, [(1, 0x30000000), (1, 0x30000000 + 4 * P)], ts=1)
    assert sorted((e["start"], e["end"]) for e in out) == [(0x30000000, 0x30000000 + 2 * P),
                                                           (0x30000000 + 2 * P, 0x30000000 + 8 * P)]
    assert len(p.find(0x30000000).dirty) == 1 and p.find(0x30000000).prot == 1


def test_mremap_moves_dirt_with_the_mapping(model):
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x40000000, len=4 * P, prot=3))
    model.add_dirty(100, [0x40000000 + P], ts=1)
    model.apply(ev("mremap", addr=0x40000000, len=4 * P, new_addr=0x50000000, new_len=6 * P))
    assert p.find(0x40000000) is None
    moved = p.find(0x50000000)
    assert (moved.start, moved.end) == (0x50000000, 0x50000000 + 6 * P)
    assert moved.dirty == {(0x50000000 + P) >> 12}


def test_pages_written_before_an_mremap_move_follow_the_mapping(model):
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x40000000, len=4 * P, prot=3, _gen=1))
    model.apply(ev("mremap", addr=0x40000000, len=4 * P, new_addr=0x50000000, new_len=4 * P, _gen=2))
    out = model.add_dirty(100, [(1, 0x40000000 + 2 * P)], ts=1)
    # drained after the move: reported and counted on the mapping that holds the page now, the
    # one a reader that applied the mremap event knows
    assert [(e["start"], e["end"], e["pages"]) for e in out] == [(0x50000000, 0x50000000 + 4 * P, 1)]
    assert p.find(0x50000000).dirty == {(0x50000000 + 2 * P) >> 12}


def test_pages_follow_a_mapping_through_several_moves_and_protection_changes(model):
    """realloc can move a block twice between two drains; an mprotect can split it first. Pages
    written before are reported on the piece that holds them now, not left on the first
    tombstone (they used to be: one step was followed). Where the chain ends with the mapping
    unmapped, its last tombstone keeps them."""
    p = model.procs[100]
    A, B, C = 0x40000000, 0x50000000, 0x60000000
    model.apply(ev("mmap", addr=A, len=4 * P, prot=3, _gen=10))
    model.apply(ev("mremap", addr=A, len=4 * P, new_addr=B, new_len=4 * P, _gen=20))
    model.apply(ev("mremap", addr=B, len=4 * P, new_addr=C, new_len=4 * P, _gen=30))
    out = model.add_dirty(100, [(10, A + P), (10, A + 2 * P), (20, B + 3 * P)], ts=1)
    assert [(e["start"], e["end"], e["pages"]) for e in out] == [(C, C + 4 * P, 3)]
    assert p.find(C).dirty == {(C + P) >> 12, (C + 2 * P) >> 12, (C + 3 * P) >> 12}

    model.apply(ev("mmap", addr=A, len=4 * P, prot=3, _gen=40))
    model.apply(ev("mprotect", addr=A, len=2 * P, prot=1, _gen=50))
    model.apply(ev("mremap", addr=A + 2 * P, len=2 * P, new_addr=B, new_len=2 * P, _gen=60))
    out = model.add_dirty(100, [(40, A), (40, A + 3 * P)], ts=2)
    assert sorted((e["start"], e["end"], e["pages"]) for e in out) == [(A, A + 2 * P, 1), (B, B + 2 * P, 1)]

    model.apply(ev("munmap", addr=B, len=2 * P, _gen=70))
    out = model.add_dirty(100, [(40, A + 2 * P)], ts=3)  # moved to B, then unmapped there
    assert [(e["start"], e["end"], e["pages"]) for e in out] == [(B, B + 2 * P, 1)]


def test_pages_of_an_unmapped_mapping_stay_with_its_tombstone(model):
    model.apply(ev("mmap", addr=0x40000000, len=4 * P, prot=3, _gen=1))
    model.apply(ev("munmap", addr=0x40000000, len=4 * P, _gen=2))
    model.apply(ev("mmap", addr=0x40000000, len=4 * P, prot=3, _gen=3))  # same place, a new mapping
    out = model.add_dirty(100, [(1, 0x40000000 + P), (3, 0x40000000 + P)], ts=1)
    assert sorted((e["start"], e["pages"]) for e in out) == [(0x40000000, 1), (0x40000000, 1)]
    assert len(model.procs[100].find(0x40000000).dirty) == 1  # only the write to the new one
    # the two events have the same range: the dead mapping's says it is gone
    assert sorted(e.get("gone", False) for e in out) == [False, True]


def test_pages_of_a_heap_that_shrank_do_not_move_to_the_heap_grown_back(model):
    """brk shrinks the heap over written pages, then grows it back over the same addresses (malloc
    trimming and growing again): the old pages were freed; the regrown ones are fresh."""
    p = model.procs[100]
    model.apply(ev("brk", _want=0, _got=0x700000), gen=1)
    model.apply(ev("brk", _want=0x720000, _got=0x720000), gen=2)
    model.apply(ev("brk", _want=0x710000, _got=0x710000), gen=3)  # shrinks over 0x710000..
    model.apply(ev("brk", _want=0x720000, _got=0x720000), gen=4)  # and grows back
    out = model.add_dirty(100, [(2, 0x718000)], ts=1)  # written before the shrink
    assert [(e["start"], e["end"]) for e in out] == [(0x710000, 0x720000)]  # the dead piece, not the heap
    assert p.find(0x718000).dirty == set()


def test_a_heap_grown_back_in_steps_is_one_new_piece(model):
    p = model.procs[100]
    model.apply(ev("brk", _want=0, _got=0x700000), gen=1)
    model.apply(ev("brk", _want=0x720000, _got=0x720000), gen=2)
    model.apply(ev("brk", _want=0x710000, _got=0x710000), gen=3)
    for i, top in enumerate(range(0x711000, 0x720000, 0x1000)):  # grows back a page at a time
        model.apply(ev("brk", _want=top, _got=top), gen=4 + i)
    heaps = [(v.start, v.end) for v in p.vmas if v.path == "[heap]"]
    assert heaps == [(0x600000, 0x710000), (0x710000, 0x71f000)]


def test_a_regrown_heap_piece_is_not_the_heir_of_an_mprotect_before_the_shrink(model):
    """heap written, part of it mprotected, shrunk over, grown back: the page written before
    all that is not the regrown memory's."""
    p = model.procs[100]
    model.apply(ev("brk", _want=0, _got=0x700000), gen=1)
    model.apply(ev("brk", _want=0x720000, _got=0x720000), gen=2)
    model.apply(ev("mprotect", addr=0x718000, len=P, prot=1), gen=3)
    model.apply(ev("brk", _want=0x710000, _got=0x710000), gen=4)
    model.apply(ev("brk", _want=0x720000, _got=0x720000), gen=5)
    model.add_dirty(100, [(2, 0x718000)], ts=1)
    assert p.find(0x718000).dirty == set()


def test_maps_read_again_keep_the_heirs_of_an_earlier_mprotect(model):
    """A failed mprotect makes the controller read /proc again before the drain: pages written
    before the mprotect still go to the piece that holds them now."""
    p = model.procs[100]
    h = 0x30000000
    model.apply(ev("mmap", addr=h, len=3 * P, prot=3), gen=1)
    model.apply(ev("mprotect", addr=h, len=P, prot=1), gen=2)
    model.set_maps(p, [(0x400000, 0x401000, 5, "/bin/init"), (0x600000, 0x700000, 3, "[heap]"),
                       (h, h + P, 1, ""), (h + P, h + 3 * P, 3, "")])
    out = model.add_dirty(100, [(1, h)], ts=1)
    assert [(e["start"], e["end"]) for e in out] == [(h, h + P)]
    assert p.find(h).dirty == {h >> 12}


def test_pages_cut_off_by_an_mremap_shrink_stay_behind(model):
    p = model.procs[100]
    model.apply(ev("mmap", addr=0x40000000, len=8 * P, prot=3, _gen=1))
    model.apply(ev("mremap", addr=0x40000000, len=8 * P, new_addr=0x40000000, new_len=4 * P, _gen=2))
    model.apply(ev("mremap", addr=0x40000000, len=4 * P, new_addr=0x40000000, new_len=8 * P, _gen=3))
    out = model.add_dirty(100, [(1, 0x40000000 + P), (1, 0x40000000 + 6 * P)], ts=1)
    got = sorted((e["start"], e["end"], e["pages"]) for e in out)
    assert got == [(0x40000000, 0x40000000 + 8 * P, 1), (0x40000000 + 4 * P, 0x40000000 + 8 * P, 1)]
    assert p.find(0x40000000).dirty == {(0x40000000 + P) >> 12}  # the page that was kept, only


def test_a_page_written_before_and_after_an_mprotect_counts_once(model):
    model.apply(ev("mmap", addr=0x30000000, len=8 * P, prot=3, _gen=1))
    model.apply(ev("mprotect", addr=0x30000000 + 4 * P, len=4 * P, prot=1, _gen=2))
    out = model.add_dirty(100, [(1, 0x30000000), (2, 0x30000000)], ts=1)
    assert [(e["start"], e["end"], e["pages"]) for e in out] == [(0x30000000, 0x30000000 + 4 * P, 1)]


def test_brk_reports_old_break_and_signed_delta(model):
    p = model.procs[100]
    gen = p.gen
    assert model.apply(ev("brk", _want=0, _got=0x700000)) is None  # a query: baseline only
    assert p.gen == gen  # and no generation: the kernel starts none for it
    out = model.apply(ev("brk", _want=0x720000, _got=0x720000))
    assert (out["addr"], out["len"]) == (0x700000, 0x20000)
    assert set(public(out)) == {"event", "pid", "hostpid", "ns", "ts", "addr", "len"}
    assert p.find(0x71f000).path == "[heap]"
    out = model.apply(ev("brk", _want=0x710000, _got=0x710000))
    assert out["len"] == -0x10000 and p.find(0x715000) is None


def test_fork_exec_exit_build_the_tree(model):
    model.apply(ev("fork", child=2, _childhost=101))
    child = model.procs[101]
    assert (child.pid, child.ppid, child.ns) == (2, 100, NS)
    assert spans(child) == spans(model.procs[100])  # fork copies the address space
    model.apply(ev("exec", hostpid=101, pid=2, comm="sh"))
    assert child.comm == "sh" and child.vmas == []
    model.apply(ev("fork", hostpid=101, pid=2, child=3, _childhost=102))
    assert [(d, p.pid) for d, p in model.tree(NS)] == [(0, 1), (1, 2), (2, 3)]
    model.apply(ev("exit", hostpid=101, pid=2, code=7))
    assert not child.alive and child.code == 7
    model.tick(10)
    model.gc()
    assert 101 not in model.procs
    assert NS in model.namespaces  # init still lives
    model.apply(ev("exit", code=0))
    model.apply(ev("exit", hostpid=102, pid=3, code=0))
    model.tick(10)
    model.gc()
    assert model.procs == {} and NS not in model.namespaces  # the namespace died with its init


def test_a_fork_reported_after_the_childs_exec_and_exit_does_not_bring_it_back(model):
    """vfork/posix_spawn: the parent's clone returns after the child exec'd, so its fork record
    comes after the child's exec, and a short-lived child's exit too. The child stays dead (it
    used to come back as a live process with the parent's mappings, never to go away); a dead
    process of another parent with that pid is a reused pid: the fork makes a new one."""
    model.apply(ev("exec", hostpid=101, pid=2, comm="true"))
    model.apply(ev("exit", hostpid=101, pid=2, code=0))
    model.apply(ev("fork", child=2, _childhost=101))
    child = model.procs[101]
    assert not child.alive and child.code == 0 and child.ppid == 100 and child.vmas == []
    model.tick(10)
    model.gc()
    assert 101 not in model.procs
    model.apply(ev("fork", child=2, _childhost=101))  # the parent forks again: that child lives
    model.apply(ev("fork", hostpid=101, pid=2, child=3, _childhost=102))
    model.apply(ev("exit", hostpid=102, pid=3, code=1))
    model.apply(ev("fork", child=3, _childhost=102))  # pid 102 reused, by init's child this time
    assert model.procs[102].alive and model.procs[102].ppid == 100


def test_events_are_counted_and_kept_for_the_log(model):
    model.apply(ev("mmap", addr=0x60000000, len=P, prot=3))
    model.apply(ev("rename", comm="x"))  # internal: no log line
    assert model.counts["mmap"] == 1 and "rename" not in model.counts
    assert model.recent[-1]["event"] == "mmap"
    assert model.namespaces[NS].rate(model.clock()) > 0


# -- the dashboard --------------------------------------------------------------------------------

def text_of(renderable, width=140, height=40) -> str:
    console = Console(record=True, width=width, height=height, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_heat_bar_shows_the_fraction():
    assert "50.0%" in text_of(heat_bar(5, 10, width=10))
    assert text_of(heat_bar(5, 10, width=10)).count("█") == 5
    assert text_of(heat_bar(1, 10_000, width=10)).count("█") == 1  # any dirt stays visible
    assert text_of(heat_bar(0, 10, width=10)).count("█") == 0


def test_render_shows_namespaces_tree_vmas_events_and_losses(model):
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("exec", hostpid=101, pid=2, comm="worker"))
    model.apply(ev("mmap", hostpid=101, pid=2, addr=0x70000000, len=8 * P, prot=3))
    model.add_dirty(101, [0x70000000 + i * P for i in range(4)], ts=5)
    model.lost = {"ring": 3, "dirty": 0, "tracked": 0}
    model.status = "29 tracepoints attached"
    sel = Selection()
    handle_key(sel, model, "down")  # select the child (second in the tree)
    out = text_of(render(model, sel, width=140, height=40))
    assert str(NS) in out
    assert "worker" in out and "init" in out
    assert "memory of 2 worker (host 101)" in out
    assert "0x70000000" in out and "50.0%" in out  # 4 of 8 pages
    assert "lost: ring 3" in out
    assert "29 tracepoints attached" in out
    assert "dirty" in out and "mmap" in out  # the recent-events log
    assert "_childhost" not in out and "_gen" not in out  # controller-internal keys stay hidden


def test_render_keeps_the_keys_and_the_dump_message_in_view_at_100_columns(model):
    model.lost = {"ring": 0, "dirty": 0, "tracked": 0}
    model.status = "26 tracepoints attached, controller at idle priority (auto)"
    model.unattributed = 9
    sel = Selection(message="dumping 4026532188 to /var/tmp/x.img")
    lines = text_of(render(model, sel, width=100, height=30), width=100, height=30).splitlines()
    assert "lost: ring 0" in lines[0] and "d dump" in lines[1] and "dumping 4026532188" in lines[1]


@pytest.mark.parametrize("width", [80, 100, 140])
def test_render_keeps_the_dirt_in_view_at_any_width(model, width):
    """The memory map's dirty count and heat bar are what the dashboard is for: at 80 and 100
    columns they used to be the columns cut off (the start and end addresses took the room)."""
    model.apply(ev("mmap", addr=0x7f0000000000, len=256 * P, prot=3))
    model.add_dirty(100, [0x7f0000000000 + i * P for i in range(100)], ts=1)
    lines = text_of(render(model, Selection(), width=width, height=30), width=width, height=30).splitlines()
    header = next(line for line in lines if "start" in line and "prot" in line)
    assert "dirty" in header and "heat" in header, header
    row = next(line for line in lines if "0x7f0000000000" in line)
    assert "39.1%" in row and "100" in row, row
    assert all(len(line) <= width for line in lines)


@pytest.mark.parametrize("width", [80, 120])
def test_render_says_how_many_mappings_it_could_not_show_and_keeps_short_fields_in_view(model, width):
    """A process with more mappings than rows: the dirtiest show, and a last row says how many
    did not (and their dirt) instead of dropping them silently. In the recent-events log a dirty
    event's page count comes before its addresses, and an exited task's status before its name."""
    for i in range(40):
        model.apply(ev("mmap", addr=0x7f0000000000 + i * 0x100000, len=4 * P, prot=3))
    model.add_dirty(100, [0x7f0000000000 + i * 0x100000 for i in range(40)], ts=1)
    model.apply(ev("dirty", start=0x7f0000000000, end=0x7f0000004000, pages=3))
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("exit", hostpid=101, pid=2, code=42), )
    out = text_of(render(model, Selection(), width=width, height=30), width=width, height=30)
    more = next(line for line in out.splitlines() if " more " in line)
    n = int(more.split("… ")[1].split()[0])
    # the clean ones (/proc's two) are hidden first; every other hidden one has one dirty page
    assert 2 < n < 42 and more.split(" more ")[1].split()[0] == str(n - 2), more
    assert "pages=3" in out
    assert "└ †42 " in out


def test_plain_lines_and_the_dashboard_log_share_one_field_order_and_differ_in_units():
    """Both put short fields before the (hex) addresses; plain lines keep exact numbers for
    grep and scripts, the dashboard's log shows lengths and protections readably."""
    from ckptrace.watch import _plain_line
    from ckptrace.watchview import event_line

    e = {"event": "mremap", "pid": 3, "hostpid": 300, "ns": NS, "ts": 1_500_000_000,
         "addr": 0x7f0000000000, "len": 2 * P, "new_addr": 0x7f0000100000, "new_len": -P, "prot": 5}
    plain, log = _plain_line(e), event_line(e)
    assert plain.endswith(" mremap   len=8192 new_len=-4096 prot=5 addr=0x7f0000000000 new_addr=0x7f0000100000")
    assert plain.startswith("      1.500000 ") and f"ns={NS} pid=3/300 " in plain
    assert log == f"{NS}     3/300     mremap   len=8.0K new_len=-4.0K prot=r-x addr=0x7f0000000000 new_addr=0x7f0000100000"


def test_render_empty_model_and_small_terminal():
    m = Model()
    out = text_of(render(m, Selection(), width=60, height=12), width=60, height=12)
    assert "no watched namespace" in out


def test_keys_move_selection_within_bounds(model):
    sel = Selection()
    for _ in range(5):
        handle_key(sel, model, "down")
    assert selected_proc(model, sel).hostpid == 100  # only one process
    assert handle_key(sel, model, "q") == "quit"
    assert handle_key(sel, model, "d") == "dump"


# -- the controller's dump notification ----------------------------------------------------------

class FakeProg:
    """The controller's side of WatchProgram, with no kernel behind it."""

    abi = bpfload.abi()

    def read_sent(self, wait_s=0.01, max_s=None):
        return 0

    def records_read(self):
        return 1 << 62  # every record there is

    def backlog(self):
        return 0

    def add_namespace(self, ino):
        return True

    def track(self, hostpid, ns, pid=0):
        pass

    def untrack(self, hostpid):
        pass


def test_a_dump_of_the_namespace_resets_its_dirty_pages(model, tmp_path):
    from ckptrace import notify
    from ckptrace.watch import Controller

    notify.dump_done(NS, base=str(tmp_path), stamp_ns=1)  # an old dump: not a reason to reset
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=lambda ev: None)
    ctl.dumps_dir = str(tmp_path)
    model.namespaces[NS].last_dump = notify.last_dump(NS, base=str(tmp_path))
    model.add_dirty(100, [0x600000, 0x601000], ts=1)
    ctl.check_dumps()
    assert model.procs[100].dirty_pages() == 2
    notify.dump_done(NS, base=str(tmp_path), stamp_ns=2)
    ctl.check_dumps()
    assert model.procs[100].dirty_pages() == 0


def test_a_dump_of_the_namespace_is_one_event_naming_its_init_and_the_pages_cleared(model, tmp_path):
    """A --json reader adding up `dirty` pages could not tell when a dump had reset them: a
    `dump` event now says so, once per dump, with the common fields (pid 1, init's host pid)."""
    from ckptrace import notify
    from ckptrace.watch import Controller
    from ckptrace.watchview import event_fields

    out: list[dict] = []
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
    ctl.dumps_dir = str(tmp_path)
    model.add_dirty(100, [0x600000, 0x601000, 0x602000], ts=1)
    ctl.check_dumps()
    assert out == []  # no dump yet
    notify.dump_done(NS, base=str(tmp_path), stamp_ns=12345, image="/srv/img/a.img")
    ctl.check_dumps()
    ctl.check_dumps()  # the same stamp again: nothing more
    assert out == [{"event": "dump", "pid": 1, "hostpid": 100, "ns": NS, "ts": 12345, "pages": 3,
                    "image": "/srv/img/a.img"}]
    assert model.recent[-1] == out[0]
    # to a pipe: no path (null); a path of any bytes: shown escaped, its bytes in image_hex
    notify.dump_done(NS, base=str(tmp_path), stamp_ns=12346)
    notify.dump_done(NS + 1, base=str(tmp_path), stamp_ns=12347, image="/srv/\udcff.img")
    model.add_namespace(NS + 1)
    ctl.check_dumps()
    assert out[1]["image"] is None and "image=" not in " ".join(event_fields(out[1]))
    assert (out[2]["image"], out[2]["image_hex"]) == ("/srv/\\xff.img", b"/srv/\xff.img".hex()), out[2]


def test_controller_turns_kernel_records_into_report_dicts(model):
    """A ckpt_event as the ring buffer delivers it becomes exactly the issue's JSON fields."""
    from ckptrace.watch import Controller

    out = []
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
    E = bpfload.abi().structs["ckpt_event"]
    c = bpfload.abi().consts
    e = E(ts=5, ns=NS, type=c["CKPT_EV_MMAP"], hostpid=100, hosttid=100, pid=1, tid=1,
          a0=0x7000, a1=P, a2=3, a3=0x22)
    ctl.on_record(e)
    e2 = E(ts=6, ns=NS, type=c["CKPT_EV_FORK"], hostpid=100, pid=1, a0=2, a1=101)
    ctl.on_record(e2)
    e3 = E(ts=7, ns=NS, type=c["CKPT_EV_EXIT"], hostpid=101, pid=2, code=7)
    ctl.on_record(e3)
    assert ctl.failure is None
    assert out == [
        {"event": "mmap", "pid": 1, "hostpid": 100, "ns": NS, "ts": 5, "addr": 0x7000, "len": P, "prot": 3},
        {"event": "fork", "pid": 1, "hostpid": 100, "ns": NS, "ts": 6, "child": 2},
        {"event": "exit", "pid": 2, "hostpid": 101, "ns": NS, "ts": 7, "code": 7},
    ]


def test_an_mprotect_that_failed_part_way_carries_its_error_and_rereads_the_mappings(model):
    from ckptrace.watch import Controller

    out = []
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
    E = bpfload.abi().structs["ckpt_event"]
    c = bpfload.abi().consts
    ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_MPROTECT"], hostpid=100, pid=1, code=12, a0=0x600000, a1=3 * P, a2=1))
    ctl.on_record(E(ts=6, ns=NS, type=c["CKPT_EV_MADVISE"], hostpid=100, pid=1, code=12, a0=0x600000, a1=P, a2=4))
    ctl.on_record(E(ts=7, ns=NS, type=c["CKPT_EV_MPROTECT"], hostpid=100, pid=1, a0=0x400000, a1=P, a2=1))
    assert ctl.failure is None
    assert [(e["event"], e.get("error")) for e in out] == [("mprotect", "ENOMEM"), ("madvise", "ENOMEM"),
                                                          ("mprotect", None)]
    assert set(ctl.stale) == {100}  # which part changed, /proc says at the next drain


def test_one_kernel_mask_is_split_between_the_vmas_it_covers(model):
    """A 64-page chunk of the kernel map covers three mappings and a hole: each mapping gets
    exactly its own pages, and the page in the hole is counted as unattributed."""
    base = 0x20000000
    model.apply(ev("mmap", addr=base, len=3 * P, prot=3))
    model.apply(ev("mmap", addr=base + 3 * P, len=5 * P, prot=1))
    model.apply(ev("mmap", addr=base + 10 * P, len=54 * P, prot=3))
    pages = [0, 2, 3, 7, 9, 10, 63]  # page 9 is in the hole between the 2nd and 3rd mapping
    mask = sum(1 << i for i in pages)
    out = model.add_dirty_masks(100, [(None, base >> 12, mask)], ts=3)
    got = sorted((e["start"], e["end"], e["pages"]) for e in out)
    assert got == [(base, base + 3 * P, 2), (base + 3 * P, base + 8 * P, 2), (base + 10 * P, base + 64 * P, 2)]
    p = model.procs[100]
    assert p.find(base + 3 * P).dirty == {(base >> 12) + 3, (base >> 12) + 7}
    assert model.unattributed == 1


@pytest.mark.parametrize("event", [
    {"event": "mmap", "pid": 1, "hostpid": 100, "ns": NS, "ts": 5, "addr": 0x7000, "len": P, "prot": 3},
    {"event": "exec", "pid": 1, "hostpid": 100, "ns": NS, "ts": 5, "comm": 'a"b\\c%d\u00e9'},
    {"event": "exit", "pid": 1, "hostpid": 100, "ns": NS, "ts": 5, "code": True},
    {"event": "exit", "pid": 1, "hostpid": 100, "ns": NS, "ts": 5.5, "code": -1},
    {"event": "fo%o", "pid": -1, "hostpid": 2**64 - 1, "ns": NS, "ts": 0, "child": None},
])
def test_json_lines_are_what_the_json_encoder_writes(event):
    """--json formats integer-only shapes from a template: every line, including one of a known
    shape whose values are not all integers this time, must equal the json module's."""
    import io
    import json

    from ckptrace.watch import JsonLines

    buf = io.StringIO()
    emit = JsonLines(buf)
    plain = {k: (0 if k != "event" else v) for k, v in event.items()}
    emit(plain)  # builds the template for this shape first
    emit(event)
    assert buf.getvalue() == ""  # kept until the controller's tick
    emit.flush()
    assert buf.getvalue().splitlines() == [json.dumps(e, separators=(",", ":")) for e in (plain, event)]


def test_event_lines_are_written_in_one_piece_per_tick_or_when_many_pile_up():
    import io

    from ckptrace.watch import JsonLines, PlainLines

    class Out(io.StringIO):
        writes = 0

        def write(self, s):
            self.writes += 1
            return super().write(s)

    out = Out()
    emit = JsonLines(out)
    ev = {"event": "munmap", "pid": 1, "hostpid": 100, "ns": NS, "ts": 5, "addr": 0x7000, "len": P}
    for _ in range(JsonLines.PENDING_MAX - 1):
        emit(ev)
    assert out.writes == 0
    emit(ev)
    assert out.writes == 1 and out.getvalue().count("\n") == JsonLines.PENDING_MAX
    out = Out()
    plain = PlainLines(out)
    plain(ev)
    plain(ev)
    plain.flush()
    assert out.writes == 1 and out.getvalue().count("munmap") == 2


def test_event_lines_survive_short_writes_of_an_unbuffered_stdout():
    """`python -u` / PYTHONUNBUFFERED: stdout's buffer is the raw file, whose write(2) a signal
    can cut short on a pipe. Every byte must still arrive, in order."""
    import io

    from ckptrace.watch import JsonLines

    class ShortRaw(io.RawIOBase):
        def __init__(self):
            self.got = bytearray()

        def writable(self):
            return True

        def write(self, b):
            n = min(len(b), 7)
            self.got += bytes(b[:n])
            return n

    raw = ShortRaw()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    assert out.buffer is raw  # as sys.stdout is under python -u
    emit = JsonLines(out)
    evs = [{"event": "exec", "pid": i, "hostpid": 100 + i, "ns": NS, "ts": i, "comm": "sh\u00e9"} for i in range(50)]
    for ev in evs:
        emit(ev)
    emit.flush()
    import json

    assert [json.loads(line) for line in raw.got.decode().splitlines()] == evs



def _random_mm_history(r, *, gens: int, span_pages: int, max_pages: int):
    """A model with one process and `gens` random mmap/munmap/mprotect/mremap calls (generations
    1..gens) of up to `max_pages` pages within `span_pages` pages of its first mapping: (model,
    process, first page number)."""
    from ckptrace.watchmodel import PAGE_SHIFT

    m = Model(clock=lambda: 1.0)
    p = m.seed_proc(100, 1, NS, comm="x", maps=[(0x10000, 0x30000, 3, "/bin/x")])
    lo_pn = 0x10000 >> PAGE_SHIFT
    for gen in range(1, gens + 1):
        kind = r.choice(["mmap", "mmap", "munmap", "mprotect", "mremap"])
        ev = {"event": kind, "pid": 1, "hostpid": 100, "ns": NS, "ts": gen,
              "addr": (lo_pn + r.randrange(0, span_pages)) << PAGE_SHIFT, "len": r.randrange(1, max_pages) * P}
        if kind in ("mmap", "mprotect"):
            ev["prot"] = r.choice([1, 3, 5])
        if kind == "mremap":
            ev.update(new_addr=(lo_pn + r.randrange(0, span_pages)) << PAGE_SHIFT,
                      new_len=r.randrange(1, max_pages) * P)
        m.apply(ev, gen=gen)
    return m, p, lo_pn


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("seed", range(60))
def test_dirty_attribution_agrees_with_owner_page_by_page(seed, indexed, monkeypatch):
    """add_dirty_masks looks a mapping up once per run of pages it holds. On random
    mmap/munmap/mprotect/mremap histories its `dirty` events must say what Proc.owner says page by
    page (or, for a mapping split or moved since, the live piece of it that holds the page now),
    for pages written in any generation or none, each page once."""
    import random

    from ckptrace import watchmodel
    from ckptrace.watchmodel import _LIVE, PAGE_SHIFT

    if indexed:  # the path a drain takes for a process with many tombstones
        monkeypatch.setattr(watchmodel, "TOMB_INDEX_MIN", 0)
    r = random.Random(seed)
    m, p, lo_pn = _random_mm_history(r, gens=11, span_pages=500, max_pages=80)
    chunks = [(r.choice([None, *range(0, 13)]), (lo_pn & ~63) + 64 * r.randrange(0, 10),
               r.getrandbits(64) & r.getrandbits(64)) for _ in range(r.randrange(1, 12))]

    want: dict[int, list] = {}  # id(vma reported on) -> [vma, page numbers]
    unattributed = 0
    for gen, base, mask in chunks:
        for bit in range(64):
            if mask >> bit & 1:
                pn = base + bit
                v = p.owner(pn << PAGE_SHIFT, gen)
                if v is None:
                    unattributed += 1
                    continue
                # split or moved since (maybe again and again): the piece that holds it now
                lineage = v.lineage
                while v.died < _LIVE and v.heirs:
                    nxt = p.owner((pn << PAGE_SHIFT) + v.moved, v.died)
                    if nxt is None or nxt is v or nxt.lineage != lineage:
                        break
                    v, pn = nxt, pn + (v.moved >> PAGE_SHIFT)
                want.setdefault(id(v), [v, set()])[1].add(pn)
    events = m.add_dirty_masks(100, chunks, 99)
    assert sorted((e["start"], e["end"], e["pages"]) for e in events) == \
        sorted((v.start, v.end, len(n)) for v, n in want.values())
    assert m.unattributed == unattributed


@pytest.mark.parametrize("stretch_pages, huge", [(512, 4096), (4, 3)])
@pytest.mark.parametrize("seed", range(40))
def test_the_tombstone_index_answers_as_owner_does(seed, stretch_pages, huge, monkeypatch):
    """TombIndex (used for processes with many tombstones) against Proc.owner, on random
    histories with address reuse, for every page of the range, in every generation and none;
    also with stretches of 4 pages and a low "huge" bar, so that tombstones span stretches and
    some are looked at on their own."""
    import random

    from ckptrace.watchmodel import PAGE_SHIFT, TombIndex

    monkeypatch.setattr(TombIndex, "SHIFT", (stretch_pages * P).bit_length() - 1)
    monkeypatch.setattr(TombIndex, "HUGE", huge)

    r = random.Random(seed)
    m, p, lo_pn = _random_mm_history(r, gens=39, span_pages=60, max_pages=20)
    index = TombIndex(p)
    for pn in range(lo_pn - 2, lo_pn + 90):
        for gen in (None, *range(0, 41)):
            assert p.owner(pn << PAGE_SHIFT, gen, index.tomb) is p.owner(pn << PAGE_SHIFT, gen), (hex(pn << 12), gen)


def test_after_ring_losses_processes_gone_from_proc_are_marked_dead(model):
    """An exit record lost with a full ring left its process live for ever: once losses have
    happened, housekeeping asks /proc who is still there."""
    from ckptrace.watch import Controller

    prog = FakeProg()
    prog.ns_slots = []
    ctl = Controller(prog, model, host=1, focus=None, emit=lambda ev: None)
    gone = 2 ** 22 + 12345  # above any pid_max: never in /proc
    model.apply(ev("fork", child=2), childhost=gone)
    model.procs[os.getpid()] = model.procs.pop(100)  # a process that is there: this one
    model.procs[os.getpid()].hostpid = os.getpid()
    ctl.gc()
    assert model.procs[gone].alive  # no losses: the kernel's word is taken
    ctl.lost_seen["ring"] = 5
    ctl.gc()
    assert not model.procs[gone].alive and model.procs[gone].code is None
    assert model.procs[os.getpid()].alive
    from ckptrace.watchview import Selection, render

    assert "(gone)" in text_of(render(model, Selection(), width=140, height=40))


def test_a_child_seen_before_its_fork_gets_the_fork_first_and_only_once(model):
    """The child may run before its parent's clone call returns (where the kernel side reports
    the fork): its first event then brings the fork, from /proc's parent, and the kernel's fork
    record that follows is not reported a second time."""
    from ckptrace.watch import Controller

    parent = model.procs.pop(100)
    parent.hostpid = os.getpid()  # this test is the parent: /proc knows it
    model.procs[os.getpid()] = parent
    child = subprocess.Popen(["sleep", "30"])
    try:
        out = []
        ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
        E = bpfload.abi().structs["ckpt_event"]
        c = bpfload.abi().consts
        ctl.on_record(E(ts=7, ns=NS, type=c["CKPT_EV_EXEC"], hostpid=child.pid, pid=2, comm=b"sleep"))
        ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_FORK"], hostpid=os.getpid(), pid=1, a0=2, a1=child.pid))
        assert ctl.failure is None
        assert [(e["event"], e["hostpid"]) for e in out] == [("fork", os.getpid()), ("exec", child.pid)]
        assert out[0]["child"] == model.procs[child.pid].pid
        assert model.procs[child.pid].ppid == os.getpid()
    finally:
        child.kill()
        child.wait()


class DrainProg(FakeProg):
    """A FakeProg whose kernel map holds given written pages until drained."""

    def __init__(self):
        self.pages: dict[int, list] = {}

    def drain_dirty(self):
        out, self.pages = self.pages, {}
        return out


def test_an_exited_process_keeps_its_mappings_for_one_drain_only(model):
    """Pages a process wrote before it exited come in the first drain after its exit, attributed
    to its (now tombstoned) mapping; after that drain nothing of it is kept but its entry."""
    from ckptrace.watch import Controller

    prog = DrainProg()
    ctl = Controller(prog, model, host=1, focus=None, emit=lambda ev: None)
    model.apply(ev("fork", child=2), childhost=101)
    model.apply(ev("mmap", hostpid=101, pid=2, addr=0x30000000, len=4 * P, prot=3), gen=1)
    model.apply(ev("exit", hostpid=101, pid=2, code=0))
    child = model.procs[101]
    assert child.tombstones and not child.alive
    prog.pages = {101: [(1, 0x30000000 >> 12, 0b101)]}  # written at generation 1, before the exit
    out = []
    ctl.emit = out.append
    ctl.drain()
    assert [(e["event"], e["pid"], e["start"], e["pages"]) for e in out] == [("dirty", 2, 0x30000000, 2)]
    assert child.tombstones == [] and model.exited == []
    assert model.procs[101] is child  # still listed (exit code, tree) until DEAD_SECONDS
    model.apply(ev("mmap", addr=0x50000000, len=P, prot=3), gen=5)  # a live process is untouched
    ctl.drain()
    assert model.procs[100].tombstones == [] or all(v.died for _, v in model.procs[100].tombstones)
    assert model.procs[100].vmas


def test_a_process_that_exits_during_a_drain_keeps_its_mappings_until_the_next(model):
    """Only processes whose exit was applied before the drain began are released by it."""
    from ckptrace.watch import Controller

    class ExitDuringDrain(DrainProg):
        def drain_dirty(self):
            model.apply(ev("exit", hostpid=100, pid=1, code=0))  # handled while the map is read
            return super().drain_dirty()

    prog = ExitDuringDrain()
    ctl = Controller(prog, model, host=1, focus=None, emit=lambda ev: None)
    ctl.drain()
    init = model.procs[100]
    assert not init.alive and init.tombstones  # its last pages may still be in the kernel map
    prog.drain_dirty = DrainProg.drain_dirty.__get__(prog)
    ctl.drain()
    assert init.tombstones == []


def test_pages_written_after_the_last_mm_event_of_an_exited_process_are_attributed(model):
    """Exit starts no generation in the kernel: pages a process wrote after its last mm event
    carry its final generation, which its buried mappings must still cover."""
    model.apply(ev("mmap", addr=0x30000000, len=4 * P, prot=3), gen=7)
    model.apply(ev("exit", code=0))
    out = model.add_dirty_masks(100, [(7, 0x30000000 >> 12, 0b11), (7, 0x600000 >> 12, 0b1)], ts=1)
    assert sorted((e["start"], e["pages"]) for e in out) == [(0x600000, 1), (0x30000000, 2)]
    assert model.unattributed == 0


def test_a_dead_process_gets_the_same_dirty_report_as_a_live_one(model):
    """Pages of a dead process are counted, not recorded page by page (its mappings go after the
    drain): the reports must equal those of a live twin with the same history."""
    for host, pid in ((101, 2), (102, 3)):
        model.apply(ev("fork", child=pid), childhost=host)
        model.apply(ev("mmap", hostpid=host, pid=pid, addr=0x30000000, len=100 * P, prot=3), gen=1)
        model.apply(ev("mprotect", hostpid=host, pid=pid, addr=0x30000000 + 10 * P, len=20 * P, prot=1), gen=2)
    model.apply(ev("exit", hostpid=102, pid=3, code=0))
    chunks = [(1, 0x30000000 >> 12, (1 << 64) - 1), (2, (0x30000000 >> 12) + 64, 0xF0F0), (None, 0x400000 >> 12, 1)]
    live = model.add_dirty_masks(101, chunks, ts=1)
    dead = model.add_dirty_masks(102, chunks, ts=1)
    key = sorted
    assert key((e["start"], e["end"], e["pages"]) for e in live) == key((e["start"], e["end"], e["pages"]) for e in dead)
    assert sum(e["pages"] for e in dead) == 64 + 8 + 1


def test_a_drain_first_applies_the_records_sent_before_it(model):
    """A process forks, maps, writes and exits entirely between the controller's last poll and
    its next drain: the drain takes its pages while its records still wait in the ring. Those
    records are read before attributing, so its pages are reported, not dropped as belonging to
    an unknown process that /proc no longer has."""
    from ckptrace.watch import Controller

    E, c = bpfload.abi().structs["ckpt_event"], bpfload.abi().consts
    gone = 2**22 + 12345  # above any pid_max: /proc can never know it
    waiting = [E(ts=1, ns=NS, type=c["CKPT_EV_FORK"], hostpid=100, pid=1, a0=9, a1=gone),
               E(ts=2, ns=NS, type=c["CKPT_EV_MMAP"], hostpid=gone, pid=9, gen=1, a0=0x30000000, a1=4 * P, a2=3),
               E(ts=3, ns=NS, type=c["CKPT_EV_EXIT"], hostpid=gone, pid=9, code=0)]

    class Ring(DrainProg):
        def read_sent(self, wait_s=0.01, max_s=None):
            for e in waiting:
                ctl.on_record(e)
            n = len(waiting)
            waiting.clear()
            return n

    prog = Ring()
    prog.pages = {gone: [(1, 0x30000000 >> 12, 0b111)]}
    out = []
    ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
    ctl.drain()
    assert ctl.failure is None
    assert [(e["event"], e["pid"]) for e in out][:3] == [("fork", 1), ("mmap", 9), ("exit", 9)]
    assert [(e["pid"], e["start"], e["pages"]) for e in out if e["event"] == "dirty"] == [(9, 0x30000000, 3)]
    assert gone not in ctl.ignored


def test_a_background_dump_reports_how_it_ended():
    import sys
    import time

    from ckptrace.watch import BackgroundDump

    def run(code: str) -> tuple[str, str]:
        d = BackgroundDump([sys.executable, "-c", code])
        started = d.start(4026532188)
        deadline = time.monotonic() + 10
        while (out := d.poll()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert d.poll() is None  # reported once
        return started, out

    started, out = run("import sys; sys.stderr.write('ckptrace dump: pid 7 lives in a nested pid namespace\\n'); sys.exit(1)")
    assert started.startswith("dumping 4026532188 to /var/tmp/")
    assert out == "dump failed: pid 7 lives in a nested pid namespace"
    started, out = run("pass")
    assert out == started.replace("dumping", "dumped")
    assert BackgroundDump().start(None) == "no namespace selected"


def test_an_munmap_reported_after_another_threads_mmap_at_its_address_spares_that_mapping(model):
    """Calls are reported when they return: thread 7 unmaps X, thread 8's mmap (no MAP_FIXED)
    gets X, and 8's record comes first. The kernel never puts such a mapping over a live one, so
    the munmap that follows, from another thread, was of the old mapping: 8's stays, and the
    pages 8 writes there are its own. A MAP_FIXED mmap proves nothing: an munmap after it
    applies."""
    X = 0x30000000
    model.apply(ev("mmap", addr=X, len=P, prot=3), gen=2, tid=107, fixed=False)
    model.apply(ev("mmap", addr=X, len=P, prot=3), gen=3, tid=108, fixed=False)
    model.apply(ev("munmap", addr=X, len=P), gen=4, tid=107)
    p = model.procs[100]
    assert (X, X + P, 3) in spans(p)
    out = model.add_dirty_masks(100, [(4, X >> 12, 1)], ts=1)
    assert [(e["start"], e["pages"]) for e in out] == [(X, 1)] and model.unattributed == 0
    model.apply(ev("munmap", addr=X, len=P), gen=5, tid=108)  # its own munmap: it goes
    assert (X, X + P, 3) not in spans(p)

    model.apply(ev("mmap", addr=X, len=P, prot=3), gen=6, tid=107, fixed=False)
    model.apply(ev("mmap", addr=X, len=P, prot=3), gen=7, tid=108, fixed=True)
    model.apply(ev("munmap", addr=X, len=P), gen=8, tid=107)
    assert (X, X + P, 3) not in spans(p)


def test_an_munmap_over_a_wider_range_skips_only_the_mapping_that_replaced_part_of_it(model):
    X = 0x30000000
    model.apply(ev("mmap", addr=X, len=4 * P, prot=3), gen=2, tid=107, fixed=False)
    model.apply(ev("mmap", addr=X + P, len=P, prot=1), gen=3, tid=108, fixed=False)
    model.apply(ev("munmap", addr=X, len=4 * P), gen=4, tid=107)
    assert [s for s in spans(model.procs[100]) if X <= s[0] < X + 4 * P] == [(X + P, X + 2 * P, 1)]


class LaggingProg(FakeProg):
    """A kernel side whose written pages are drained while the controller has read only part of
    the rings (it is behind: a flood, a busy machine)."""

    def __init__(self):
        self.pages: dict[int, list] = {}
        self.read = 0

    def drain_dirty(self):
        out, self.pages = self.pages, {}
        return out

    def records_read(self):
        return self.read


def test_pages_of_a_generation_whose_mmap_is_not_read_yet_wait_for_it(model):
    """A page written in a mapping whose mmap record is still in the rings would be attributed
    nowhere: it waits for the drain after that record is read, then goes to its mapping."""
    from ckptrace.watch import Controller

    prog = LaggingProg()
    out: list[dict] = []
    ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
    X = 0x30000000
    prog.read = 11  # records 0..10 read; the mmap is record 11: generation 12
    prog.pages = {100: [(12, X >> 12, 0b11)]}
    ctl.drain()
    assert out == [] and model.unattributed == 0 and ctl.held
    model.apply(ev("mmap", addr=X, len=4 * P, prot=3), gen=12)
    prog.read = 12
    ctl.drain()
    assert [(e["event"], e["start"], e["pages"]) for e in out if e["event"] == "dirty"] == [("dirty", X, 2)]
    assert not ctl.held and model.unattributed == 0


def test_held_pages_are_attributed_at_the_last_drain_whatever_was_read(model):
    from ckptrace.watch import Controller

    prog = LaggingProg()
    ctl = Controller(prog, model, host=1, focus=None, emit=lambda ev: None)
    prog.pages = {100: [(99, 0x30000000 >> 12, 0b1)]}
    ctl.drain()
    ctl.drain()
    assert ctl.held and model.unattributed == 0
    ctl.drain(final=True)
    assert not ctl.held and model.unattributed == 1  # its record never came: counted, not kept


def test_pages_held_for_a_table_to_re_read_meet_their_mappings_when_the_process_exits(model):
    """A process exec'd (its table is to be completed from /proc once the rings are read up) maps
    and writes, and its pages wait while the controller is behind. It exits meanwhile: its pages
    are attributed to the mappings its events made before those go (they used to wait out the
    re-read and find no mapping left: unattributed)."""
    from ckptrace.watch import Controller

    class Behind(DrainProg):
        def backlog(self):
            return 3  # records still in the rings

    prog = Behind()
    out: list[dict] = []
    ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
    X = 0x30000000
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("exec", hostpid=101, pid=2, comm="sh"), gen=5)
    ctl._mark_stale(101, exec_only=True)
    model.apply(ev("mmap", hostpid=101, pid=2, addr=X, len=4 * P, prot=3), gen=6)
    prog.pages = {101: [(6, X >> 12, 0b1111)]}
    ctl.drain()
    assert ctl.held and out == []
    model.apply(ev("exit", hostpid=101, pid=2, code=0))
    ctl.drain()
    assert [(e["pid"], e["start"], e["pages"]) for e in out if e["event"] == "dirty"] == [(2, X, 4)]
    assert not ctl.held and not ctl.stale and model.unattributed == 0


def test_a_dump_reset_comes_before_a_drain_and_keeps_what_it_takes(model, tmp_path):
    """The dump's stamp is looked at as each drain begins: what that drain takes was written after
    the dump released its tasks, or before and late (counted once more: the safe way), and is
    kept. Pages held for their records are kept too (they used to be dropped: never reported)."""
    from ckptrace import notify
    from ckptrace.watch import Controller

    prog = LaggingProg()
    out: list[dict] = []
    ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
    ctl.dumps_dir = str(tmp_path)
    X = 0x30000000
    model.add_dirty(100, [0x600000, 0x601000], ts=1)  # written before the dump
    prog.read = 11
    prog.pages = {100: [(12, X >> 12, 0b1)]}  # its mmap record is not read yet: held
    ctl.drain()
    assert ctl.held and model.procs[100].dirty_pages() == 2
    notify.dump_done(NS, base=str(tmp_path))
    model.apply(ev("mmap", addr=X, len=4 * P, prot=3), gen=12)
    prog.read = 12
    prog.pages = {100: [(12, X >> 12, 0b110)]}  # written after the dump's release
    ctl.drain()
    p = model.procs[100]
    assert p.find(0x600000).dirty == set() and p.find(X).dirty == {X >> 12, (X >> 12) + 1, (X >> 12) + 2}
    assert [(e["start"], e["pages"]) for e in out if e["event"] == "dirty"] == [(X, 3)] and not ctl.held


def test_lost_records_make_every_mapping_table_read_again(model):
    """mm records may be among those a full ring dropped: /proc is asked again."""
    from ckptrace.watch import Controller

    class Losing(FakeProg):
        def lost(self):
            return {"ring": 3, "dirty": 0, "tracked": 0}

    ctl = Controller(Losing(), model, host=1, focus=None, emit=lambda ev: None)
    ctl.check_lost()
    assert set(ctl.stale) == {100}


def test_an_execd_processs_table_is_read_again_only_once_the_rings_are_read_up(model, monkeypatch):
    """/proc shows a table as it is now: read while records were still pending, it would hold the
    mappings those records then add again on top of it. So the re-read waits for the backlog (or
    STALE_SECONDS), and the process's pages wait for the re-read."""
    from ckptrace import watch
    from ckptrace.watch import Controller

    X = 0x30000000
    monkeypatch.setattr(watch, "_maps", lambda hostpid: [(X, X + 4 * P, 3, "")])
    prog = LaggingProg()
    prog.read = 1 << 40
    prog.backlog = lambda: 500
    out: list[dict] = []
    ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
    model.apply(ev("exec", comm="w"), gen=5)
    ctl.stale[100] = __import__("time").monotonic()
    prog.pages = {100: [(5, X >> 12, 0b1)]}
    ctl.drain()
    assert 100 in ctl.stale and ctl.held and not [e for e in out if e["event"] == "dirty"]
    assert model.procs[100].vmas == []  # not read while records are pending
    prog.backlog = lambda: 0
    ctl.drain()
    assert 100 not in ctl.stale and not ctl.held
    assert [(e["start"], e["pages"]) for e in out if e["event"] == "dirty"] == [(X, 1)]


def test_after_an_exec_proc_completes_the_table_the_events_made_rather_than_replacing_it(model):
    """Mappings made by mm calls after an exec are in the table from their events, each with its
    generation; /proc only adds what exec made (here around them, merged by the kernel with one
    of them), as old as the exec: pages of either kind find their mapping."""
    X = 0x30000000
    model.apply(ev("exec", comm="w"), gen=5)
    model.apply(ev("mmap", addr=X + 4 * P, len=2 * P, prot=3), gen=7)
    p = model.procs[100]
    model.fill_maps(p, [(X, X + 8 * P, 3, "")])  # the kernel merged the new mapping into its neighbours
    assert spans(p) == [(X, X + 4 * P, 3), (X + 4 * P, X + 6 * P, 3), (X + 6 * P, X + 8 * P, 3)]
    assert [v.born for v in p.vmas] == [5, 7, 5]
    out = model.add_dirty_masks(100, [(5, X >> 12, 0b1), (7, (X >> 12) + 4, 0b1)], ts=1)
    assert sorted((e["start"], e["pages"]) for e in out) == [(X, 1), (X + 4 * P, 1)]
    assert model.unattributed == 0


def test_a_zombie_found_at_start_is_not_taken_for_a_live_process(model):
    import subprocess as sp

    from ckptrace.watch import Controller

    child = sp.Popen(["true"])
    for _ in range(200):
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        __import__("time").sleep(0.01)
    try:
        ctl = Controller(FakeProg(), model, host=1, focus=None, emit=lambda ev: None)
        assert ctl.seed(child.pid, NS) is None and child.pid not in model.procs
    finally:
        child.wait()


def test_task_names_stay_readable_at_100_columns(model):
    """Side by side at 100 columns the tree's comm column was cut to one letter: below 110 the
    tree goes above the map, full width."""
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("exec", hostpid=101, pid=2, comm="worker-process"))
    out = text_of(render(model, Selection(), width=100, height=30), width=100, height=30)
    assert "└ worker-process" in out  # the tree row (the events log has the name too)


def test_ignored_pids_are_forgotten_once_gone(model):
    """A pid ignored (another namespace's) is forgotten when /proc no longer has it: the pid can
    come back as one of ours, and resolve() would skip it unseen."""
    from ckptrace.watch import Controller

    class Prog(DrainProg):
        ns_slots = {}

    ctl = Controller(Prog(), model, host=1, focus=None, emit=lambda e: None)
    gone = 2**22 + 12345  # above any pid_max
    ctl.ignored |= {os.getpid(), gone}
    ctl.gc()
    assert ctl.ignored == {os.getpid()}


@contextlib.contextmanager
def _exec_d_sleep():
    """A real `sleep` child once it has exec'd, with its stack's range: (child, start, end)."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        while "sleep" not in os.readlink(f"/proc/{child.pid}/exe"):
            time.sleep(0.01)
        with open(f"/proc/{child.pid}/maps") as f:
            stack = next(line for line in f if line.rstrip().endswith("[stack]"))
        lo, hi = (int(x, 16) for x in stack.split()[0].split("-"))
        yield child, lo, hi
    finally:
        child.kill()
        child.wait()


def test_a_process_met_at_its_exec_gets_the_pages_execve_wrote_once(model):
    """vfork/posix_spawn: the controller first meets a process at its exec record. /proc then
    shows the table the exec made; taken as the old one and buried by the exec, the pages execve
    itself wrote (the new stack, ld.so's data: the old generation) went to its tombstone, and
    the same range was reported twice, its live mapping one page short."""
    from ckptrace.watch import Controller

    with _exec_d_sleep() as (child, lo, hi):
        prog = DrainProg()
        out: list[dict] = []
        ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
        E, c = bpfload.abi().structs["ckpt_event"], bpfload.abi().consts
        ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_EXEC"], hostpid=child.pid, pid=7, seq=10, newgen=1,
                        comm=b"sleep"))
        top = (hi >> 12) - 1  # the stack's last page, and the one below
        prog.pages = {child.pid: [(3, top & ~63, 1 << (top & 63)), (11, (top - 1) & ~63, 1 << ((top - 1) & 63))]}
        ctl.drain()
        assert ctl.failure is None
        dirty = [(e["start"], e["end"], e["pages"]) for e in out if e["event"] == "dirty"]
        assert dirty == [(lo, hi, 2)]
        assert model.procs[child.pid].find(hi - P).dirty == {top, top - 1}


def test_a_table_read_from_proc_after_an_exec_is_not_buried_by_that_exec(model):
    """A table seeded from /proc after the process exec'd, with its exec record still in the
    ring (met at the exec's rename, or by a drain): the exec took it for the old program's and
    buried it, so pages execve wrote (old generation) went to tombstones of the very ranges
    fill_maps then added live: `dirty` with `gone` for mappings that still exist."""
    X, S = 0x555500000000, 0x7FFF00000000  # the new program's .data, its stack
    new = [(X, X + 2 * P, 3, "/bin/x"), (S, S + 8 * P, 3, "[stack]")]
    model.seed_proc(101, 2, NS, comm="sh", maps=new, maps_at=5000)
    model.apply(ev("exec", hostpid=101, pid=2, comm="x", ts=4000), gen=7)  # before the /proc read
    p = model.procs[101]
    assert p.tombstones == []
    model.fill_maps(p, new, at=6000)
    out = model.add_dirty_masks(101, [(0, X >> 12, 0b1), (0, S >> 12, 0b10000000), (7, S >> 12, 0b1)], ts=1)
    assert sorted((e["start"], e["pages"], e.get("gone", False)) for e in out) == [(X, 1, False), (S, 2, False)]


def test_an_exec_met_at_its_rename_does_not_bury_the_table_read_after_the_rename(model):
    """exec renames the process (rename record) once the new address space is in place, then
    its exec record follows: a process first met at that rename is read from /proc after the
    rename, i.e. already with the new program's table, though before the exec's own ts."""
    S = 0x7FFF00000000
    new = [(S, S + 8 * P, 3, "[stack]")]
    model.apply(ev("rename", hostpid=101, pid=2, comm="x", ts=3000))
    model.seed_proc(101, 2, NS, comm="x", maps=new, maps_at=3500)
    model.apply(ev("exec", hostpid=101, pid=2, comm="x", ts=4000), gen=7)
    assert model.procs[101].tombstones == []
    # a table read before the exec is the old program's: buried as ever
    model.seed_proc(102, 3, NS, comm="y", maps=new, maps_at=3500)
    model.apply(ev("exec", hostpid=102, pid=3, comm="z", ts=4000), gen=8)
    assert [(t.start, t.died) for _, t in model.procs[102].tombstones] == [(S, 8)]


def test_a_process_met_at_its_execs_rename_gets_the_pages_execve_wrote_once(model):
    """The controller meets a child first at its exec's rename record (the child ran before its
    parent's clone returned): /proc, read then, already shows the exec's table. The pages execve
    wrote on the new stack (the old generation) were reported `gone` on a tombstone of the live
    stack's very range."""
    from ckptrace.watch import Controller

    with _exec_d_sleep() as (child, lo, hi):
        prog = DrainProg()
        out: list[dict] = []
        ctl = Controller(prog, model, host=1, focus=None, emit=out.append)
        E, c = bpfload.abi().structs["ckpt_event"], bpfload.abi().consts
        ctl.on_record(E(ts=4, ns=NS, type=c["CKPT_EV_RENAME"], hostpid=child.pid, pid=7, comm=b"sleep"))
        ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_EXEC"], hostpid=child.pid, pid=7, seq=10, newgen=1,
                        comm=b"sleep"))
        top = (hi >> 12) - 1
        prog.pages = {child.pid: [(0, top & ~63, 1 << (top & 63)), (11, (top - 1) & ~63, 1 << ((top - 1) & 63))]}
        ctl.drain()
        assert ctl.failure is None
        dirty = [(e["start"], e["end"], e["pages"], e.get("gone", False)) for e in out if e["event"] == "dirty"]
        assert dirty == [(lo, hi, 2, False)]


def test_a_child_that_is_a_zombie_when_its_first_record_is_read_still_has_its_fork_first(model):
    """A short-lived child's exec record read while it is a zombie (exited, not reaped): /proc
    still names its parent, so the fork is reported before its exec (it came after, from the
    parent's clone exit). Nothing of it is tracked in the kernel."""
    import subprocess
    import time

    from ckptrace.watch import Controller

    me = os.getpid()
    model.seed_proc(me, 1, NS, comm="pytest")
    z = subprocess.Popen(["true"])
    try:
        while procfs_state(z.pid) != "Z":
            time.sleep(0.01)
        tracked = []

        class Prog(FakeProg):
            def track(self, hostpid, ns, pid=0):
                tracked.append(hostpid)

        out: list[dict] = []
        ctl = Controller(Prog(), model, host=1, focus=None, emit=out.append)
        E, c = bpfload.abi().structs["ckpt_event"], bpfload.abi().consts
        ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_EXEC"], hostpid=z.pid, pid=7, seq=10, newgen=1, comm=b"true"))
        ctl.on_record(E(ts=6, ns=NS, type=c["CKPT_EV_EXIT"], hostpid=z.pid, pid=7, code=0))
        ctl.on_record(E(ts=7, ns=NS, type=c["CKPT_EV_FORK"], hostpid=me, pid=1, a0=7, a1=z.pid))
        assert ctl.failure is None
        assert [(e["event"], e["pid"]) for e in out] == [("fork", 1), ("exec", 7), ("exit", 7)]
        assert z.pid not in tracked
    finally:
        z.wait()


def procfs_state(pid: int) -> str:
    from ckptrace.kernel import procfs

    return procfs.stat_fields(pid)[3]


def test_the_selection_stays_on_its_namespace_and_process_as_others_come_and_go(model):
    """Selected by identity: a namespace sorting before it (a reused inode) or a process before
    it in the tree going away does not move the highlight, nor what `d` would dump."""
    model.seed_proc(200, 1, NS + 10, comm="other")
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("fork", child=3, _childhost=102))
    sel = Selection()
    handle_key(sel, model, "right")  # the second namespace
    assert selected_ns(model, sel) == NS + 10
    handle_key(sel, model, "left")
    handle_key(sel, model, "down")
    handle_key(sel, model, "down")
    assert selected_proc(model, sel).hostpid == 102
    model.seed_proc(300, 1, NS - 10, comm="new")  # sorts first
    model.apply(ev("exit", hostpid=101, pid=2, code=0))
    model.tick(10)
    model.gc()
    assert selected_ns(model, sel) == NS and selected_proc(model, sel).hostpid == 102
    handle_key(sel, model, "up")
    assert selected_proc(model, sel).hostpid == 100


@pytest.mark.parametrize("width, height, count", [(80, 24, 14), (120, 40, 45)])
def test_many_namespaces_leave_room_for_the_rest_and_keep_the_selected_in_view(model, width, height, count):
    for i in range(1, count):
        model.seed_proc(1000 + i, 1, NS + i, comm=f"c{i}")
    sel = Selection(ns=NS + count - 1)
    out = text_of(render(model, sel, width=width, height=height), width=width, height=height)
    selected = [line for line in out.splitlines() if "▶" in line]
    assert len(selected) == 1 and str(NS + count - 1) in selected[0]
    assert f"namespaces ({count})" in out
    assert "memory of 1 c" in out and "recent events" in out


def test_a_pid_reused_by_the_same_parent_within_seconds_is_a_new_child(model):
    """A dead child still in the model (DEAD_SECONDS) whose fork was applied is not a late fork
    of itself: the same parent forking again and getting its pid back (pid_max wraps within
    seconds in a fork-heavy container) makes a new, live child with the parent's mappings."""
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("exit", hostpid=101, pid=2, code=0))
    model.apply(ev("fork", child=2, _childhost=101))
    child = model.procs[101]
    assert child.alive and child.vmas and child.ppid == 100


def test_choosing_a_process_in_the_first_namespace_pins_that_namespace(model):
    """No namespace chosen yet, the first is shown; choosing a process there (or asking for a
    dump) keeps that namespace when another one sorting before it appears."""
    model.apply(ev("fork", child=2, _childhost=101))
    sel = Selection()
    handle_key(sel, model, "down")
    model.seed_proc(300, 1, NS - 10, comm="new")
    assert selected_ns(model, sel) == NS and selected_proc(model, sel).hostpid == 101


def test_a_child_in_a_new_pid_namespace_already_reaped_does_not_live_on(model):
    """A CLONE_NEWPID child gone from /proc by the time its parent's fork record is read: its
    own records were unplaceable, and it used to stay a live process of the parent's namespace
    for good. The fork is reported; the child is dead (status unknown)."""
    from ckptrace.watch import CLONE_NEWPID, Controller

    out: list[dict] = []
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
    E, c = bpfload.abi().structs["ckpt_event"], bpfload.abi().consts
    gone = 2**22 + 4321  # above any pid_max
    ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_FORK"], hostpid=100, pid=1, a0=9, a1=gone, a2=CLONE_NEWPID))
    assert ctl.failure is None and [e["event"] for e in out] == ["fork"]
    assert not model.procs[gone].alive and model.procs[gone].code is None


def test_the_dump_message_keeps_the_image_path_in_view_at_80_columns(model):
    """At 80 columns the key hints cut the dump message's end: the image's path was lost."""
    path = "/var/tmp/ckptrace-4026532188-1764430000.img"
    sel = Selection(message=f"dumped 4026532188 to {path}")
    lines = text_of(render(model, sel, width=80, height=24), width=80, height=24).splitlines()
    assert path in lines[1]


def test_dump_stamps_are_not_writable_by_others_whatever_the_umask(tmp_path):
    """Anybody able to write a stamp could make every watch forget its dirty pages: the stamp and
    the directories made for it are 0644 / 0755 even under umask 000."""
    import stat

    from ckptrace import notify

    base = tmp_path / "run" / "ckptrace" / "dumps"
    old = os.umask(0)
    try:
        notify.dump_done(NS, base=str(base), stamp_ns=5)
    finally:
        os.umask(old)
    assert notify.last_dump(NS, base=str(base)) == 5
    assert stat.S_IMODE(os.stat(base / str(NS)).st_mode) == 0o644
    for d in (base, base.parent, base.parent.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d


def test_a_later_namespace_with_a_dead_ones_number_is_not_taken_for_it(model):
    """Once a namespace's init has exited the namespace is gone, and the kernel soon gives its
    inode number to another: `--pidns N` must not report that one's tasks as N's (it did, after
    saying N had no process left), and the all-namespaces view starts it afresh."""
    from ckptrace.watch import Controller

    E = bpfload.abi().structs["ckpt_event"]
    c = bpfload.abi().consts
    out = []
    ctl = Controller(FakeProg(), model, host=1, focus=NS, emit=out.append)
    ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_EXIT"], hostpid=100, hosttid=100, pid=1, code=9))
    ctl.on_record(E(ts=6, ns=NS, type=c["CKPT_EV_MMAP"], hostpid=os.getpid(), hosttid=os.getpid(), pid=1,
                    a0=0x7000, a1=P, a2=3, a3=0x22))
    assert ctl.failure is None
    assert [e["event"] for e in out] == ["exit"] and ctl.reused == 1
    assert os.getpid() not in model.procs

    # all namespaces: the old one's processes are forgotten, the new one's reported
    model.seed_proc(200, 1, NS + 1, comm="init")
    out.clear()
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
    ctl.on_record(E(ts=7, ns=NS + 1, type=c["CKPT_EV_EXIT"], hostpid=200, hosttid=200, pid=1, code=9))
    ctl.on_record(E(ts=8, ns=NS + 1, type=c["CKPT_EV_MMAP"], hostpid=os.getpid(), hosttid=os.getpid(), pid=1,
                    a0=0x7000, a1=P, a2=3, a3=0x22))
    assert ctl.failure is None
    assert [(e["event"], e["hostpid"]) for e in out] == [("exit", 200), ("mmap", os.getpid())]
    assert 200 not in model.procs and model.procs[os.getpid()].ns == NS + 1


def test_names_and_paths_are_shown_literally_never_as_markup_or_escapes(model):
    """A process named "[/]" made the dashboard raise MarkupError (rich read cells as markup) and
    watch end; "[heap]" showed as nothing. A comm with a newline or an escape sequence split plain
    lines and reached the reader's terminal."""
    from ckptrace.watch import _plain_line
    from ckptrace.watchview import event_line

    model.apply(ev("exec", comm="[/]"))
    model.apply(ev("fork", child=2, _childhost=101))
    model.apply(ev("exec", hostpid=101, pid=2, comm="a\nb\x1b[31m"))
    model.apply(ev("mmap", addr=0x1000000, len=4 * P, prot=3))
    next(v for v in model.procs[100].vmas if v.start == 0x1000000).path = "[heap]"
    out = text_of(render(model, Selection(), width=140, height=40))
    assert "[/]" in out and "[heap]" in out
    assert "a\\nb\\x1b[31m" in out and "\x1b" not in out
    e = {"event": "exec", "pid": 2, "hostpid": 101, "ns": NS, "ts": 1, "comm": "a\nb\x1b[31m"}
    assert "\n" not in _plain_line(e) and "\x1b" not in _plain_line(e) and "a\\nb\\x1b[31m" in _plain_line(e)
    assert "\n" not in event_line(e) and "\x1b" not in event_line(e)


def test_pages_of_a_later_namespace_with_a_dead_ones_number_do_not_make_it_that_one(model, monkeypatch):
    """The drain places the writers of unknown pages from /proc: a process of a later namespace
    given the focused one's number was placed in it, and from then on every event of its was
    reported as the dead namespace's. The all-namespaces view starts that namespace afresh."""
    from ckptrace import watch
    from ckptrace.watch import Controller

    E = bpfload.abi().structs["ckpt_event"]
    c = bpfload.abi().consts
    me = os.getpid()
    monkeypatch.setattr(watch.procfs, "ns_inode", lambda hostpid: NS)  # as /proc says of it

    class Draining(FakeProg):
        def drain_dirty(self):
            return {me: [(1, 0x7000 >> 18, 1)]}

    out = []
    ctl = Controller(Draining(), model, host=1, focus=NS, emit=out.append)
    ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_EXIT"], hostpid=100, hosttid=100, pid=1, code=9))
    ctl.drain()
    ctl.on_record(E(ts=6, ns=NS, type=c["CKPT_EV_MMAP"], hostpid=me, hosttid=me, pid=1, a0=0x7000, a1=P, a2=3, a3=0x22))
    assert ctl.failure is None
    assert me not in model.procs and [e["event"] for e in out] == ["exit"]
    assert model.unattributed == 0  # not ours: not a loss either

    model.seed_proc(200, 1, NS + 1, comm="init")
    monkeypatch.setattr(watch.procfs, "ns_inode", lambda hostpid: NS + 1)
    out.clear()
    ctl = Controller(Draining(), model, host=1, focus=None, emit=out.append)
    ctl.on_record(E(ts=7, ns=NS + 1, type=c["CKPT_EV_EXIT"], hostpid=200, hosttid=200, pid=1, code=9))
    ctl.drain()
    assert 200 not in model.procs and model.procs[me].ns == NS + 1


def test_event_lines_to_a_reader_that_stopped_reading_give_up_when_asked():
    """write(2) into a full pipe blocked, and Python restarted it after every signal: watch
    ignored SIGTERM and --duration, its programs loaded, until the reader went away."""
    from ckptrace.watch import JsonLines, Stop

    r, w = os.pipe()
    out = os.fdopen(w, "w")
    asked = []

    def give_up():
        asked.append(time.monotonic())
        return len(asked) >= 3

    lines = JsonLines(out, give_up)
    t0 = time.monotonic()
    with pytest.raises(Stop):
        for i in range(10_000):  # ~1 MB: more than a pipe holds
            lines({"event": "exit", "pid": i, "hostpid": i, "ns": NS, "ts": i, "code": 0})
        lines.flush()
    assert 0.2 < time.monotonic() - t0 < 5 and len(asked) == 3
    got = os.read(r, 1 << 20)
    assert len(got) >= 4096  # what the pipe could take was written first
    assert got.endswith(b"\n") and all(json.loads(line) for line in got.splitlines())  # whole lines only
    out.close()
    os.close(r)


def test_a_child_whose_records_were_unplaced_does_not_live_on_after_its_fork(model, monkeypatch):
    """A child that ran and exited before the controller could place it (its records unresolved:
    gone from /proc) was then made a live process by its parent's later fork record, which nothing
    ever ended: it kept its namespace, and the namespace's kernel slot, for good."""
    from ckptrace import watch
    from ckptrace.watch import Controller

    E = bpfload.abi().structs["ckpt_event"]
    c = bpfload.abi().consts
    monkeypatch.setattr(watch.procfs, "ns_inode", lambda hostpid, kind="pid": None)  # gone
    out = []
    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
    ctl.on_record(E(ts=5, ns=0, type=c["CKPT_EV_EXEC"], hostpid=4242, hosttid=4242, pid=0, comm=b"true"))
    ctl.on_record(E(ts=6, ns=0, type=c["CKPT_EV_EXIT"], hostpid=4242, hosttid=4242, pid=0, code=3))
    assert ctl.unresolved == 0 and out == []  # kept for the fork record
    ctl.on_record(E(ts=7, ns=NS, type=c["CKPT_EV_FORK"], hostpid=100, hosttid=100, pid=1, a0=2, a1=4242))
    assert ctl.failure is None
    assert not model.procs[4242].alive
    # in the parent's namespace (no CLONE_NEWPID): placed there with the pid the parent saw, the
    # fork first, then what the child did
    assert [(e["event"], e["pid"], e["ns"]) for e in out] == [("fork", 1, NS), ("exec", 2, NS), ("exit", 2, NS)]
    assert out[2]["code"] == 3 and ctl.unresolved == 0
    # a child that went to another namespace: its records stay unplaced, and count
    ctl.on_record(E(ts=8, ns=0, type=c["CKPT_EV_EXEC"], hostpid=4343, hosttid=4343, pid=0, comm=b"x"))
    ctl.on_record(E(ts=9, ns=NS, type=c["CKPT_EV_FORK"], hostpid=100, hosttid=100, pid=1, a0=3, a1=4343,
                    a2=0x20000000))
    assert ctl.unresolved == 1 and not model.procs[4343].alive
    # one whose fork record never comes: counted when it expires, or when watch stops
    ctl.on_record(E(ts=10, ns=0, type=c["CKPT_EV_EXEC"], hostpid=4444, hosttid=4444, pid=0, comm=b"y"))
    assert ctl.unresolved == 1
    ctl.expire_unplaced()
    assert ctl.unresolved == 2 and ctl.unplaced_count == 0


def test_after_the_focused_namespace_ended_unknown_writers_are_not_losses(model, monkeypatch):
    """--pidns N once N had ended: pages written by the processes of later namespaces given N's
    number were counted `unattributed`, and a `lost` line came every second for a namespace gone."""
    from ckptrace import watch
    from ckptrace.watch import Controller

    E = bpfload.abi().structs["ckpt_event"]
    c = bpfload.abi().consts
    monkeypatch.setattr(watch.procfs, "ns_inode", lambda hostpid, kind="pid": None)

    class Draining(FakeProg):
        def drain_dirty(self):
            return {4242: [(1, 0x7000 >> 18, 0xFF)]}

    ctl = Controller(Draining(), model, host=1, focus=NS, emit=lambda ev: None)
    ctl.drain()
    assert model.unattributed == 8  # N alive: an unknown writer of N's, gone before it was placed
    ctl.on_record(E(ts=5, ns=NS, type=c["CKPT_EV_EXIT"], hostpid=100, hosttid=100, pid=1, code=0))
    ctl.drain()
    assert model.unattributed == 8


def test_ended_namespaces_the_model_forgot_are_forgotten_too(model):
    """`ended` grew by one inode per namespace that ever ended (1170 after four minutes of churn),
    and gc looked through it every period."""
    from ckptrace.watch import Controller

    class Gc(FakeProg):
        ns_slots: dict = {}

    ctl = Controller(Gc(), model, host=1, focus=None, emit=lambda ev: None)
    ctl.ended |= {NS, 4026539999}  # NS is in the model, the other long forgotten
    ctl.gc()
    assert ctl.ended == {NS}
    focused = Controller(Gc(), model, host=1, focus=4026539999, emit=lambda ev: None)
    focused.ended.add(4026539999)
    focused.gc()
    assert focused.ended == {4026539999}  # the focus keeps its guard


def test_exited_tasks_give_way_to_live_ones_when_the_tree_does_not_fit(model):
    """A shell loop's exited children (kept a few seconds) filled the task panel and pushed the
    live child, forked last, out of it, with nothing saying rows were hidden. Live ones stay in
    view and a last row counts what is not shown."""
    for i in range(2, 40):
        model.apply(ev("fork", child=i, _childhost=100 + i))
        model.apply(ev("exit", hostpid=100 + i, pid=i, code=0))
    model.apply(ev("fork", child=40, _childhost=140))
    model.apply(ev("exec", hostpid=140, pid=40, comm="livechild"))
    out = text_of(render(model, Selection(), width=120, height=30), width=120, height=30)
    assert "livechild" in out
    shown = sum(1 for line in out.splitlines() if "†0" in line)
    assert shown < 38 and f"… {38 - shown} exited" in out
    model.apply(ev("exit", hostpid=140, pid=40, code=3))
    for i in range(41, 80):  # more live ones than rows: a window around the selection, and "more"
        model.apply(ev("fork", child=i, _childhost=100 + i))
    out = text_of(render(model, Selection(), width=120, height=30), width=120, height=30)
    assert re.search(r"… \d+ more", out), out


def test_a_child_placed_from_proc_at_its_first_record_gets_its_fork_first(model):
    """In a namespace made while an all-namespaces watch runs, the first children's records come
    unplaced (ns 0: the kernel side did not know the namespace yet) and the controller places
    them from /proc. The child's exec came out before its parent's fork (that path seeded the
    child without reporting the fork first); now the fork comes first, once."""
    from ckptrace.kernel import procfs
    from ckptrace.watch import Controller

    me = os.getpid()
    real = procfs.ns_inode(me)
    model.seed_proc(me, 1, real, comm="pytest")
    child = subprocess.Popen(["sleep", "30"])
    try:
        while "sleep" not in os.readlink(f"/proc/{child.pid}/exe"):
            __import__("time").sleep(0.01)
        out = []
        ctl = Controller(FakeProg(), model, host=1, focus=None, emit=out.append)
        E = bpfload.abi().structs["ckpt_event"]
        c = bpfload.abi().consts
        ctl.on_record(E(ts=6, ns=0, pid=0, type=c["CKPT_EV_DISCOVER"], hostpid=child.pid))
        ctl.on_record(E(ts=7, ns=0, pid=0, type=c["CKPT_EV_EXEC"], hostpid=child.pid, seq=10, newgen=1,
                        comm=b"sleep"))
        ctl.on_record(E(ts=8, ns=real, pid=1, type=c["CKPT_EV_FORK"], hostpid=me, a0=2, a1=child.pid))
        assert ctl.failure is None
        assert [(e["event"], e["hostpid"]) for e in out] == [("fork", me), ("exec", child.pid)]
        assert out[0]["child"] == model.procs[child.pid].pid and out[0]["ts"] == 6
    finally:
        child.kill()
        child.wait()


def test_without_write_faults_the_dashboard_says_off_rather_than_nothing_written(model):
    """`--no-faults` traces no write fault, yet the dashboard showed every dirty column as 0 and
    every heat bar at 0.0 %: as if nothing had been written. They say "off" instead."""
    model.faults = False
    out = text_of(render(model, Selection(), width=140, height=40))
    assert "0.0%" not in out
    namespaces_row = next(line for line in out.splitlines() if str(NS) in line and "init" in line)
    assert namespaces_row.rstrip(" │").endswith("off"), namespaces_row
    heap_row = next(line for line in out.splitlines() if "[heap]" in line and "0x600000" in line)
    assert heap_row.count("off") == 2, heap_row  # dirty and heat
    model.faults = True
    assert "0.0%" in text_of(render(model, Selection(), width=140, height=40))


def test_pieces_the_kernel_merged_are_joined_as_proc_shows_them_with_every_page(model):
    """mmap 10 pages, mprotect pages 3-5 read-only and back: /proc shows one mapping, the table
    kept three and `dirty` named three ranges. Joined as /proc shows them, pages written in any
    generation before (in a piece, before or between the mprotects) land on the one mapping."""
    X = 0x30000000
    model.apply(ev("mmap", addr=X, len=10 * P, prot=3), gen=10)
    model.apply(ev("mprotect", addr=X + 3 * P, len=3 * P, prot=1), gen=11)
    model.apply(ev("mprotect", addr=X + 3 * P, len=3 * P, prot=3), gen=12)
    p = model.procs[100]
    assert len([v for v in p.vmas if X <= v.start < X + 10 * P]) == 3
    # and a neighbour mapped next to it, same protection: the kernel merged it too
    model.apply(ev("mmap", addr=X + 10 * P, len=2 * P, prot=3), gen=13)
    model.apply(ev("mprotect", addr=X + 11 * P, len=P, prot=1), gen=14)  # (one of its pages, and back)
    model.apply(ev("mprotect", addr=X + 11 * P, len=P, prot=3), gen=15)
    assert model.merge_maps(p, [(0x400000, 0x401000, 5, "/bin/init"), (0x600000, 0x700000, 3, "[heap]"),
                                (X, X + 13 * P, 3, "")]) == 0  # /proc's does not match: left alone
    assert model.merge_maps(p, [(X, X + 12 * P, 3, "")]) == 4
    assert (X, X + 12 * P, 3) in spans(p)
    base = X >> 12
    out = model.add_dirty_masks(100, [(10, base, 0b1001), (11, base, 0b10000), (12, base, 0b1000000000),
                                      (13, base, 0b100000), (13, base, 1 << 11), (15, base, 1 << 10)], ts=1)
    assert [(e["start"], e["end"], e["pages"], e.get("gone", False)) for e in out] == [(X, X + 12 * P, 7, False)]
    assert p.find(X).dirty == {base, base + 3, base + 4, base + 5, base + 9, base + 10, base + 11}


def test_an_mprotect_has_the_table_joined_at_a_later_drain_once_a_second_at_most(model, monkeypatch):
    """The controller asks /proc after an mprotect or mremap (the kernel may have merged), once
    the rings are read up, and not more than once a second per process."""
    from ckptrace import watch
    from ckptrace.watch import Controller

    X = 0x30000000
    reads = []
    monkeypatch.setattr(watch, "_maps", lambda hostpid: reads.append(hostpid) or [(X, X + 10 * P, 3, "")])
    prog = DrainProg()
    ctl = Controller(prog, model, host=1, focus=None, emit=lambda e: None)
    E, c = bpfload.abi().structs["ckpt_event"], bpfload.abi().consts
    ctl.on_record(E(ts=1, ns=NS, pid=1, hostpid=100, type=c["CKPT_EV_MMAP"], a0=X, a1=10 * P, a2=3, a3=0x22,
                    seq=9, newgen=1))
    for seq, prot in ((10, 1), (11, 3)):
        ctl.on_record(E(ts=seq, ns=NS, pid=1, hostpid=100, type=c["CKPT_EV_MPROTECT"], a0=X + 3 * P, a1=3 * P,
                        a2=prot, seq=seq, newgen=1))
    assert ctl.failure is None
    ctl.drain()
    assert reads == [100] and (X, X + 10 * P, 3) in spans(model.procs[100])
    ctl.on_record(E(ts=20, ns=NS, pid=1, hostpid=100, type=c["CKPT_EV_MPROTECT"], a0=X, a1=P, a2=1, seq=20,
                    newgen=1))
    ctl.drain()
    assert reads == [100] and 100 in ctl.merge_due  # within the second: it waits
    ctl.merge_read[100] -= 2
    ctl.drain()
    assert reads == [100, 100] and not ctl.merge_due


def test_a_focused_namespace_that_ended_says_so_once_its_dead_are_forgotten(model):
    """`--pidns N` on the dashboard: once N's dead had aged out (DEAD_SECONDS) the model forgot
    N and the table read "(no watched namespace yet)", wrong for one watched that ended; the
    stderr line streams print (focus_gone) was never said either."""
    from ckptrace.watch import Controller
    from ckptrace.watchmodel import DEAD_SECONDS

    model.focus = NS
    ctl = Controller(FakeProg(), model, host=1, focus=NS, emit=lambda ev: None)
    assert not ctl.focus_gone()
    model.apply(ev("exit", code=3))  # its init: the kernel ends the rest with it
    assert ctl.focus_gone()
    row = next(line for line in text_of(render(model, Selection(), width=120, height=30), width=120,
                                        height=30).splitlines() if str(NS) in line)
    assert "ended" in row, row  # at once, before the model's housekeeping says so
    model.tick(DEAD_SECONDS + 1)
    model.gc()
    assert not model.procs and model.namespaces[NS].ended
    assert ctl.focus_gone()  # also with the dead forgotten (the dashboard says it as it exits)
    out = text_of(render(model, Selection(), width=120, height=30), width=120, height=30)
    row = next(line for line in out.splitlines() if str(NS) in line)
    assert "ended" in row and "no watched namespace" not in out, out


def test_namespaces_other_than_the_focused_one_are_still_forgotten_once_ended(model):
    from ckptrace.watchmodel import DEAD_SECONDS

    model.apply(ev("exit", code=0))
    model.tick(DEAD_SECONDS + 1)
    model.gc()
    assert NS not in model.namespaces
    assert "no watched namespace" in text_of(render(model, Selection(), width=120, height=30), width=120, height=30)


def test_shared_mappings_show_s_and_private_ones_p_as_proc_maps_does(model):
    """The memory map showed a MAP_SHARED mapping as `rw-` like a private one; /proc/PID/maps
    says `rw-s`. Known from /proc's table and from the mmap's flags, kept through a split, a
    move and a fork."""
    from ckptrace.watch import Controller

    ctl = Controller(FakeProg(), model, host=1, focus=None, emit=lambda ev: None)
    E = bpfload.abi().structs["ckpt_event"]
    mmap_type = bpfload.abi().consts["CKPT_EV_MMAP"]
    for addr, flags in ((0x7000000, 0x01), (0x7100000, 0x22), (0x7200000, 0x03)):  # shared, private, validate
        ctl.on_record(E(ts=5, ns=NS, type=mmap_type, hostpid=100, hosttid=100, pid=1, tid=1,
                        a0=addr, a1=2 * P, a2=3, a3=flags))
    assert ctl.failure is None
    model.apply(ev("mprotect", addr=0x7000000, len=P, prot=1))
    model.apply(ev("mremap", addr=0x7200000, len=2 * P, new_addr=0x7300000, new_len=2 * P))
    model.set_maps(model.procs[100], [(0x400000, 0x401000, 5, "/bin/init"), (0x500000, 0x501000, 1, "/memfd:x", True),
                                      *[(v.start, v.end, v.prot, v.path, v.shared) for v in model.procs[100].vmas
                                        if v.start >= 0x7000000]])
    model.apply(ev("fork", child=2, _childhost=101))
    for hostpid in (100, 101):
        shared = {v.start: v.shared for v in model.procs[hostpid].vmas}
        assert shared == {0x400000: False, 0x500000: True, 0x7000000: True, 0x7001000: True, 0x7100000: False,
                          0x7300000: True}, (hostpid, shared)
    out = text_of(render(model, Selection(), width=140, height=40))
    perms = {m.group(1): m.group(2) for m in re.finditer(r"(0x[0-9a-f]+) +(?:0x[0-9a-f]+ +)?([r-][w-][x-][sp]) ", out)}
    assert perms == {"0x400000": "r-xp", "0x500000": "r--s", "0x7000000": "r--s", "0x7001000": "rw-s",
                     "0x7100000": "rw-p", "0x7300000": "rw-s"}, perms


def test_the_namespace_table_says_it_counts_processes_not_threads(model):
    """Its `tasks` column counted processes while `ckptrace ls` counts threads as tasks: the same
    namespace read 1 here and 2 there. The header says what is counted."""
    out = text_of(render(model, Selection(), width=140, height=40))
    header = next(line for line in out.splitlines() if "pid ns" in line)
    assert "procs" in header and "tasks" not in header, header
    assert "processes" in out and "─ tasks ─" not in out  # the tree's panel too


def test_a_dump_outcome_leaves_the_header_after_a_while_and_the_keys_show_whole_again(model):
    """After `d` the "dumped ... to ..." message stayed in the header's second line for the
    rest of the session, and at 80 columns the key help behind it was cut. An outcome now goes
    after MESSAGE_SECONDS (the state's clock: render stays pure); a dump still running is said
    until its outcome replaces it."""
    import sys

    from ckptrace.watch import BackgroundDump
    from ckptrace.watchview import MESSAGE_SECONDS

    def second_line(sel, now):
        return text_of(render(model, sel, width=80, height=24, now=now), width=80, height=24).splitlines()[1]

    path = "/var/tmp/ckptrace-4026532188-1764430000.img"
    sel = Selection()
    sel.tell(f"dumping 4026532188 to {path}", 1000.0, lasting=True)
    assert path in second_line(sel, 1000.0 + 10 * MESSAGE_SECONDS)
    sel.tell(f"dumped 4026532188 to {path}", 1000.0)
    assert path in second_line(sel, 1000.0 + MESSAGE_SECONDS - 1)
    line = second_line(sel, 1000.0 + MESSAGE_SECONDS)
    assert "dumped" not in line and "q quit" in line, line

    dump = BackgroundDump([sys.executable, "-c", "import time; time.sleep(0.3)"])
    assert not dump.running
    dump.start(4026532188)
    assert dump.running  # what makes its message last
    deadline = time.monotonic() + 10
    while dump.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not dump.running


@pytest.mark.parametrize("width", [70, 80, 100])
def test_the_heat_bar_narrows_before_the_path_is_cut(model, width):
    """docs/watch.md: below 110 columns the map drops `end`, then narrows its heat bar, before
    anything else. At 70 columns the path read `/us…` while the bar was still 16 wide."""
    from ckptrace.watchview import BAR

    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    model.seed_proc(100, 1, NS, maps=[(0x7f0000000000, 0x7f0000100000, 5, libc)])
    model.add_dirty(100, [0x7f0000000000], ts=1)
    lines = text_of(render(model, Selection(), width=width, height=30), width=width, height=30).splitlines()
    row = next(line for line in lines if "0x7f0000000000" in line)
    assert libc[:11] in row, row  # "/usr/lib/x8…" at least
    bar = row.count("█") + row.count("·")
    assert 5 <= bar < BAR or (width == 100 and bar == BAR), row  # (100 columns: the whole bar and path fit)
    assert all(len(line) <= width for line in lines)
