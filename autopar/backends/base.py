"""The small interface every backend implements."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any, Protocol

__all__ = ["Backend", "Run", "span", "stream", "stream_chunks"]


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


class Run(Protocol):
    """One call's in-flight chunks on a backend: what :func:`stream` drives."""

    @property
    def pending(self) -> Sized:
        """Chunks submitted and not yet received."""
        ...

    def receive(self) -> tuple[int, list[Any]]:
        """The next finished chunk as ``(start, results)``; raises its failure."""
        ...


def stream(
    run: Run,
    submit: Callable[[int, Sequence[Any]], None],
    chunks: Iterable[tuple[int, Sequence[Any]]],
    *,
    in_flight: int,
    held: int,
    ordered: bool,
    progress: Callable[[int], None] | None,
) -> Iterator[Any]:
    """Results of ``chunks`` as they finish (``ordered``: in input order), reading the
    input only while fewer than ``in_flight`` chunks are out and fewer than ``held``
    are out or waiting for an earlier one: an endless input is never read ahead."""
    chunk_iter = iter(chunks)
    done: dict[int, list[Any]] = {}
    order: collections.deque[int] = collections.deque()  # starts, in submission order
    exhausted = False
    while True:
        while not exhausted and len(run.pending) < in_flight and len(run.pending) + len(done) < held:
            nxt = next(chunk_iter, None)
            if nxt is None:
                exhausted = True
                break
            submit(nxt[0], nxt[1])
            if ordered:
                order.append(nxt[0])
        if not len(run.pending) and not done:
            return
        if len(run.pending):
            first, values = run.receive()
            if progress is not None:
                progress(len(values))
            if not ordered:
                yield from values
                continue
            done[first] = values
        while order and order[0] in done:
            yield from done.pop(order.popleft())


def span(start: int, count: int) -> str:
    """``item 7`` or ``items 7..9``: how errors name a chunk's items."""
    return f"item {start}" if count == 1 else f"items {start}..{start + count - 1}"


def stream_chunks(source: Iterator[Any], offset: int, chunksize: int) -> Iterator[tuple[int, list[Any]]]:
    """``(first index, items)`` chunks read from ``source`` only as they are asked for."""
    first = offset
    while chunk := list(itertools.islice(source, chunksize)):
        yield first, chunk
        first += len(chunk)
