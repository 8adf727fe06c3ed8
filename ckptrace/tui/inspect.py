"""`ckptrace inspect FILE|-`: index the image (page data stays on disk), then browse it."""

from __future__ import annotations

import os

from ..errors import CkptError, UsageError
from ..image.reader import read_image
from ..image.stream import open_seekable
from .state import InspectState


def load(path: str) -> InspectState:
    """Open and validate `path` (stdin is spooled to a 0600 temporary file first)."""
    f = open_seekable(path)
    try:
        img = read_image(f)
    except BaseException:
        f.close()
        raise
    return InspectState(img, f)


def keyboard_from_tty() -> None:
    """Keys must come from the terminal: when stdin is not one (the image came through it, or it
    was redirected), put /dev/tty on fd 0 (as `less` does) so that textual reads the keyboard.
    The screen must be a terminal too: drawn into a file or a pipe, the app would run on unseen
    (and, with no keyboard, for ever)."""
    tty = _open_tty()
    if tty is not None:
        os.dup2(tty, 0)
        os.close(tty)


def _open_tty() -> int | None:
    """A descriptor of the controlling terminal when stdin is not one (None when it is); a
    UsageError when there is no screen or keyboard to be had."""
    if not os.isatty(1):
        raise UsageError("inspect is interactive: its output must be a terminal "
                         "(for text, use `ckptrace show` or `ckptrace decode`)")
    if os.isatty(0):
        return None
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        raise UsageError("inspect is interactive: it needs a terminal (no /dev/tty)") from None


def _is_stdin(path: str) -> bool:
    """Whether `path` opens what fd 0 is (`/dev/stdin`, `/proc/self/fd/0`, or the very file
    redirected in): the keyboard must not be put on fd 0 before the image is read through it."""
    try:
        a, b = os.stat(path), os.fstat(0)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def main(args) -> int:
    stdin = args.image == "-" or _is_stdin(args.image)
    if not stdin:
        keyboard_from_tty()  # before indexing a large image: fail fast without a terminal
    else:
        # the image comes through stdin, read first; but fail before reading it, not after
        tty = _open_tty()
        if tty is not None:
            os.close(tty)
    state = load(args.image)
    if stdin:
        keyboard_from_tty()  # now that the image is read from stdin
    from .app import InspectApp  # textual only for this command, never for `ckptrace --help`

    app = InspectApp(state, name=args.image)
    try:
        app.run()
    finally:
        state.f.close()
    if app.return_code:  # the app crashed (textual sets 1): say so, and fail
        raise CkptError(f"the viewer failed: {_one_line(app.failure)} (a bug in ckptrace: please report it)")
    return 0


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "it ended with an error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
