"""An independent reader of the seed's layout (tests/indep/ckpt_read.c: the 2011 checkpoint/restart
patch's structs, re-declared in C, no code or tables shared with ckptrace) walks our images.

It reads from a pipe, skips record types the seed does not define (our extensions) by `len`, and
must agree with our reader (`ckptrace.image.reader.read_image`) on every record's index, offset,
type and len and on the counts of tasks, VMAs, pages, files and objrefs; it must reject corrupt
images, naming the record. Synthetic images come from tests/imagegen.py, real ones from
`ckptrace dump` of real workloads in real pid namespaces."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest

import imagegen
from ckptrace.errors import ImageError
from ckptrace.image.reader import File, Mm, read_image
from ckptrace.image.records import AT_VECTOR_SIZE, RecType
from ckptrace.image.stream import ImageWriter, write_header, write_tail

HERE = os.path.dirname(__file__)
SRC = os.path.join(HERE, "indep", "ckpt_read.c")
CLI = [sys.executable, "-m", "ckptrace"]
SUMMARY = re.compile(r"records=(\d+) tasks=(\d+) vmas=(\d+) pages=(\d+) files=(\d+) objrefs=(\d+)")
# x86_64's AT_VECTOR_SIZE, 2 * (AT_VECTOR_SIZE_BASE 22 + AT_VECTOR_SIZE_ARCH 3 + 1), from the
# kernel headers rather than from ckptrace (the assert below says they agree).
X86_64_AT_VECTOR_SIZE = 52


def gcc(tmp_path_factory, src: str, name: str, *extra: str) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing")
    out = str(tmp_path_factory.mktemp(name) / name)
    subprocess.run(["gcc", *extra, "-o", out, src], check=True)
    return out


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> str:
    return gcc(tmp_path_factory, SRC, "ckpt_read", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1")


def run_reader(reader: str, data: bytes, *args: str) -> subprocess.CompletedProcess:
    """Feed `data` through a pipe (stdin), as from a socket or `ckptrace dump -o -`."""
    return subprocess.run([reader, "-A", str(X86_64_AT_VECTOR_SIZE), *args], input=data,
                          capture_output=True, timeout=30)


def ours(data: bytes) -> tuple[list[tuple[int, int, int, int]], dict[str, int]]:
    """Our reader's view: (index, offset, type, len) of every record, and the counts."""
    lines: list[tuple[int, int, int, int]] = []
    img = read_image(io.BytesIO(data), on_record=lambda r: lines.append((r.index, r.offset, int(r.type), r.length)))
    objs = img.objects.values()
    counts = dict(records=img.records, tasks=len(img.tasks),
                  vmas=sum(len(o.vmas) for o in objs if isinstance(o, Mm)), pages=img.page_count,
                  files=sum(isinstance(o, File) for o in objs), objrefs=len(img.objects))
    return lines, counts


def theirs(out: bytes) -> tuple[list[tuple[int, int, int, int]], dict[str, int]]:
    text = out.decode().splitlines()
    m = SUMMARY.fullmatch(text[-1])
    assert m, text[-1:]
    keys = ("records", "tasks", "vmas", "pages", "files", "objrefs")
    lines = [tuple(int(x) for x in line.split()) for line in text[:-1]]
    return lines, dict(zip(keys, (int(x) for x in m.groups())))


def assert_agree(reader: str, data: bytes) -> dict[str, int]:
    p = run_reader(reader, data, "-v")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr == b""
    their_lines, their_counts = theirs(p.stdout)
    our_lines, our_counts = ours(data)
    assert their_counts == our_counts
    assert their_lines == our_lines
    assert their_counts["records"] == len(our_lines)
    # Without -v: the summary line only.
    q = run_reader(reader, data)
    assert q.returncode == 0 and q.stdout.decode().splitlines() == p.stdout.decode().splitlines()[-1:]
    return their_counts


def assert_rejects(reader: str, data: bytes, index: int, offset: int, what: str) -> str:
    p = run_reader(reader, data)
    assert p.returncode == 1, (p.stdout, p.stderr)
    msg = p.stderr.decode()
    assert f"record {index} at offset {offset}" in msg, msg
    assert re.search(what, msg), msg
    return msg


