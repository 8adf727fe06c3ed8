"""`ckptrace inspect FILE|-`: index the image (page data stays on disk), then browse it."""

from __future__ import annotations

from ..image.reader import read_image
from .source import open_seekable
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


def main(args) -> int:
    state = load(args.image)
    from .app import InspectApp  # textual only for this command, never for `ckptrace --help`

    try:
        InspectApp(state, name=args.image).run()
    finally:
        state.f.close()
    return 0
