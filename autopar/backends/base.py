"""The small interface every backend implements, and what a run in flight offers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any, Protocol

from ..serialization import Shipment

__all__ = ["Backend", "Run", "Sendable"]

#: What a backend runs: a function, or one already pickled for workers.
Sendable = Callable[[Any], Any] | Shipment


class Backend(Protocol):
    """Runs a function over items; ``map`` returns results in input order.

    Every backend takes what callers really pass: ``timeout`` (seconds for the
    whole call), ``progress`` (called with the count of items finished since its
    last call: each chunk's, or a few chunks' at once) and,
    for ``map``, ``busy`` (filled with each worker's computing seconds, when the
    backend can tell).
    """

    name: str

    def map(
        self,
        func: Sendable,
        items: Sequence[Any],
        *,
        start: int,
        n_jobs: int,
        chunksize: int,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
        busy: dict[int, float] | None = None,
        skip: Sequence[int] = (),
    ) -> list[Any]:
        """Results of ``func`` on ``items[start:]``, in order; positions in ``skip``
        (sorted, evaluated while sampling) are not run and hold None."""
        ...

    def imap(
        self,
        func: Sendable,
        source: Iterator[Any],
        *,
        offset: int,
        n_jobs: int,
        chunksize: int,
        ordered: bool,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Any]:
        """Results of ``func`` on the rest of ``source`` (whose first index is ``offset``)."""
        ...


class Run(Protocol):
    """One call's in-flight chunks on a backend: what the chunk drivers need."""

    @property
    def pending(self) -> Sized:
        """Chunks submitted and not yet received."""
        ...

    def receive(self) -> tuple[int, list[Any]]:
        """The next finished chunk as ``(start, results)``; raises its failure."""
        ...