def records(data: bytes):
    recs = []
    read_image(io.BytesIO(data), on_record=recs.append)
    return recs


def first(recs, t: RecType, pred=lambda r: True):
    return next(r for r in recs if r.type == t and pred(r))


def read_back(f) -> bytes:
    with f:
        f.seek(0)
        return f.read()


def with_u64(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<Q", value) + data[at + 8:]


def with_s32(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<i", value) + data[at + 4:]


# -- synthetic images --------------------------------------------------------------------------

def test_constants_match_the_kernel_headers():
    assert AT_VECTOR_SIZE == X86_64_AT_VECTOR_SIZE


@pytest.mark.parametrize("kw", [dict(), dict(extra_task=False), dict(pages=0), dict(pages=16), dict(zombie={}),
                               dict(thread_creds=dict(uid=65534, euid=65534, suid=65534, fsuid=65534, groups=[7]))],
                         ids=["three-tasks", "one-task", "no-pages", "16-pages", "zombie", "thread-creds"])
def test_synthetic_images_agree(reader, kw):
    data = imagegen.build(**kw)
    counts = assert_agree(reader, data)
    assert counts["tasks"] == (3 if kw.get("extra_task", True) else 1) + ("zombie" in kw)


def test_unknown_record_types_are_skipped_by_len(reader):
    """What an independent reader does with our extensions: a record of a type it has never
    heard of is stepped over by its len."""
    data = imagegen.build(extra_task=False)
    tree = first(records(data), RecType.TREE)
    cut = tree.offset + tree.length
    odd = struct.pack("<II", 777, 8 + 13) + b"x" * 13
    p = run_reader(reader, data[:cut] + odd + data[cut:], "-v")
    assert p.returncode == 0, p.stderr.decode()
    lines, counts = theirs(p.stdout)
    assert (tree.index + 1, cut, 777, 21) in lines
    assert counts["records"] == ours(data)[1]["records"] + 1


def test_reads_a_file_argument_too(reader, tmp_path):
    data = imagegen.build()
    path = tmp_path / "x.img"
    path.write_bytes(data)
    p = subprocess.run([reader, "-A", str(X86_64_AT_VECTOR_SIZE), str(path)], capture_output=True)
    assert p.returncode == 0 and SUMMARY.fullmatch(p.stdout.decode().strip())


# -- corrupt images: both readers refuse, the C one names the record ----------------------------

def both_reject(reader, data, index, offset, what):
    with pytest.raises(ImageError):
        read_image(io.BytesIO(data))
    return assert_rejects(reader, data, index, offset, what)


def test_bad_header_magic(reader):
    data = imagegen.build()
    bad = with_u64(data, 8, 0x00FEED0CC0A2D201)
    both_reject(reader, bad, 0, 0, "bad header magic")


def test_bad_tail_magic_and_data_after_tail(reader):
    data = imagegen.build()
    tail = records(data)[-1]
    assert tail.type == RecType.TAIL
    both_reject(reader, with_u64(data, tail.offset + 8, 1), tail.index, tail.offset, "bad tail magic")
    both_reject(reader, data + b"\0", tail.index + 1, len(data), "data after TAIL")


def test_truncated_images(reader):
    data = imagegen.build()
    recs = records(data)
    page = first(recs, RecType.PAGE, lambda r: r.length > 16)
    tail = recs[-1]
    # At a record boundary (no TAIL), inside a header, inside a struct, inside page data.
    both_reject(reader, data[:tail.offset], tail.index, tail.offset, "end of input before TAIL")
    both_reject(reader, data[:tail.offset + 5], tail.index, tail.offset, "truncated record header")
    both_reject(reader, data[:page.offset + 12], page.index, page.offset, "truncated PAGE")
    both_reject(reader, data[:page.offset + 16 + 4096 + 7], page.index, page.offset, "truncated PAGE data")
    both_reject(reader, b"", 0, 0, "end of input before TAIL")


def test_page_outside_its_vma(reader):
    data = imagegen.build()
    recs = records(data)
    page = first(recs, RecType.PAGE, lambda r: r.length > 16)
    vma = max((r for r in recs if r.type == RecType.VMA and r.offset < page.offset), key=lambda r: r.offset)
    end = vma.fields["vm_end"]
    both_reject(reader, with_u64(data, page.offset + 8, end), page.index, page.offset, "outside VMA")
    both_reject(reader, with_u64(data, page.offset + 8, vma.fields["vm_start"] - 4096), page.index,
                page.offset, "outside VMA")
    # Ending past the VMA: the run's last page pokes out.
    n = (page.length - 16) // 4096
    both_reject(reader, with_u64(data, page.offset + 8, end - (n - 1) * 4096), page.index, page.offset,
                "outside VMA")
    both_reject(reader, with_u64(data, page.offset + 8, vma.fields["vm_start"] + 1), page.index,
                page.offset, "not page aligned|outside VMA")


def test_vma_without_closing_page(reader):
    data = imagegen.build()
    recs = records(data)
    end = first(recs, RecType.PAGE, lambda r: r.fields["vaddr"] == 2 ** 64 - 1)
    nxt = recs[end.index + 1]
    both_reject(reader, data[:end.offset] + data[end.offset + 16:], nxt.index - 1, nxt.offset - 16,
                "no closing PAGE")


def test_objref_used_before_its_objref_record(reader):
    data = imagegen.build()
    recs = records(data)
    # The first FILE_DESC names file 2; file 5 is introduced later in the same table.
    fd = first(recs, RecType.FILE_DESC)
    assert fd.fields["fd_objref"] == 2
    later = first(recs, RecType.OBJREF, lambda r: r.fields["objtype"] == 2 and r.offset > fd.offset)
    both_reject(reader, with_s32(data, fd.offset + 8, later.fields["objref"]), fd.index, fd.offset,
                "used before an OBJREF")
    both_reject(reader, with_s32(data, fd.offset + 8, 99), fd.index, fd.offset, "used before an OBJREF")
    # Right number, wrong kind: the file table's objref where a file is wanted.
    both_reject(reader, with_s32(data, fd.offset + 8, 1), fd.index, fd.offset, "is a file table, not a file")
    objs = first(recs, RecType.TASK_OBJS)
    both_reject(reader, with_s32(data, objs.offset + 12, 2), objs.index, objs.offset, "is a file, not a mm")


def test_repeated_objref(reader):
    data = imagegen.build()
    recs = records(data)
    second = [r for r in recs if r.type == RecType.OBJREF][1]
    both_reject(reader, with_s32(data, second.offset + 12, 1), second.index, second.offset, "is not new")


@pytest.mark.parametrize("objref", [0, -5])
def test_an_objref_that_is_not_positive_is_named_invalid(objref):
    """Not "is not new" (it never could be): objrefs start at 1."""
    data = imagegen.build()
    second = [r for r in records(data) if r.type == RecType.OBJREF][1]
    with pytest.raises(ImageError, match=f"objref {objref} is not a valid objref"):
        read_image(io.BytesIO(with_s32(data, second.offset + 12, objref)))


def test_seed_struct_with_tail_padding_is_refused(reader):
    """FILE_TABLE is 12 bytes and FILE_DESC 20 (no tail padding: all their members are 4-byte);
    a writer that padded them to 8 would be caught."""
    data = imagegen.build()
    recs = records(data)
    for t, size in ((RecType.FILE_TABLE, 12), (RecType.FILE_DESC, 20)):
        r = first(recs, t)
        assert r.length == size
        padded = data[:r.offset] + struct.pack("<II", int(t), size + 4) + data[r.offset + 8:r.offset + size] \
            + b"\0" * 4 + data[r.offset + size:]
        both_reject(reader, padded, r.index, r.offset, f"len {size + 4}, the seed's struct is {size} bytes")


def test_header_version_must_be_linux_version_code_bytes(reader):
    data = imagegen.build(extra_task=False)
    assert_rejects(reader, struct.pack("<H", 256).join((data[:22], data[24:])), 0, 0,
                   "does not fit LINUX_VERSION_CODE")


def image_for_release(release: str) -> bytes:
    f = tempfile.TemporaryFile()
    wr = ImageWriter(f.fileno())
    write_header(wr, time=1, uts=(release, "#1 SMP", "x86_64"), xstate_size=imagegen.XSTATE, xcr0=0xE7)
    wr.record(RecType.TREE, dict(nr_tasks=1), [dict(pid=1, tgid=1, ppid=0, pgid=1, sid=1, hostpid=9)])
    imagegen.task(wr, 1, 1, first=True, pages=1)
    write_tail(wr)
    return read_back(f)


def test_header_version_of_an_ordinary_release(reader):
    assert_agree(reader, image_for_release("6.18.44-test"))
    assert_agree(reader, image_for_release("6.18"))


def test_many_and_large_objrefs(reader):
    """Objrefs need only be new and positive: many of them, far apart, up to 2**31-1."""
    from ckptrace.image.records import FileType, ObjType

    f = tempfile.TemporaryFile()
    wr = ImageWriter(f.fileno())
    write_header(wr, time=1, uts=("6.18.0", "#1 SMP", "x86_64"), xstate_size=imagegen.XSTATE, xcr0=0xE7)
    wr.record(RecType.TREE, dict(nr_tasks=1), [dict(pid=1, tgid=1, ppid=0, pgid=1, sid=1, hostpid=9)])
    wr.record(RecType.TASK, dict(state=1))
    wr.record(RecType.STRING, payload=b"many".ljust(16, b"\0"))
    wr.record(RecType.THREAD, dict(tid=1, tgid=1))
    table = 2 ** 31 - 1
    wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE_TABLE, objref=table))
    wr.record(RecType.FILE_TABLE, dict(fdt_nfds=300))
    for fd in range(300):
        ref = 7 + fd * 7_000_003
        wr.record(RecType.OBJREF, dict(objtype=ObjType.FILE, objref=ref))
        wr.record(RecType.FILE, dict(f_type=FileType.REGULAR, f_mode=1))
        wr.record(RecType.FILE_DESC, dict(fd_objref=ref, fd_descriptor=fd))
    imagegen.mm(wr, 3, exe_ref=0, pages=1, seed=1)
    wr.record(RecType.TASK_OBJS, dict(files_objref=table, mm_objref=3))
    wr.record(RecType.CPU, {}, bytes(imagegen.XSTATE))
    wr.record(RecType.TASK_CREDS, dict(ngroups=0), [])
    wr.record(RecType.TASK_SIGHAND, dict(nsig=0), [])
    wr.record(RecType.TASK_RLIMITS, dict(nlimits=0), [])
    wr.record(RecType.TASK_PROC, dict(), b"/\0/\0")
    write_tail(wr)
    data = read_back(f)
    c = assert_agree(reader, data)
    assert c["files"] == 300 and c["objrefs"] == 302


