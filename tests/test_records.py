"""The image format: layouts, round trips, and a reader that only ever fails cleanly."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imagegen
from ckptrace.errors import ImageError
from ckptrace.image import docgen
from ckptrace.image.reader import read_image
from ckptrace.image.records import (HDR, MAGIC_HEAD, MAGIC_TAIL, PAGE_SIZE, RECORDS, FileType, Payload, RecType)
from ckptrace.image.stream import RecordReader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = imagegen.build()


def records_of(data: bytes):
    r = RecordReader(io.BytesIO(data))
    out = []
    while (rec := r.next()) is not None:
        out.append(rec)
    return out


@pytest.mark.parametrize("name,size", [("HEADER", 56), ("TAIL", 16), ("OBJREF", 16), ("TASK", 40),
                                       ("TASK_OBJS", 16), ("FILE_TABLE", 12), ("FILE_DESC", 20),
                                       ("FILE", 40), ("MM", 120), ("VMA", 56), ("PAGE", 16)])
def test_sizes_match_the_seed(name, size):
    assert RECORDS[RecType[name]].size == size


def test_type_numbers_are_the_seeds():
    want = dict(HEADER=1, HEADER_ARCH=2, BUFFER=3, STRING=4, OBJREF=5, TASK=101, TASK_OBJS=102,
                THREAD=103, CPU=104, FILE_TABLE=301, FILE_DESC=302, FILE_NAME=303, FILE=304, MM=401,
                VMA=402, MM_CONTEXT=403, PAGE=404, TAIL=9001)
    assert {k: int(RecType[k]) for k in want} == want


def test_header_offsets():
    data = SAMPLE
    t, ln = HDR.unpack_from(data, 0)
    assert (t, ln) == (1, 56)
    assert struct.unpack_from("<Q", data, 8)[0] == MAGIC_HEAD
    assert struct.unpack_from("<HHHH", data, 16) == (2, 6, 18, 0)  # arch x86_64, kernel 6.18.0
    assert struct.unpack_from("<5H", data, 24) == (16, 52, 65, 65, 65)
    assert struct.unpack_from("<Q", data, 40)[0] == 1700000000
    # three 65-byte uts BUFFERs follow, then HEADER_ARCH
    off = 56
    for _ in range(3):
        assert HDR.unpack_from(data, off) == (3, 73)
        off += 73
    assert HDR.unpack_from(data, off)[0] == 2
    assert data[-16:] == HDR.pack(9001, 16) + struct.pack("<Q", MAGIC_TAIL)


def reencoded(data: bytes) -> bytes:
    """Every record of `data` decoded and encoded again, from its declaration."""
    out = bytearray()
    for rec in records_of(data):
        payload = rec.payload
        if rec.rtype.payload is Payload.ENTRIES:
            payload = rec.rtype.decode_entries(payload)
        out += rec.rtype.encode(rec.fields, payload)
    return bytes(out)


def test_sample_image_round_trips_byte_equal():
    """decode -> re-encode every record of a full image gives the same bytes."""
    assert reencoded(SAMPLE) == SAMPLE


def test_every_record_type_appears_in_the_sample_or_is_reserved():
    seen = {rec.type for rec in records_of(SAMPLE)}
    dump_only = {RecType.MM_CONTEXT, RecType.FILE_DATA, RecType.FILE_SOCKET, RecType.FILE_SOCKET_QUEUE, RecType.FILE_STAT, RecType.FILE_TCP, RecType.FILE_EVENTFD,
                 RecType.FILE_EPOLL, RecType.FILE_TIMERFD, RecType.FILE_SIGNALFD, RecType.FILE_INOTIFY,
                 RecType.FILE_TTY}
    assert set(RECORDS) - seen <= dump_only


_INT = {"B": (0, 2**8 - 1), "H": (0, 2**16 - 1), "I": (0, 2**32 - 1), "i": (-2**31, 2**31 - 1),
        "Q": (0, 2**64 - 1), "q": (-2**63, 2**63 - 1)}


def values_for(fields):
    return st.fixed_dictionaries({f.name: st.integers(*_INT[f.code]) for f in fields if not f.is_pad})


@st.composite
def any_record(draw):
    rt = draw(st.sampled_from(sorted(RECORDS.values(), key=lambda r: r.type)))
    values = draw(values_for(rt.fields))
    payload = b""
    if rt.payload is Payload.ENTRIES:
        payload = draw(st.lists(values_for(rt.entry), max_size=5))
        if rt.count_field:
            values[rt.count_field] = len(payload)
    elif rt.payload is Payload.PAGES:
        payload = draw(st.binary(min_size=1, max_size=3)).ljust(PAGE_SIZE, b"\0") * draw(st.integers(0, 2))
    elif rt.payload is Payload.CSTRING:
        payload = draw(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                               min_size=1, max_size=40))
    elif rt.payload is Payload.BYTES:
        n = rt.exact_payload
        payload = draw(st.binary(max_size=64) if n is None else st.binary(min_size=n, max_size=n))
    return rt, values, payload


@given(any_record())
@settings(max_examples=300, deadline=None)
def test_every_record_type_round_trips(case):
    rt, values, payload = case
    data = rt.encode(values, payload)
    assert HDR.unpack_from(data) == (rt.type, len(data))
    assert rt.check_len(len(data)) is None
    rec = RecordReader(io.BytesIO(data)).next()
    assert rec.fields == values
    again = rec.payload if rt.payload is not Payload.ENTRIES else rt.decode_entries(rec.payload)
    assert rt.encode(rec.fields, again) == data
    # the JSON and pretty forms exist for every record
    rt.fields_json(rec.fields)
    rt.pretty(rec.fields)


@given(st.integers(0, len(SAMPLE) - 1))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_truncated_images_fail_cleanly(cut):
    with pytest.raises(ImageError):
        read_image(io.BytesIO(SAMPLE[:cut]))


@given(st.integers(0, len(SAMPLE) * 8 - 1))
@settings(max_examples=400, deadline=None)
def test_bit_flips_fail_cleanly_or_parse(bit):
    data = bytearray(SAMPLE)
    data[bit // 8] ^= 1 << (bit % 8)
    try:
        read_image(io.BytesIO(bytes(data)))
    except ImageError as exc:
        assert "record" in str(exc)


@given(st.binary(max_size=200), st.integers(0, 10))
@settings(max_examples=200, deadline=None)
def test_garbage_spliced_in_fails_cleanly(junk, where):
    recs = records_of(SAMPLE)
    at = recs[min(where, len(recs) - 1)].offset
    try:
        read_image(io.BytesIO(SAMPLE[:at] + junk + SAMPLE[at:]))
    except ImageError:
        pass


def _replace_record(data: bytes, index: int, new: bytes) -> bytes:
    rec = records_of(data)[index]
    return data[:rec.offset] + new + data[rec.offset + rec.length:]


def test_specific_errors_name_record_and_offset():
    bad_magic = bytearray(SAMPLE)
    bad_magic[8] ^= 0xFF
    with pytest.raises(ImageError, match=r"record 0, offset 0: bad header magic"):
        read_image(io.BytesIO(bytes(bad_magic)))

    unknown = bytearray(SAMPLE)
    struct.pack_into("<I", unknown, 56, 777)
    with pytest.raises(ImageError, match=r"record 1, offset 56: unknown record type 777"):
        read_image(io.BytesIO(bytes(unknown)))

    recs = records_of(SAMPLE)
    page = next(r for r in recs if r.type == RecType.PAGE and r.fields["vaddr"] != 2**64 - 1)
    outside = bytearray(SAMPLE)
    struct.pack_into("<Q", outside, page.offset + 8, 0x7000000000)
    with pytest.raises(ImageError, match=rf"record {page.index}, offset {page.offset}: PAGE .* outside its VMA"):
        read_image(io.BytesIO(bytes(outside)))

    with pytest.raises(ImageError, match="data after TAIL"):
        read_image(io.BytesIO(SAMPLE + SAMPLE[-16:]))

    vma = next(r for r in recs if r.type == RecType.VMA)
    short = bytearray(SAMPLE)
    struct.pack_into("<I", short, vma.offset + 4, 40)
    with pytest.raises(ImageError, match="VMA len 40"):
        read_image(io.BytesIO(bytes(short)))


def test_absurd_length_on_a_pipe_allocates_only_what_arrives(tmp_path):
    """A PAGE claiming 16 MiB with 10 bytes behind it: an error, not a 16 MiB read buffer."""
    recs = records_of(SAMPLE)
    page = next(r for r in recs if r.type == RecType.PAGE and r.payload_len)
    head = SAMPLE[:page.offset] + HDR.pack(RecType.PAGE, 16 + 4096 * 4096) + struct.pack("<Q", 0x600000) + b"x" * 10
    r, w = os.pipe()
    os.write(w, head)
    os.close(w)
    with os.fdopen(r, "rb") as f, pytest.raises(ImageError, match="truncated PAGE payload") as err:
        read_image(f)
    assert err.value.offset == page.offset and err.value.index == page.index  # the record, as from a file
    (tmp_path / "t.img").write_bytes(head)
    with open(tmp_path / "t.img", "rb") as f, pytest.raises(ImageError, match="runs past the end") as err:
        read_image(f)
    assert err.value.offset == page.offset and err.value.index == page.index


def test_docs_format_md_is_generated_from_the_declarations():
    with open(os.path.join(REPO, "docs", "format.md")) as f:
        doc = f.read()
    assert docgen.splice(doc) == doc, "docs/format.md is stale: run python -m ckptrace.image.docgen --write docs/format.md"
    for rt in RECORDS.values():
        assert f"### {rt.name} ({int(rt.type)})" in doc


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ckptrace", *args], input=stdin, capture_output=True,
                          cwd=REPO, timeout=60)


def test_cli_reports_corrupt_images_in_one_line(tmp_path):
    bad = tmp_path / "bad.img"
    bad.write_bytes(SAMPLE[:-5])
    for cmd in ("show", "decode"):
        p = run_cli(cmd, str(bad))
        assert p.returncode == 1
        err = p.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "truncated" in err and "record" in err and "offset" in err
    p = run_cli("show", "-", stdin=b"\x01\x00\x00\x00\x10")
    assert p.returncode == 1 and "truncated record header" in p.stderr.decode()
    # a read error (EIO: /proc/self/mem at offset 0 is unmapped) is one line too
    for cmd in ("show", "decode"):
        p = run_cli(cmd, "/proc/self/mem")
        err = p.stderr.decode().strip()
        assert p.returncode == 1 and len(err.splitlines()) == 1 and "Input/output error" in err, err


def test_cli_write_errors_are_one_line(tmp_path):
    img = tmp_path / "x.img"
    img.write_bytes(SAMPLE)
    p = subprocess.run(f"{sys.executable} -m ckptrace decode {img} >&-", shell=True, capture_output=True, cwd=REPO)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_cli_show_and_decode_from_a_pipe():
    p = run_cli("show", "-", stdin=SAMPLE)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "3 tasks in 2 processes" in out and "/tmp/log.txt" in out
    p = run_cli("decode", "--json", "-", stdin=SAMPLE)
    import json

    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert lines[0]["type"] == "HEADER" and lines[-1]["type"] == "TAIL"
    assert len(lines) == len(records_of(SAMPLE))
    pages = [x for x in lines if x["type"] == "PAGE" and "payload" in x]
    assert pages and all(set(x["payload"]) == {"length", "sha256"} for x in pages)
    p = run_cli("decode", "--json", "--pages", "-", stdin=SAMPLE)
    assert '"hex"' in p.stdout.decode()


def test_nameless_files_are_labelled_as_proc_shows_them():
    from ckptrace.image.render import file_label

    img = read_image(io.BytesIO(SAMPLE))
    pipe = next(o for o in img.objects.values() if getattr(o, "fields", {}).get("f_type") == 2)
    pipe.name = None
    assert file_label(pipe) == "pipe:[1234]"
    pipe.extra = []
    assert file_label(pipe) == "anon_inode:[pipe]"


def test_exit_signal_reads_as_a_signal():
    from ckptrace.image.records import RECORDS, pretty_value

    f = next(x for x in RECORDS[RecType.TASK].fields if x.name == "exit_signal")
    assert pretty_value(f, 17) == "SIGCHLD" and pretty_value(f, 0xFFFFFFFF) == "-1" and pretty_value(f, 0) == "0"


def with_time(seconds: int) -> bytes:
    """SAMPLE with HEADER.time (offset 40) patched."""
    data = bytearray(SAMPLE)
    struct.pack_into("<Q", data, 40, seconds)
    return bytes(data)


@pytest.mark.parametrize("seconds", [2**64 - 1, 10**17, 253402300800])
def test_a_time_no_date_fits_is_shown_as_the_number(tmp_path, seconds):
    """HEADER.time is display-only: an out-of-range value is printed raw, never a traceback or
    an errno message (time_t overflow, EOVERFLOW)."""
    img, good = tmp_path / "t.img", tmp_path / "good.img"
    img.write_bytes(with_time(seconds))
    good.write_bytes(SAMPLE)
    for args in (("show", str(img)), ("diff", str(good), str(img)), ("decode", str(img))):
        p = run_cli(*args)
        assert p.returncode == 0, p.stderr
        assert p.stderr == b"" and str(seconds).encode() in p.stdout
    assert f"taken {seconds} s since the epoch (out of range)" in run_cli("show", str(img)).stdout.decode()


def test_times_are_utc_in_every_command(tmp_path):
    from ckptrace.image.records import format_time

    assert format_time(1700000000) == "2023-11-14 22:13:20Z"
    assert format_time(0) == "1970-01-01 00:00:00Z"
    assert format_time(253402300799) == "9999-12-31 23:59:59Z"
    img = tmp_path / "t.img"
    img.write_bytes(SAMPLE)
    env = dict(os.environ, TZ="America/New_York")
    for args in (("show", str(img)), ("diff", str(img), str(img))):
        p = subprocess.run([sys.executable, "-m", "ckptrace", *args], capture_output=True, cwd=REPO, env=env,
                           timeout=60)
        assert p.returncode == 0 and b"2023-11-14 22:13:20Z" in p.stdout, (args, p.stdout)


def grammar_regex(doc: str) -> str:
    """The `## Order` grammar of docs/format.md as a regex over record type names, each followed
    by a space (objects nest: the regex unrolls them three deep, more than any image needs)."""
    import re

    block = doc.split("## Order", 1)[1].split("```")[1]
    rules: dict[str, str] = {}
    last = ""
    for line in block.splitlines():
        line = line.split("--")[0].strip()
        if not line:
            continue
        m = re.match(r"([a-z][a-z-]*)\s*:=\s*(.*)", line)
        if m:
            last = m.group(1)
            rules[last] = m.group(2)
        else:
            rules[last] += " " + line

    def expand(name: str, objects: int) -> str:
        if name == "object":
            if objects == 3:
                return "(?!)"
            objects += 1
        out = []
        for tok in re.findall(r"[A-Z_]+(?:\([^)]*\))?|[a-z][a-z-]*|\{\w+\}|[\[\]()|*]", rules[name]):
            if tok[0].isupper():
                assert tok.split("(")[0] in RecType.__members__, tok
                out.append("(?:" + tok.split("(")[0] + " )")
            elif tok[0].islower():
                out.append("(?:" + expand(tok, objects) + ")")
            else:
                out.append({"{": "*", "[": "(?:", "]": ")?", "(": "(?:"}.get(tok[0], tok))
        return "".join(out)

    return expand("image", 0)


def test_docs_format_md_grammar_accepts_the_images_written():
    """The grammar in docs/format.md names every record type (MM_CONTEXT is reserved) and
    accepts the sample image, which has both kinds of TASK_SIGINFO."""
    import re

    with open(os.path.join(REPO, "docs", "format.md")) as f:
        doc = f.read()
    rx = grammar_regex(doc)
    named = set(re.findall(r"[A-Z_]+", rx))
    assert set(RecType.__members__) - named == {"MM_CONTEXT"}
    types = [rec.type for rec in records_of(SAMPLE)]
    assert sum(1 for rec in records_of(SAMPLE) if rec.type == RecType.TASK_SIGINFO and rec.fields["shared"] == 0) == 1
    assert re.fullmatch(rx, "".join(t.name + " " for t in types)), "docs/format.md's grammar rejects the sample"


def test_docs_format_md_gives_magics_task_state_and_extensions():
    """The magic numbers (the seed's CHECKPOINT_MAGIC_HEAD/TAIL), what TASK.state really holds
    (ckptrace writes only 0, TASK_STOPPED and, for zombies, TASK_DEAD), and which enum values are
    not the seed's."""
    from ckptrace.image.records import EXIT_ZOMBIE, TASK_DEAD, TASK_STOPPED

    with open(os.path.join(REPO, "docs", "format.md")) as f:
        doc = f.read()
    assert (MAGIC_HEAD, MAGIC_TAIL) == (0x00FEED0CC0A2D200, 0x002D2A0CC0DEEF00)
    assert "| 8 | u64 | magic | 0x00feed0cc0a2d200 (the seed's CHECKPOINT_MAGIC_HEAD) |" in doc
    assert "| 8 | u64 | magic | 0x002d2a0cc0deef00 (the seed's CHECKPOINT_MAGIC_TAIL) |" in doc
    assert (TASK_STOPPED, TASK_DEAD, EXIT_ZOMBIE) == (4, 0x80, 0x20)  # the kernel's numbers
    assert "| 8 | u32 | state | 0=TASK_RUNNING, 4=__TASK_STOPPED, 128=TASK_DEAD (a zombie): the only values written" in doc
    assert "1 interruptible sleep" not in doc and "8 traced (the" not in doc
    for row in ("| 12 | u32 | exit_state | 0, or 32=EXIT_ZOMBIE", "| 16 | u32 | exit_code | a zombie's wait status",
                "| 24 | u64 | set_child_tid | always 0 |"):
        assert row in doc
    for row in ("| arch_id | 1=X86_32; ckptrace extensions, not in the seed: 2=x86_64",
                "| vma_type | 0=IGNORE, 1=VDSO, 2=ANON, 3=FILE; ckptrace extensions, not in the seed: 4=SHARED_ANON",
                "| f_type | 0=IGNORE, 1=REGULAR; ckptrace extensions, not in the seed: 2=PIPE"):
        assert row in doc, row


def test_json_keeps_file_names_that_are_not_utf8_exactly(tmp_path):
    """A path of arbitrary bytes: the JSON string is valid Unicode (\\xNN for the bad bytes, no
    lone surrogates) and `KEY_hex` has the exact bytes, in show, decode and diff --json."""
    import json

    assert SAMPLE.count(b"/tmp/log.txt") == 1
    odd = b"/tmp/lo\xff.txt"
    bad, good = tmp_path / "odd.img", tmp_path / "good.img"
    bad.write_bytes(SAMPLE.replace(b"/tmp/log.txt", odd))
    good.write_bytes(SAMPLE)

    def strings(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    docs = []
    for args in (("show", "--json", str(bad)), ("decode", "--json", str(bad)), ("diff", "--json", str(good), str(bad))):
        p = run_cli(*args)
        assert p.returncode == 0, p.stderr
        docs += [json.loads(line) for line in p.stdout.decode().splitlines()]
    for s in strings(docs):
        s.encode("utf-8")  # no lone surrogates anywhere
    show, name = docs[0], next(d for d in docs[1:] if d.get("type") == "FILE_NAME" and "payload_hex" in d)
    (fd0,) = [f for f in show["procs"][0]["fds"] if f["fd"] == 0]
    assert fd0["path"] == "/tmp/lo\\xff.txt" and bytes.fromhex(fd0["path_hex"]) == odd
    assert "label_hex" in fd0 and "path_hex" not in show["procs"][0]["fds"][-1]  # only where needed
    assert bytes.fromhex(name["payload_hex"]) == odd
    changed = [c for p in docs[-1]["processes"] for c in p["fds"]["changed"]]
    assert changed and changed[0]["changes"]["path"] == ["/tmp/log.txt", "/tmp/lo\\xff.txt"]
    assert changed[0]["changes"]["path_hex"] == [None, odd.hex()]


def _patched(pick, change):
    """SAMPLE with the record pick(records) returns re-encoded after change(fields, payload)
    returns (fields, payload bytes); and that record."""
    recs = records_of(SAMPLE)
    rec = pick(recs)
    fields, payload = change(dict(rec.fields), bytes(rec.payload or b""))
    fixed = rec.rtype.st.pack(*(fields[n] for n in rec.rtype.names)) if rec.rtype.st.size else b""
    new = struct.pack("<II", rec.type, 8 + len(fixed) + len(payload)) + fixed + payload
    return _replace_record(SAMPLE, rec.index, new), rec


def _first(kind):
    return lambda recs: next(r for r in recs if r.type == kind)


def _the_executable(recs):
    """The FILE record of the sample's executable (the one named /usr/bin/sample)."""
    i = next(i for i, r in enumerate(recs) if r.type == RecType.FILE_NAME and bytes(r.payload).startswith(b"/usr/bin/"))
    return recs[i - 1]


def _thread_of_thread(payload: bytes) -> bytes:
    """The sample's TREE with process 3 made a thread of thread 2 (no process would hold it)."""
    from ckptrace.image.records import RECORDS

    rt = RECORDS[RecType.TREE]
    entries = rt.decode_entries(payload)
    entries[2]["tgid"] = 2
    return b"".join(rt.entry_st.pack(*(e[n] for n in rt.entry_names)) for e in entries)


def _auxv(entries):
    return b"".join(struct.pack("<QQ", t, v) for t, v in entries)


@pytest.mark.parametrize("pick, change, message", [
    (_first(RecType.HEADER), lambda f, p: ({**f, "uflags": 1}, p), "uflags"),
    (_first(RecType.MM_AUXV), lambda f, p: ({**f, "nentries": 3}, p), "nentries"),
    (_first(RecType.MM_AUXV), lambda f, p: ({**f, "nentries": 1}, _auxv([(6, 4096)])), "AT_NULL"),
    (_first(RecType.VMA), lambda f, p: ({**f, "vma_type": 99}, p), "unknown VMA type 99"),
    (_first(RecType.FILE_NAME), lambda f, p: (f, p.rstrip(b"\0")), "NUL"),
    (_the_executable, lambda f, p: ({**f, "f_type": FileType.PIPE}, p), "executable"),
    (_first(RecType.FILE_PIPE), lambda f, p: ({**f, "buffered": len(p) + 89}, p), "bytes buffered"),
    (_first(RecType.TASK_SCHED), lambda f, p: ({**f, "policy": 42}, p), "policy 42"),
    (_first(RecType.TREE), lambda f, p: (f, _thread_of_thread(p)), "leads no process"),
])
def test_images_the_docs_call_invalid_are_refused_at_the_record(pick, change, message):
    """Fields the format fixes (uflags 0, auxv count and its AT_NULL end, known VMA types, NUL-ended
    names, an executable that is a file with contents) are checked where they are read."""
    data, rec = _patched(pick, change)
    with pytest.raises(ImageError, match=message) as exc:
        read_image(io.BytesIO(data))
    assert exc.value.index is not None and exc.value.index >= rec.index


def test_json_safe_leaves_no_lone_surrogate_anywhere():
    """Strings nested in lists, in a top-level list, or used as keys come out valid Unicode too
    (those have no sibling key for their bytes: the \\xNN form is all there is)."""
    import json

    from ckptrace.image.records import json_safe

    odd = b"odd\xff".decode("utf-8", "surrogateescape")
    doc = json_safe({"x": [[odd]], odd: 1, "l": [odd, "ok"]})
    text = json.dumps(doc, ensure_ascii=False)
    text.encode("utf-8")  # a lone surrogate would not encode
    assert doc["x"] == [["odd\\xff"]] and doc["odd\\xff"] == 1 and doc["l_hex"] == ["6f6464ff", None]
    assert json_safe([odd]) == ["odd\\xff"]


def test_an_io_error_after_the_tail_is_an_io_error_not_data_after_tail():
    import errno

    from ckptrace.errors import ImageReadError

    class FailsAfter(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= len(SAMPLE):
                raise OSError(errno.EIO, "I/O error")
            return super().read(n)

    with pytest.raises(ImageReadError, match="cannot read: Input/output error"):
        read_image(FailsAfter(SAMPLE))


def test_text_output_escapes_what_an_image_holds_and_json_keeps_its_bytes(tmp_path):
    """An image is data: a comm or path with a newline, an escape sequence or a byte no UTF-8
    decodes must not reach the terminal as such (show, decode and diff used to print them raw:
    lines split, colours changed), and decode --json keeps a STRING's exact bytes."""
    import json

    comm = b"s\x1b[31m\nam\xff".ljust(16, b"\0")
    path = b"/tmp/\x1b[2J\nxy"
    assert SAMPLE.count(b"sample".ljust(16, b"\0")) >= 1 and len(path) == len(b"/tmp/log.txt")
    odd, good = tmp_path / "odd.img", tmp_path / "good.img"
    odd.write_bytes(SAMPLE.replace(b"sample".ljust(16, b"\0"), comm).replace(b"/tmp/log.txt", path))
    good.write_bytes(SAMPLE)
    records = run_cli("decode", "--json", str(odd))
    assert records.returncode == 0, records.stderr
    docs = [json.loads(line) for line in records.stdout.decode().splitlines()]
    (string,) = [d for d in docs if d["type"] == "STRING"][:1]
    assert bytes.fromhex(string["payload_hex"]) == comm.rstrip(b"\0")
    for args in (("show", str(odd)), ("decode", str(odd)), ("diff", str(good), str(odd))):
        p = run_cli(*args)
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode("utf-8")
        assert "\x1b" not in out and "\\x1b" in out, args
        assert "\\xff" in out or args[0] == "diff" or "\\n" in out
    assert len(run_cli("decode", str(odd)).stdout.decode().splitlines()) == len(docs)  # one line a record


def test_image_lookups_agree_with_a_scan_and_follow_added_tasks():
    """task, threads_of and tree_entry answer from indexes (a scan per process made show
    quadratic): the same answers as a scan, also for tasks added after a first lookup."""
    img = read_image(io.BytesIO(SAMPLE))
    for t in img.tasks:
        assert img.task(t.tid) is t
        assert img.threads_of(t.tgid) == [u for u in img.tasks if u.tgid == t.tgid]
        assert img.tree_entry(t.tid) == next(e for e in img.tree if e["pid"] == t.tid)
    assert img.task(99) is None and img.tree_entry(99) == {} and img.threads_of(99) == []
    extra = img.tasks[-1].__class__(dict(img.tasks[-1].fields))
    extra.thread = dict(img.tasks[-1].thread, tid=99, tgid=99)
    img.tasks.append(extra)
    assert img.task(99) is extra and img.threads_of(99) == [extra]


@pytest.mark.parametrize("flags, names, net, mnt", [
    (0, b"h\0d\0", "", ""),  # before TASK_NS said more than the names
    (1, b"h\0d\0interface eth0 (veth)\0", "interface eth0 (veth)", ""),  # network words only
    (3, b"h\0d\0\0t on /m type tmpfs\0", "", "t on /m type tmpfs"),  # mount words, no network words
    (2, b"h\0d\0a; b\0t on /m type tmpfs\0", "a; b", "t on /m type tmpfs"),
])
def test_task_ns_flags_and_words_read_from_two_three_or_four_strings(flags, names, net, mnt):
    """TASK_NS's second field (`net` while LO_DOWN was its only bit) is `flags` now, with
    OWN_PROC; its payload may end after the names, the network words or the mount words."""
    img = read_image(io.BytesIO(imagegen.build(ns=(flags, names))))
    init = img.task(1)
    assert (init.nodename, init.domainname, init.ns_flags, init.net_missing, init.mnt_missing) == (
        b"h", b"d", flags, net, mnt)


def test_task_ns_cgroup_namespace_and_roots_read_from_the_sixth_and_seventh_strings():
    """A cgroup namespace of its own is named after the pid of its first process, and its roots
    are /proc/PID/cgroup lines (a path empty where unknown); older images end before them."""
    names = b"h\0d\0\0\0\0" + b"1\0" + b"0::/a/ns\n3:freezer:/b\n5:memory:\n\0"
    init = read_image(io.BytesIO(imagegen.build(ns=(0, names)))).task(1)
    assert (init.cgroup_ns, init.cgroup_ns_roots) == (1, [(0, "", "/a/ns"), (3, "freezer", "/b"), (5, "memory", "")])
    init = read_image(io.BytesIO(imagegen.build(ns=(0, b"h\0d\0\0\0offsets\0")))).task(1)
    assert (init.cgroup_ns, init.cgroup_ns_roots, init.time_offsets) == (0, [], "offsets")
    with pytest.raises(ImageError, match="TASK_NS's cgroup namespace is not named by a pid"):
        read_image(io.BytesIO(imagegen.build(ns=(0, b"h\0d\0\0\0\0x1\0\0"))))
    with pytest.raises(ImageError, match="TASK_NS's cgroup namespace roots are not /proc/PID/cgroup lines"):
        read_image(io.BytesIO(imagegen.build(ns=(0, b"h\0d\0\0\0\0" + b"1\0freezer:/b\n\0"))))


def test_task_ns_time_namespaces_read_from_the_eighth_string():
    """A time namespace of its own, and its children's, are each a line of a name (a number, 0
    for the dumper's) and two offsets in ns; older images end before them (time_ns None)."""
    names = b"h\0d\0\0\0monotonic -1.5 s, boottime +0 s\0\0\0" + b"0 0 0\n1 -1500000000 0\n\0"
    init = read_image(io.BytesIO(imagegen.build(ns=(0, names)))).task(1)
    assert init.time_ns == ((0, 0, 0), (1, -1_500_000_000, 0))
    assert read_image(io.BytesIO(imagegen.build(ns=(0, b"h\0d\0\0\0offsets\0")))).task(1).time_ns is None
    for bad in (b"1 0 0\n", b"1 0 0\nx 0 0\n", b"1 0\n1 0 0\n", b"-1 0 0\n1 0 0\n"):
        with pytest.raises(ImageError, match="TASK_NS's time namespaces are not two lines of a number and two offsets"):
            read_image(io.BytesIO(imagegen.build(ns=(0, b"h\0d\0\0\0\0\0\0" + bad + b"\0"))))


def test_decode_json_gives_each_record_type_one_set_of_keys(tmp_path):
    """Scripts read `decode --json` by key: a record type that has a payload always has the
    `payload` key, empty or not (a PAGE end marker, a FILE_PIPE with nothing buffered), and one
    that has none never does."""
    import json

    img = tmp_path / "s.img"
    img.write_bytes(SAMPLE)
    p = run_cli("decode", "--json", str(img))
    assert p.returncode == 0, p.stderr
    keys: dict[str, set] = {}
    empty = 0
    for line in p.stdout.decode().splitlines():
        d = json.loads(line)
        keys.setdefault(d["type"], set()).add(tuple(sorted(k for k in d if not k.endswith("_hex"))))
        has = RECORDS[RecType[d["type"]]].payload is not Payload.NONE
        assert ("payload" in d) == has, d
        empty += has and d["len"] == HDR.size + RECORDS[RecType[d["type"]]].st.size
    assert all(len(k) == 1 for k in keys.values()), keys
    assert empty  # the sample has payload-less records of payload types (PAGE's end marker)


@pytest.mark.parametrize("fixed", [48, 64])
def test_threads_of_older_images_read_with_the_new_fields_zero(fixed):
    """THREAD grew (rseq, then the robust list and I/O priority) and the format has no version:
    an image an older ckptrace wrote is read with the fields it lacks 0, not refused."""
    out = bytearray()
    r = RecordReader(io.BytesIO(SAMPLE))
    threads = 0
    while (rec := r.next()) is not None:
        raw = SAMPLE[rec.offset:rec.offset + rec.length]
        if rec.type == RecType.THREAD:
            raw = struct.pack("<II", RecType.THREAD, HDR.size + fixed) + raw[HDR.size:HDR.size + fixed]
            threads += 1
        out += raw
    assert threads
    img = read_image(io.BytesIO(bytes(out)))
    new = RECORDS[RecType.THREAD].names[[f.name for f in RECORDS[RecType.THREAD].fields if not f.is_pad].index(
        "rseq_ptr" if fixed == 48 else "robust_list"):]
    for t in img.tasks:
        assert all(t.thread[n] == 0 for n in new), t.thread
        assert t.thread["tid"] == t.tid


def test_a_tty_record_of_an_older_image_reads_with_no_state():
    """FILE_TTY grew (flags, queues, window size, termios; then the device number and ctime): a
    16-byte one of an older ckptrace is read with the rest 0, flags 0 saying no state was read
    (restore refuses such a master), an 80-byte one with dev and ctime_ns 0 (not checked)."""
    from ckptrace.image.records import TTY_STATE

    rt = RECORDS[RecType.FILE_TTY]
    assert (rt.size, rt.older) == (104, (16, 80))
    full = rt.encode(dict(index=3, is_master=1, sid=2, pgrp=5, flags=TTY_STATE, ws_row=24, VMIN=1,
                          c_ospeed=15, dev=0x8803, ctime_ns=7))
    old = struct.pack("<II", RecType.FILE_TTY, HDR.size + 16) + full[HDR.size:HDR.size + 16]
    assert rt.check_len(len(old)) is None and rt.check_len(len(old) + 4) is not None
    fields = RecordReader(io.BytesIO(old)).next().fields
    assert (fields["index"], fields["is_master"], fields["sid"], fields["pgrp"]) == (3, 1, 2, 5)
    assert all(v == 0 for k, v in fields.items() if k not in ("index", "is_master", "sid", "pgrp"))
    mid = struct.pack("<II", RecType.FILE_TTY, HDR.size + 80) + full[HDR.size:HDR.size + 80]
    assert rt.check_len(len(mid)) is None and rt.check_len(len(mid) + 8) is not None
    fields = RecordReader(io.BytesIO(mid)).next().fields
    assert (fields["VMIN"], fields["c_ospeed"], fields["dev"], fields["ctime_ns"]) == (1, 15, 0, 0)
    fields = RecordReader(io.BytesIO(full)).next().fields
    assert (fields["VMIN"], fields["dev"], fields["ctime_ns"]) == (1, 0x8803, 7)


def test_a_file_stat_record_of_an_older_image_reads_without_an_owner():
    """FILE_STAT grew (the file's type and mode, then its owner, which restore makes a missing
    shared memory file again with): a 32- or 40-byte one of an older ckptrace reads with the
    fields it lacks 0, and a record of any other length is refused."""
    rt = RECORDS[RecType.FILE_STAT]
    assert (rt.size, rt.older) == (56, (32, 40))
    full = rt.encode(dict(size=5, mtime_ns=6, ino=7, dev=8, mode=0o100640, uid=1000, gid=1001))
    for fixed, kept in ((32, ("size", "mtime_ns", "ino", "dev")), (40, ("size", "mtime_ns", "ino", "dev", "mode"))):
        # (the 40-byte one ended in 4 bytes of padding, written as zero, where uid is now)
        body = full[HDR.size:HDR.size + min(fixed, 36)].ljust(fixed, b"\0")
        old = struct.pack("<II", RecType.FILE_STAT, HDR.size + fixed) + body
        assert rt.check_len(len(old)) is None and rt.check_len(len(old) + 4) is not None
        fields = RecordReader(io.BytesIO(old)).next().fields
        assert all(fields[k] == v for k, v in rt.decode_fixed(full[HDR.size:]).items() if k in kept)
        assert all(fields[k] == 0 for k in rt.names if k not in kept), fields
    fields = RecordReader(io.BytesIO(full)).next().fields
    assert (fields["mode"], fields["uid"], fields["gid"]) == (0o100640, 1000, 1001)


def test_new_fields_are_named_in_text_and_json():
    """What decode and show name: O_ASYNC among the open flags, real-time signals (as inspect
    names them), an owner type, -1 the same in text and JSON, TASK_PROC's texts by name."""
    from ckptrace.image.records import json_value, pretty_value

    f_flags = next(f for f in RECORDS[RecType.FILE].fields if f.name == "f_flags")
    assert pretty_value(f_flags, 0o20000 | 0o4000) == "O_NONBLOCK|O_ASYNC"
    sig = next(f for f in RECORDS[RecType.FILE_OWNER].fields if f.name == "signal")
    assert pretty_value(sig, 36) == "SIGRTMIN+2" and pretty_value(sig, 10) == "SIGUSR1"
    # as `kill -l` names them (bash's builtin)
    listed = subprocess.run(["bash", "-c", "kill -l"], capture_output=True, text=True, check=True).stdout
    names = dict(re.findall(r"(\d+)\) SIG(\S+)", listed))
    assert {n: pretty_value(sig, n) for n in range(1, 65) if str(n) in names} == \
           {n: "SIG" + names[str(n)] for n in range(1, 65) if str(n) in names}
    exit_signal = next(f for f in RECORDS[RecType.TASK].fields if f.name == "exit_signal")
    assert pretty_value(exit_signal, 0xFFFFFFFF) == "-1" and json_value(exit_signal, 0xFFFFFFFF) == -1
    kind = next(f for f in RECORDS[RecType.FILE_OWNER].fields if f.name == "owner_type")
    assert pretty_value(kind, 2) == "F_OWNER_PGRP"
    proc = RECORDS[RecType.TASK_PROC]
    assert proc.payload_json(b"/w\0/srv/ct\0" + b"0::/\n\0" + b"/srv/ct\0") == {
        "cwd": "/w", "root": "/srv/ct", "cgroup": "0::/\n", "ns_root": "/srv/ct"}
    assert proc.payload_json(b"/\0/\0\0") == {"cwd": "/", "root": "/", "cgroup": ""}
    # TASK_NS's strings by name too (they were {length, sha256}: the offsets, roots unreadable)
    ns = RECORDS[RecType.TASK_NS]
    assert ns.payload_json(b"box\0\0\0\0monotonic +5000 s\0" + b"1\0" + b"0::/ct\n\0" + b"1 0 0\n1 0 0\n\0") == {
        "nodename": "box", "domainname": "", "net_missing": "", "mnt_missing": "", "time_offsets": "monotonic +5000 s",
        "cgroup_ns": "1", "cgroup_ns_roots": "0::/ct\n", "time_ns": "1 0 0\n1 0 0\n"}
    assert ns.payload_json(b"box\0(none)\0") == {"nodename": "box", "domainname": "(none)"}  # (an older image's)


def _with_file(ftype: int, extra: bytes) -> tuple[bytes, int, int]:
    """SAMPLE with a file object of type `ftype` (objref 99, in no fd) before fd 7's FILE_DESC,
    `extra` (its records after FILE) following; and the index and offset of extra's first record."""
    from ckptrace.image.records import ObjType

    desc = next(r for r in records_of(SAMPLE) if r.type == RecType.FILE_DESC and r.fields["fd_descriptor"] == 7)
    head = (RECORDS[RecType.OBJREF].encode(dict(objtype=ObjType.FILE, objref=99))
            + RECORDS[RecType.FILE].encode(dict(f_type=ftype, f_mode=1)))
    return SAMPLE[:desc.offset] + head + extra + SAMPLE[desc.offset:], desc.index + 2, desc.offset + len(head)


def _with_inotify(nwatch: int, payload: bytes) -> tuple[bytes, int, int]:
    """SAMPLE with an inotify file object (objref 99, in no fd) before fd 7's FILE_DESC, its
    FILE_INOTIFY saying `nwatch` and holding `payload`; and that record's index and offset."""
    return _with_file(FileType.INOTIFY, RECORDS[RecType.FILE_INOTIFY].encode(dict(nwatch=nwatch), payload))


def _watch(wd: int, path: bytes) -> bytes:
    return struct.pack("<iIQI", wd, 0x100, 0x1234 + wd, 0x801) + path + b"\0"


@pytest.mark.parametrize("nwatch, payload, message", [
    (3, _watch(1, b"/tmp") + _watch(2, b"/etc/x"), "ends in watch 2"),
    (1, _watch(1, b"/tmp") + _watch(2, b"/etc/x"), "follow"),
    (0, _watch(1, b"/tmp"), "follow"),
    (2, _watch(1, b"/tmp") + _watch(2, b"/etc/x") + b"\0\0\0", "3 bytes follow"),
    (2, _watch(1, b"/tmp") + _watch(2, b"/etc/x")[:-1], "not NUL-terminated"),
    (1, _watch(1, b"/tmp")[:10], "ends in watch 0"),
], ids=["too-few", "too-many", "none-said", "trailing", "no-nul", "cut-head"])
def test_inotify_nwatch_must_match_its_packed_entries(nwatch, payload, message):
    """FILE_INOTIFY.nwatch used to be read by nobody: restore parsed watches until the payload
    ran out, so a count that disagreed, bytes after the last entry or a path with no NUL went
    unnoticed. The reader refuses them at the record, and restore reads the same parser."""
    data, index, offset = _with_inotify(nwatch, payload)
    with pytest.raises(ImageError, match=message) as exc:
        read_image(io.BytesIO(data))
    assert (exc.value.index, exc.value.offset) == (index, offset)


def test_inotify_watches_are_read_as_nwatch_packed_entries():
    from ckptrace.image.reader import File
    from ckptrace.restorer.files import _inotify_watches

    data, _, _ = _with_inotify(3, _watch(1, b"/tmp") + _watch(2, b"") + _watch(5, b"/etc/x\xff"))
    obj = read_image(io.BytesIO(data)).obj(99)
    assert isinstance(obj, File) and obj.ftype == FileType.INOTIFY
    (rec,) = obj.extra
    assert _inotify_watches(rec) == [(1, 0x100, "/tmp"), (2, 0x100, ""),
                                     (5, 0x100, b"/etc/x\xff".decode("utf-8", "surrogateescape"))]


def test_a_read_only_shared_mapping_shows_as_proc_shows_it(tmp_path):
    """mmap(MAP_SHARED, PROT_READ) of a file opened O_RDONLY: the kernel sets VM_MAYSHARE but
    not VM_SHARED, and /proc/PID/maps prints r--s; show, inspect and diff printed r--p."""
    import json

    from ckptrace.image.render import prot_str
    from ckptrace.imgdiff import vma_doc
    from ckptrace.tui.state import InspectState

    rd_mr_me_ms = 0x1 | 0x10 | 0x40 | 0x80  # smaps VmFlags "rd mr me ms"
    assert prot_str(1, rd_mr_me_ms) == "r--s"
    assert prot_str(3, rd_mr_me_ms | 0x2 | 0x20 | 0x8) == "rw-s"  # writable: VM_SHARED too
    assert prot_str(5, 0x75) == "r-xp"
    data, _ = _patched(_first(RecType.VMA), lambda f, p: ({**f, "vma_type": 5, "vm_page_prot": 1,
                                                          "vm_flags": rd_mr_me_ms}, p))
    path = tmp_path / "ro-shared.img"
    path.write_bytes(data)
    r = subprocess.run([sys.executable, "-m", "ckptrace", "show", "--json", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["procs"][0]["vmas"][0]["prot"] == "r--s"
    img = read_image(io.BytesIO(data))
    st = InspectState(img, io.BytesIO(data))
    assert st.vma_rows()[0][2] == "r--s"
    assert vma_doc(img, st.mm.vmas[0])["prot"] == "r--s"


@pytest.mark.parametrize("size", [0, 128, 255, 257])
def test_a_socket_payload_is_exactly_two_sockaddrs(size):
    """FILE_SOCKET's payload is the local and the peer sockaddr, 128 bytes each: shorter (or
    longer) was accepted, and readers then took the peer from whatever was there."""
    sock = dict(family=1, type=1, state=7, ino=4242)
    good, _, _ = _with_file(FileType.UNIX_SOCKET, RECORDS[RecType.FILE_SOCKET].encode(sock, b"\0" * 256))
    assert read_image(io.BytesIO(good)).obj(99).extra[0].payload_len == 256
    data, index, offset = _with_file(FileType.UNIX_SOCKET, RECORDS[RecType.FILE_SOCKET].encode(sock, b"\0" * size))
    with pytest.raises(ImageError, match=f"FILE_SOCKET len {56 + size} != 312") as exc:
        read_image(io.BytesIO(data))
    assert (exc.value.index, exc.value.offset) == (index, offset)


def test_docs_format_md_settles_what_a_reader_must_accept():
    """What an independent reader asked of format.md: records are packed with no padding between
    them; objrefs counting up from 1 binds the writer only; THREAD's older sizes count the header
    or not; exit_signal's 0xffffffff; a memfd's FILE_NAME; FILE_SOCKET's exact payload. And
    decode --json's value conventions are written down (docs/inspect.md)."""
    with open(os.path.join(REPO, "docs", "format.md")) as f:
        doc = " ".join(f.read().split())
    with open(os.path.join(REPO, "docs", "inspect.md")) as f:
        inspect_doc = " ".join(f.read().split())
    assert "Records are packed back to back" in doc
    assert any(r.offset % 8 for r in records_of(SAMPLE))  # a FILE_TABLE is 12 bytes: so it is
    assert "a reader must accept any positive objref (gaps, any order)" in doc
    # objrefs 11, 13, 14... with gaps: read as well as 1, 2, 3...
    shifted = bytearray()
    for rec in records_of(SAMPLE):
        f = dict(rec.fields)
        for k in ("objref", "fd_objref", "files_objref", "mm_objref", "exe_objref", "vma_objref"):
            if f.get(k):
                f[k] += 10
        payload = rec.rtype.decode_entries(rec.payload) if rec.rtype.payload is Payload.ENTRIES else bytes(rec.payload or b"")
        shifted += rec.rtype.encode(f, payload)
    assert sorted(read_image(io.BytesIO(bytes(shifted))).objects) == [o + 10 for o in sorted(read_image(io.BytesIO(SAMPLE)).objects)]
    thread = RECORDS[RecType.THREAD]
    assert (thread.size, thread.older) == (88, (48, 64))
    assert "fixed part (the bytes after the 8-byte header) is 48 or 64 bytes, that is `len` 56 or 72" in doc
    assert "`len`: 88 (also 56 or 72: images of older ckptrace versions)" in doc
    assert "stored as `0xffffffff`" in doc and "has 0xffffffff (decode --json shows -1)" in doc
    assert "A memfd's `FILE_NAME` is `memfd:NAME`, without the leading `/` and the ` (deleted)`" in doc
    assert "payload: exactly 256 bytes" in doc and "`len`: 312" in doc
    assert "cstring path}, packed: each a 20-byte head then the path and its NUL" in doc
    for rule in ('are strings, `"0x7f0000001000"`', "are their names", '`{"value": 32770, "names":',
                 "is `-1`"):
        assert rule in inspect_doc, rule


def test_an_empty_input_is_called_empty_not_a_bad_image():
    """`dump ... -o - | restore -` whose dump refused gave "bad image at record 0, offset 0:
    unexpected end of image (no TAIL)"."""
    import io

    from ckptrace.errors import ImageError
    from ckptrace.image.reader import read_image

    with pytest.raises(ImageError, match="the input is empty"):
        read_image(io.BytesIO(b""))


def test_a_thread_reads_its_own_credentials_or_its_leaders():
    """A thread whose credentials differed from its leader's has its own TASK_CREDS, after its
    seccomp records; every other thread reads its leader's (images before this held none)."""
    data = imagegen.build(thread_creds=dict(uid=65534, euid=65534, suid=65534, fsuid=65534, gid=1000,
                                            securebits=1, cap_bnd=0xFF, groups=[7, 8]))
    img = read_image(io.BytesIO(data))
    t2, leader = img.task(2), img.task(1)
    assert t2.own_creds and not leader.own_creds
    assert (t2.creds["uid"], t2.creds["gid"], t2.creds["securebits"], t2.groups) == (65534, 1000, 1, [7, 8])
    assert (leader.creds["uid"], leader.groups) == (0, [4, 27])
    assert t2.siginfo  # (its own queue still follows)
    assert reencoded(data) == data
    img = read_image(io.BytesIO(imagegen.build()))
    assert not img.task(2).own_creds and img.task(2).creds == img.task(1).creds
    assert img.task(2).groups == [4, 27]


def test_a_zombie_is_read_shown_and_round_trips(tmp_path):
    """A zombie (exit_state EXIT_ZOMBIE): TASK, comm, THREAD, TASK_CREDS and nothing else. It is a
    process of the image, not a live one (processes()), and show names it with its status."""
    import json

    from ckptrace.image.render import show_text, summary

    data = imagegen.build(zombie={})
    img = read_image(io.BytesIO(data))
    assert [t.tid for t in img.zombies()] == [9] and 9 not in [t.tid for t in img.processes()]
    (z,) = img.zombies()
    assert (z.comm, z.creds["uid"], z.groups, z.fields["exit_code"]) == ("gone", 1000, [100], 0x700)
    assert reencoded(data) == data
    s = summary(img)
    assert s["processes"] == 3 and [(x["pid"], x["exit_code"], x["signal"], x["uid"]) for x in s["zombies"]] == \
        [(9, 7, None, 1000)]
    assert "    9 gone <defunct: exited with status 7> (pgid 1, sid 1)" in show_text(s)
    assert "in 3 processes (1 zombie)" in show_text(s)
    json.dumps(s)
    killed = summary(read_image(io.BytesIO(imagegen.build(zombie=dict(exit_code=0x8B)))))
    assert killed["zombies"][0]["exited"] == "killed by SIGSEGV, core dumped"
    with open(os.path.join(REPO, "docs", "format.md")) as f:
        rx = grammar_regex(f.read())
    import re

    assert re.fullmatch(rx, "".join(rec.type.name + " " for rec in records_of(data)))


@pytest.mark.parametrize("zombie, why", [
    (dict(exit_state=0x10), "exit_state 0x10 is not EXIT_ZOMBIE"),
    (dict(pid=9, tgid=1), "task 9 is a zombie but not a process other than init"),
])
def test_impossible_zombies_are_refused(zombie, why):
    with pytest.raises(ImageError, match=why):
        read_image(io.BytesIO(imagegen.build(zombie=zombie)))


def _socket_rec(family: int, protocol: int, state: int) -> bytes:
    return RECORDS[RecType.FILE_SOCKET].encode(dict(family=family, type=1, protocol=protocol, state=state, ino=4243),
                                               b"\0" * 256)


_TCP_REC = RECORDS[RecType.FILE_TCP].encode(dict(inq_len=2, outq_len=3, mss=1460), b"inout")


@pytest.mark.parametrize("ftype, extra, message", [
    (FileType.INET_SOCKET, b"", "does not follow its file's FILE_SOCKET"),
    (FileType.INET_SOCKET, RECORDS[RecType.FILE_OWNER].encode(dict(owner_type=1, owner_pid=1)),
     "does not follow its file's FILE_SOCKET"),
    (FileType.UNIX_SOCKET, _socket_rec(1, 0, 1), "not an established TCP socket"),
    (FileType.INET_SOCKET, _socket_rec(2, 17, 1), "protocol 17"),
    (FileType.INET_SOCKET, _socket_rec(10, 6, 10), "state 10"),
    (FileType.PIPE, _socket_rec(2, 6, 1), "not an established TCP socket"),
], ids=["alone", "after-owner", "unix", "udp", "listener", "pipe"])
def test_file_tcp_must_follow_an_established_tcp_socket(ftype, extra, message):
    """FILE_TCP was only length-checked: one on a unix socket, a UDP socket, a listener, or with no
    FILE_SOCKET before it got past validation and made restore fail half-way with an
    AttributeError. It is refused at the record."""
    data, index, offset = _with_file(ftype, extra + _TCP_REC)
    with pytest.raises(ImageError, match=message) as exc:
        read_image(io.BytesIO(data))
    assert (exc.value.index, exc.value.offset) == (index + (1 if extra else 0), offset + len(extra))


@pytest.mark.parametrize("family", [2, 10])
def test_file_tcp_after_an_established_tcp_socket_is_read(family):
    data, _, _ = _with_file(FileType.INET_SOCKET, _socket_rec(family, 6, 1) + _TCP_REC)
    obj = read_image(io.BytesIO(data)).obj(99)
    assert [r.type for r in obj.extra] == [RecType.FILE_SOCKET, RecType.FILE_TCP]
