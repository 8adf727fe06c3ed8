"""Generates the record tables of docs/format.md from the declarations in records.py.

    python -m ckptrace.image.docgen --write docs/format.md

rewrites the part between the BEGIN/END markers; tests/test_records.py fails when the file is
stale, so the documented offsets can never drift from the code.
"""

from __future__ import annotations

import struct
import sys

from .records import HDR_SIZE, MAX_PAGES_PER_RECORD, RECORDS, Payload, RecordType

BEGIN = "<!-- BEGIN GENERATED RECORD TABLES (python -m ckptrace.image.docgen --write docs/format.md) -->"
END = "<!-- END GENERATED RECORD TABLES -->"

CTYPES = {"B": "u8", "H": "u16", "h": "s16", "I": "u32", "i": "s32", "Q": "u64", "q": "s64"}


def _layout(fields, start: int) -> list[tuple[int, str, str, str]]:
    rows = []
    off = start
    for f in fields:
        size = struct.calcsize("<" + f.code)
        ctype = f"pad[{size}]" if f.is_pad else CTYPES.get(f.code, f.code)
        names = ""
        if f.names and not f.is_pad:
            items = list(f.names.items())
            ext = [(k, v) for k, v in items if f.seed_max is not None and k > f.seed_max]
            names = _names([(k, v) for k, v in items if (k, v) not in ext], f.hint, 12)
            if ext:
                names += "; ckptrace extensions, not in the seed: " + _names(ext, f.hint, len(ext))
        if f.doc:
            names = f"{names}; {f.doc}" if names else f.doc
        rows.append((off, ctype, "" if f.is_pad else f.name, names))
        off += size
    return rows


def _names(items, hint: str, limit: int) -> str:
    text = ", ".join(f"{v}={k:#x}" if hint == "flags" else f"{k}={v}" for k, v in items[:limit])
    return text + (", ..." if len(items) > limit else "")


def _len_rule(rt: RecordType) -> str:
    if rt.payload is Payload.NONE:
        older = " or ".join(str(HDR_SIZE + o) for o in rt.older)
        return f"{rt.size}" + (f" (also {older}: images of older ckptrace versions)" if older else "")
    if rt.payload is Payload.PAGES:
        return f"{rt.size} + n*4096, 0 <= n <= {MAX_PAGES_PER_RECORD} (n = 0 only with vaddr 0xffffffffffffffff)"
    if rt.exact_payload is not None:
        return f"{rt.size + rt.exact_payload}"
    if rt.payload is Payload.ENTRIES:
        assert rt.entry_st is not None
        count = f" ({rt.count_field} entries)" if rt.count_field else ""
        return f"{rt.size} + n*{rt.entry_st.size}{count}, at most {rt.size + rt.max_payload}"
    kind = "NUL-terminated string" if rt.payload is Payload.CSTRING else "bytes"
    return f"{rt.size} + {kind}, at most {rt.size + rt.max_payload}"


def render() -> str:
    out = [BEGIN, ""]
    for rt in sorted(RECORDS.values(), key=lambda r: r.type):
        out += [f"### {rt.name} ({int(rt.type)})", "", rt.doc, "", f"`len`: {_len_rule(rt)}", "",
                "| offset | type | field | values |", "|---:|---|---|---|",
                # the seed's `struct ckpt_hdr h` (a record's own field may be called type too)
                "| 0 | u32 | h.type | the record type |", "| 4 | u32 | h.len | the record's length, header included |"]
        out += [f"| {o} | {t} | {n} | {v} |" for o, t, n, v in _layout(rt.fields, HDR_SIZE)]
        if rt.payload is Payload.ENTRIES:
            out += ["", f"Each entry ({rt.entry_st.size} bytes):", "", "| offset | type | field | values |",
                    "|---:|---|---|---|"]
            out += [f"| {o} | {t} | {n} | {v} |" for o, t, n, v in _layout(rt.entry, 0)]
        elif rt.payload is not Payload.NONE:
            out += [f"| {rt.size} | {rt.payload.value} | payload | |"]
        out.append("")
    out.append(END)
    return "\n".join(out)


def splice(doc: str) -> str:
    head, sep, rest = doc.partition(BEGIN)
    if not sep:
        raise ValueError("docs/format.md lacks the BEGIN marker")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise ValueError("docs/format.md lacks the END marker")
    return head + render() + tail


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--write":
        with open(argv[1]) as f:
            doc = f.read()
        with open(argv[1], "w") as f:
            f.write(splice(doc))
        return 0
    sys.stdout.write(render() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