def test_header_version_of_a_sublevel_above_255(reader):
    assert_agree(reader, image_for_release("4.14.300"))


# -- real images: `ckptrace dump` of real workloads, through a pipe ------------------------------

@pytest.fixture(scope="module")
def ckwork(tmp_path_factory):
    return gcc(tmp_path_factory, os.path.join(HERE, "dumpwork", "ckwork.c"), "ckwork", "-O1", "-pthread")


@pytest.fixture(scope="module")
def refwork(tmp_path_factory):
    return gcc(tmp_path_factory, os.path.join(HERE, "workloads", "refwork.c"), "refwork", "-O1", "-pthread")


def dump_through_pipe(reader: str, pid: int, tmp_path) -> tuple[bytes, subprocess.CompletedProcess]:
    """`ckptrace dump -o - | tee IMG | ckpt_read -v`: the C reader reads the dump's stream as it is
    written; our reader reads the same bytes from tee's copy."""
    img = tmp_path / "pipe.img"
    out, err = tmp_path / "reader.out", tmp_path / "reader.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        dump = subprocess.Popen(CLI + ["dump", "--pid", str(pid), "--quiet", "-o", "-"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        tee = subprocess.Popen(["tee", str(img)], stdin=dump.stdout, stdout=subprocess.PIPE)
        dump.stdout.close()
        rd = subprocess.Popen([reader, "-v", "-A", str(X86_64_AT_VECTOR_SIZE)], stdin=tee.stdout, stdout=fo,
                              stderr=fe)
        tee.stdout.close()
        dump_err = dump.stderr.read()
        assert dump.wait(timeout=60) == 0, dump_err.decode()
        assert tee.wait(timeout=60) == 0
        rc = rd.wait(timeout=60)
    return img.read_bytes(), subprocess.CompletedProcess(rd.args, rc, out.read_bytes(), err.read_bytes())


