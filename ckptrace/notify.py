"""How `watch` learns that `dump` captured a namespace: the dumper touches one small file per
namespace under /run/ckptrace/dumps/, named by the namespace's inode and holding the dump's
CLOCK_MONOTONIC timestamp (ns) and, on a second line, the image file's path (empty when the image
went to a pipe or standard output). A watcher compares it against the last one it saw and then resets
that namespace's dirty-page counts. Files, not sockets: a dump must never block on a watcher.
"""

from __future__ import annotations

import os
import time

DUMPS_DIR = "/run/ckptrace/dumps"


def dump_done(ns: int, *, base: str = DUMPS_DIR, stamp_ns: int | None = None, image: str = "") -> None:
    """Record that namespace `ns` was just dumped, into `image` (a path, or ""). Best effort:
    failures are ignored."""
    stamp = time.monotonic_ns() if stamp_ns is None else stamp_ns
    try:
        _make_dirs(base)
        tmp = os.path.join(base, f".{ns}.{os.getpid()}")
        # 0644 whatever the umask: a stamp anybody could write would reset every watch's counts
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            # (a path is any bytes but NUL: one with a newline is not said rather than cut)
            os.write(fd, f"{stamp}\n".encode() + (os.fsencode(image) + b"\n" if "\n" not in image else b""))
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(base, str(ns)))
    except OSError:
        pass


def _make_dirs(path: str) -> None:
    """path and its missing parents, 0755 whatever the umask (os.makedirs gives the parents the
    umask's mode)."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path and not os.path.isdir(parent):
        _make_dirs(parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o755)


def last_dump(ns: int, *, base: str = DUMPS_DIR) -> int | None:
    """Monotonic timestamp (ns) of the latest dump of `ns`, or None if never dumped."""
    got = last_dump_at(ns, base=base)
    return None if got is None else got[0]


def last_dump_at(ns: int, *, base: str = DUMPS_DIR) -> tuple[int, str] | None:
    """(monotonic timestamp in ns, image path or "") of the latest dump of `ns`, or None if never
    dumped. The path is as the dumper gave it, any bytes (surrogate-escaped)."""
    try:
        with open(os.path.join(base, str(ns)), "rb") as f:
            lines = f.read().split(b"\n")
        return int(lines[0].strip() or 0), os.fsdecode(lines[1]) if len(lines) > 2 else ""
    except (OSError, ValueError):
        return None
