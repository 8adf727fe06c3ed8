"""The standard fds ckptrace was started without: the process-wide fact the commands that read
or write a standard stream (`dump -o -`, `restore -`, `show -`...) ask about. The CLI records it
first thing (cli.main), before any file ckptrace opens could take those numbers."""

from __future__ import annotations

import os

# Which of fds 0-2 the process was started without (see reserve_standard_fds).
_closed_at_start: frozenset[int] = frozenset()


def reserve_standard_fds() -> frozenset[int]:
    """Put /dev/null on whichever of fds 0, 1 and 2 the process was started without, and return
    those. Otherwise the first files ckptrace opens take those numbers: with `>&-`, dump --kill's
    temporary check file became fd 1 and the image, written to fd 1, overwrote it (and it the
    image). The commands ask `closed_at_start` where a standard stream itself is the input or
    output (`dump -o -`, `restore -`) and refuse."""
    global _closed_at_start
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):  # ascending: open() takes the lowest free number, this one
        new = os.open(os.devnull, os.O_RDWR)
        if new != fd:
            os.dup2(new, fd)
            os.close(new)
        os.set_inheritable(fd, True)  # what children (demo's) get instead of a closed fd
    _closed_at_start = frozenset(closed) | _closed_at_start
    return _closed_at_start


def closed_at_start(fd: int) -> bool:
    """Whether standard fd `fd` was closed when ckptrace started (now /dev/null), or is closed
    now (when the commands run without `main`)."""
    if fd in _closed_at_start:
        return True
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False
