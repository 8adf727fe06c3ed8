"""Opening an image so that page data can be read later, by offset.

The index keeps only file offsets of page runs, so the input must be seekable. Standard input
(a pipe, usually) is first copied to an anonymous temporary file created 0600: images hold
process memory, i.e. secrets, and must never become readable by others, even briefly.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from typing import BinaryIO

from ..image.stream import open_image


def _is_seekable_file(f: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):
        return False


def spool(src: BinaryIO) -> BinaryIO:
    """Copy `src` to an unlinked 0600 temporary file and return it, positioned at 0."""
    # TemporaryFile uses O_TMPFILE or mkstemp + unlink: 0600 and nameless either way.
    tmp = tempfile.TemporaryFile(prefix="ckptrace-", dir=os.environ.get("TMPDIR"))
    os.fchmod(tmp.fileno(), 0o600)
    shutil.copyfileobj(src, tmp, 1 << 20)
    tmp.flush()
    tmp.seek(0)
    return tmp


def open_seekable(path: str) -> BinaryIO:
    """`open_image(path)`, spooled to a temporary file when it is not a regular file (stdin, FIFO)."""
    f = open_image(path)
    if _is_seekable_file(f):
        return f
    try:
        return spool(f)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
