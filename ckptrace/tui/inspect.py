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
    if not os.isatty(1):
        raise UsageError("inspect is interactive: its output must be a terminal "
                         "(for text, use `ckptrace show` or `ckptrace decode`)")
    if os.isatty(0):
        return
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        raise UsageError("inspect is interactive: it needs a terminal (no /dev/tty)") from None
    os.dup2(tty, 0)
    os.close(tty)


def main(args) -> int:
    if args.image != "-":
        keyboard_from_tty()  # before indexing a large image: fail fast without a terminal
    state = load(args.image)
    if args.image == "-":
        keyboard_from_tty()  # after: the image is read from stdin first
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
