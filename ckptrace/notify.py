"""How `watch` learns that `dump` captured a namespace: the dumper touches one small file per
namespace under /run/ckptrace/dumps/, named by the namespace's inode and holding the dump's
CLOCK_MONOTONIC timestamp (ns). A watcher compares it against the last one it saw and then resets
that namespace's dirty-page counts. Files, not sockets: a dump must never block on a watcher.
"""

from __future__ import annotations

import os
import time

DUMPS_DIR = "/run/ckptrace/dumps"


def dump_done(ns: int, *, base: str = DUMPS_DIR, stamp_ns: int | None = None) -> None:
    """Record that namespace `ns` was just dumped. Best effort: failures are ignored."""
    stamp = time.monotonic_ns() if stamp_ns is None else stamp_ns
    try:
        _make_dirs(base)
        tmp = os.path.join(base, f".{ns}.{os.getpid()}")
        # 0644 whatever the umask: a stamp anybody could write would reset every watch's counts
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, f"{stamp}\n".encode())
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
    try:
        with open(os.path.join(base, str(ns))) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