def check_real(reader, pid, tmp_path) -> dict[str, int]:
    data, p = dump_through_pipe(reader, pid, tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    their_lines, their_counts = theirs(p.stdout)
    our_lines, our_counts = ours(data)
    assert their_counts == our_counts
    assert their_lines == our_lines
    # And the same image read back from a file agrees record for record.
    assert_agree(reader, data)
    return their_counts


@pytest.mark.kernel
def test_real_dump_of_ckwork(reader, ckwork, pidns, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    w = pidns([ckwork, str(d)], ready_file=str(d / "ready"), settle=0.2)
    c = check_real(reader, w.init, tmp_path)
    assert c["tasks"] == 5 and c["pages"] > 64 and c["files"] >= 8


@pytest.mark.kernel
def test_real_dump_of_refwork(reader, refwork, pidns, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    w = pidns([refwork, str(d)], ready_file=str(d / "ready"), settle=0.2, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c = check_real(reader, w.init, tmp_path)
    assert c["tasks"] == 5 and c["pages"] >= 3 * 512


@pytest.mark.kernel
def test_real_dump_of_a_shell_and_its_children(reader, pidns, tmp_path):
    w = pidns(["sh", "-c", "sleep 1000 & sleep 1000 & exec sleep 1000"], settle=0.3)
    c = check_real(reader, w.init, tmp_path)
    assert c["tasks"] == 3


@pytest.mark.kernel
def test_real_dump_via_decode_json(reader, ckwork, pidns, tmp_path):
    """The same comparison against the CLI's `decode --json` instead of the library."""
    import json

    d = tmp_path / "w"
    d.mkdir()
    w = pidns([ckwork, str(d)], ready_file=str(d / "ready"), settle=0.2)
    data, p = dump_through_pipe(reader, w.init, tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    dec = subprocess.run(CLI + ["decode", "--json", "-"], input=data, capture_output=True, timeout=60)
    assert dec.returncode == 0, dec.stderr.decode()
    docs = [json.loads(line) for line in dec.stdout.decode().splitlines()]
    their_lines, counts = theirs(p.stdout)
    assert their_lines == [(x["index"], x["offset"], x["type_id"], x["len"]) for x in docs]
    assert counts["records"] == len(docs)
    assert counts["pages"] == sum((x["len"] - 16) // 4096 for x in docs if x["type"] == "PAGE")
    assert counts["vmas"] == sum(x["type"] == "VMA" for x in docs)
    assert counts["files"] == sum(x["type"] == "FILE" for x in docs)
    assert counts["objrefs"] == sum(x["type"] == "OBJREF" for x in docs)
    assert counts["tasks"] == sum(x["type"] == "TASK" for x in docs)


@pytest.mark.kernel
@pytest.mark.parametrize("workload", ["SHARED_SPLIT_WORKLOAD", "MEMFD_WORKLOAD", "MAPPED_FILE_MODES_WORKLOAD"])
def test_real_dump_of_shared_segments_and_mapped_memfds(reader, pidns, tmp_path, workload):
    """A shared anonymous segment split into several VMAs (its pages spread over them), a
    memfd and a deleted file open as fds and mapped (the VMAs naming the fds' FILE objects), and
    regular files mapped by two processes through fds they hold or have closed."""
    import test_restore

    d = tmp_path / "w"
    d.mkdir()
    w = pidns([sys.executable, "-c", getattr(test_restore, workload), str(d)], ready_file=str(d / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    check_real(reader, w.init, tmp_path)
