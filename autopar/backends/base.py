"""The small interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

__all__ = ["Backend"]


class Backend(Protocol):
    """Runs a function over items; results always come back in input order for ``map``."""

    name: str

    def map(
        self,
        func: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        start: int,
        n_jobs: int,
        chunksize: int,
    ) -> list[Any]:
        """Results of ``func`` on ``items[start:]``, in order."""
        ...

    def imap(
        self,
        func: Callable[[Any], Any],
        source: Iterator[Any],
        *,
        offset: int,
        n_jobs: int,
        chunksize: int,
        ordered: bool,
    ) -> Iterator[Any]:
        """Results of ``func`` on the rest of ``source`` (whose first index is ``offset``)."""
        ...
