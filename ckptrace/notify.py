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
        os.makedirs(base, mode=0o755, exist_ok=True)
        tmp = os.path.join(base, f".{ns}.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(f"{stamp}\n")
        os.replace(tmp, os.path.join(base, str(ns)))
    except OSError:
        pass


def last_dump(ns: int, *, base: str = DUMPS_DIR) -> int | None:
    """Monotonic timestamp (ns) of the latest dump of `ns`, or None if never dumped."""
    try:
        with open(os.path.join(base, str(ns))) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
