"""One live status line on stderr for long work (dump, restore): only on a terminal, refreshed at
most ten times a second, never wrapped (a wrapped line is drawn again below itself), gone when the
work ends."""

from __future__ import annotations

import time


class ProgressLine:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = None
        self.t0 = time.monotonic()
        self.last = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live("", console=Console(stderr=True), transient=True, refresh_per_second=10)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def due(self) -> bool:
        """Whether a new line would be shown now (callers skip building one otherwise)."""
        if self.live is None:
            return False
        now = time.monotonic()
        if now - self.last < 0.1:
            return False
        self.last = now
        return True

    def show(self, markup: str) -> None:
        if self.live is None:
            return
        from rich.text import Text

        line = Text.from_markup(markup, overflow="ellipsis")
        line.no_wrap = True
        self.live.update(line)
