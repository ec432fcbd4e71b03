"""Progress bars that count items (not chunks), on stderr, for known or unknown lengths.

``tqdm`` is used when installed (``pip install autopar[progress]``); otherwise a
plain one-line counter is redrawn at most five times a second, so even a tight
serial loop pays almost nothing for it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

__all__ = ["Progress", "make_progress"]

#: The plain counter redraws at most this often, in seconds.
_REDRAW_S = 0.2


class Progress(Protocol):
    """Something that counts finished items."""

    def update(self, n: int) -> None:
        """Count ``n`` more finished items."""

    def close(self) -> None:
        """Finish the bar (draw the final count)."""


class PlainProgress:
    """``name: 1,234/5,000 items (24.7 %) 3.2 s`` rewritten in place on stderr."""

    def __init__(self, total: int | None, desc: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.desc = desc
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._next_draw = 0.0
        self._closed = False

    def _draw(self, end: str = "") -> None:
        elapsed = time.monotonic() - self._start
        if self.total:
            share = 100.0 * self.count / self.total
            text = f"{self.desc}: {self.count:,}/{self.total:,} items ({share:.1f} %) {elapsed:.1f} s"
        else:
            text = f"{self.desc}: {self.count:,} items {elapsed:.1f} s"
        self.stream.write("\r" + text + end)
        self.stream.flush()

    def update(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now >= self._next_draw:
            self._next_draw = now + _REDRAW_S
            self._draw()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._draw("\n")


class _TqdmProgress:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def make_progress(total: int | None, desc: str, *, prefer_tqdm: bool = True) -> Progress:
    """A bar for ``total`` items (None when unknown): tqdm if installed, else plain."""
    if prefer_tqdm:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return _TqdmProgress(tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True))
    return PlainProgress(total, desc)
