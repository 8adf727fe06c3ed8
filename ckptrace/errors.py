"""The small exception hierarchy every ckptrace module raises.

Library code raises these; only `ckptrace.cli` turns them into a one-line message and an exit
status. OS errors are mapped in one place (`from_oserror`) so that callers see "no such process"
or "permission denied" as the same types whether they came from /proc, ptrace or netlink.
"""

from __future__ import annotations

import errno


class CkptError(Exception):
    """Base of every error ckptrace reports to a user. `exit_status` is what the CLI returns."""

    exit_status = 1


class UsageError(CkptError):
    """The command line or its arguments are wrong (bad namespace id, missing file, ...)."""

    exit_status = 2


class ImageError(CkptError):
    """A checkpoint image is malformed. Carries where: record index and byte offset."""

    def __init__(self, what: str, *, index: int | None = None, offset: int | None = None):
        self.what = what
        self.index = index
        self.offset = offset
        where = []
        if index is not None:
            where.append(f"record {index}")
        if offset is not None:
            where.append(f"offset {offset}")
        prefix = f"bad image at {', '.join(where)}: " if where else "bad image: "
        super().__init__(prefix + what)


class ImageReadError(ImageError):
    """The image could not be read at all there (an I/O error), as opposed to read and found
    malformed."""


class Terminated(BaseException):
    """SIGTERM (or another terminating signal) arrived: the command undid what it had begun.

    Not a CkptError, nor an Exception: a BaseException, as KeyboardInterrupt (SIGINT) is. Raised
    by a signal handler, it lands inside whatever step runs, and a step that takes a failed read
    for a task gone (`except CkptError`) swallowed it and went on: a dump whose reader had
    stopped reading then stayed blocked on it for good."""

    exit_status = 143


class TimedOut(CkptError):
    """A step did not end within the time it was given (a watchdog): the command undid it."""


class NoSuchProcess(CkptError):
    """A process or thread vanished (or never existed)."""


class AccessDenied(CkptError):
    """The kernel refused access (not root, missing capability, LSM, foreign tracer)."""


class Unsupported(CkptError):
    """The target holds state ckptrace cannot checkpoint or restore faithfully. `transient`: the
    state is a passing one (a connection not accepted yet, a signal or data that arrived during
    the dump, a TCP connection being closed), so the same dump may well succeed a moment later
    (`dump --retry`)."""

    def __init__(self, what: str, *, transient: bool = False):
        super().__init__(what)
        self.transient = transient


class Passing(str):
    """A problem text (restore's validation) describing a passing state of the target: an
    Unsupported made of such problems only is `transient`."""


class HostUnsupported(CkptError):
    """This host lacks a kernel facility the command needs (BPF, tracepoints, userfaultfd...)."""


class OutputClosed(CkptError):
    """The reader of the image (a pipe or socket) went away before it had the whole image."""


class KernelError(CkptError):
    """Any other failed system call, with errno and what was being done."""

    def __init__(self, what: str, err: int):
        self.errno = err
        super().__init__(f"{what}: {errno_text(err)}")


def errno_text(err: int) -> str:
    """`EACCES (Permission denied)`: how every message that carries an errno shows it."""
    return f"{errno.errorcode.get(err, err)} ({_strerror(err)})"


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)


def from_oserror(exc: OSError, what: str) -> CkptError:
    """Map an OSError to the hierarchy; `what` says what was being attempted (and on which pid)."""
    err = exc.errno or 0
    if err in (errno.ESRCH, errno.ENOENT):
        return NoSuchProcess(f"{what}: no such process or file")
    if err in (errno.EPERM, errno.EACCES):
        return AccessDenied(f"{what}: permission denied (are you root? is it traced by another tool?)")
    return KernelError(what, err)


def check_errno(ret: int, what: str) -> int:
    """For ctypes calls made with use_errno=True: raise the mapped error when ret is -1."""
    if ret == -1:
        import ctypes

        err = ctypes.get_errno()
        raise from_oserror(OSError(err, _strerror(err)), what)
    return ret
