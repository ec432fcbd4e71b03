"""The chunk pipeline every backend shares: cut, pickle, evaluate, translate, collect.

A backend only moves chunks (a pool's task queue, a cluster's futures); what a
chunk is, how its items and results are pickled so that a failure names the item,
the loop that evaluates it, how a failure becomes the exception the caller sees,
and the bounded drivers that collect results in order or as they come, live here
once.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import RemoteTraceback, UnpicklableError
from ..notes import add_note, item_index
from ..serialization import dumps, pickle_problem
from .base import Run
from .failures import ItemFailure

__all__ = [
    "chunk_bounds",
    "chunk_slices",
    "collect",
    "evaluate",
    "pickle_chunk",
    "pickle_values",
    "span",
    "stream",
    "stream_chunks",
    "translate_failure",
]

#: How a result that cannot be pickled in a worker is named.
RESULT_CANNOT = "the result of item {index} cannot be sent back from the worker: {problem}"


def span(start: int, count: int) -> str:
    """``item 7`` or ``items 7..9``: how errors name a chunk's items."""
    return f"item {start}" if count == 1 else f"items {start}..{start + count - 1}"


def pickle_values(values: list[Any], start: int, cannot: str) -> bytes:
    """Pickle a chunk's items or results as one list, naming the first that cannot be.

    ``cannot`` is formatted with ``index`` and ``problem``. Whole chunks are pickled
    at once (per-call pickling overhead is paid once); only a failure walks the items.
    """
    try:
        return dumps(values)
    except Exception:
        for offset, value in enumerate(values):
            problem = pickle_problem(value)
            if problem is not None:
                raise UnpicklableError(cannot.format(index=start + offset, problem=problem)) from None
        raise


def pickle_chunk(chunk: Sequence[Any], start: int, where: str = "a worker") -> bytes:
    """Pickle a chunk in the caller, before it is sent: a bad item is named here."""
    return pickle_values(list(chunk), start, f"item {{index}} cannot be sent to {where}: {{problem}}")


def chunk_bounds(end: int, start: int, chunksize: int, skip: Sequence[int] = ()) -> Iterator[tuple[int, int]]:
    """``(first, stop)`` index bounds of the chunks of ``range(start, end)``.

    Positions in ``skip`` (sorted; items the sampler already evaluated) are left
    out: a chunk ends before each, so every chunk is a contiguous run of real
    positions and every index a worker reports is the item's own.
    """
    holes = [p for p in skip if start <= p < end]
    holes.append(end)
    first = start
    for hole in holes:
        for begin in range(first, hole, chunksize):
            yield begin, min(begin + chunksize, hole)
        first = hole + 1


def chunk_slices(
    items: Sequence[Any], start: int, chunksize: int, skip: Sequence[int] = ()
) -> Iterator[tuple[int, Sequence[Any]]]:
    """``(first index, items)`` slices of ``items[start:]`` (see :func:`chunk_bounds`),
    made only as they are asked for."""
    for begin, stop in chunk_bounds(len(items), start, chunksize, skip):
        yield begin, items[begin:stop]


def stream_chunks(source: Iterator[Any], offset: int, chunksize: int) -> Iterator[tuple[int, list[Any]]]:
    """``(first index, items)`` chunks read from ``source`` only as they are asked for."""
    first = offset
    while chunk := list(itertools.islice(source, chunksize)):
        yield first, chunk
        first += len(chunk)


def evaluate(
    func: Callable[[Any], Any], items: list[Any], start: int, before_item: Callable[[], None] | None = None
) -> list[Any]:
    """The worker loop: ``func`` on each item, a failure wrapped with the item it hit.

    ``BaseException`` is caught, so a ``SystemExit`` in the function is reported as
    a serial loop would raise it instead of ending the worker.
    """
    results: list[Any] = []
    append = results.append
    index = start
    for item in items:
        if before_item is not None:
            before_item()
        try:
            append(func(item))
        except BaseException as exc:  # noqa: BLE001 - SystemExit too must reach the caller
            raise ItemFailure.capture(exc, index, item) from None
        index += 1
    return results


def translate_failure(failure: BaseException) -> BaseException:
    """The exception the caller sees for a chunk that failed in a worker.

    The function's own exception, with the worker's traceback as ``__cause__`` and a
    note naming the item; anything else (an :class:`UnpicklableError`) as it is.
    """
    if not isinstance(failure, ItemFailure):
        return failure
    original = failure.exc
    original.__cause__ = RemoteTraceback(failure.tb)
    add_note(original, f"autopar: raised while processing item {failure.index}: {failure.item_repr}")
    return original


def collect(
    run: Run,
    submit: Callable[[int, Sequence[Any]], int],
    chunks: Iterable[tuple[int, Sequence[Any]]],
    *,
    start: int,
    total: int,
    in_flight: int,
    bytes_in_flight: int,
    progress: Callable[[int], None] | None,
    before_send: Callable[[], None] | None = None,
    first: tuple[int, int] | None = None,
) -> list[Any]:
    """Results of every chunk in input order, with at most ``in_flight`` chunks (and
    about ``bytes_in_flight`` pickled bytes) sent and not yet received, so a large
    input is never pickled whole ahead of the workers. ``submit`` returns the bytes
    it sent; ``before_send`` may raise (a deadline) before each further chunk;
    ``first`` is a chunk already sent, as ``(start, bytes)``.

    When an item fails, nothing more is sent, and the chunks before it are still
    received: the exception raised is the first failing item's in input order, as
    a serial loop would raise, not the first to arrive.
    """
    results: list[Any] = [None] * total
    sizes: dict[int, int] = {}
    if first is not None:
        sizes[first[0]] = first[1]
    failure: tuple[int, BaseException] | None = None

    def receive() -> None:
        nonlocal failure
        try:
            begin, values = run.receive()
        except Exception as exc:
            index = item_index(exc)
            failed = max((b for b in sizes if index is not None and b <= index), default=None)
            if index is None or failed is None:
                raise  # not an item's failure (a crash, a timeout): at once
            del sizes[failed]
            if failure is None or index < failure[0]:
                failure = (index, exc)
            return
        sizes.pop(begin, None)
        results[begin - start : begin - start + len(values)] = values
        if progress is not None:
            progress(len(values))

    for begin, chunk in chunks:
        while sizes and (len(sizes) >= in_flight or sum(sizes.values()) >= bytes_in_flight):
            receive()
        if failure is not None:
            break
        if before_send is not None and sizes:
            before_send()
        sizes[begin] = submit(begin, chunk)
    while len(run.pending) and (failure is None or any(b < failure[0] for b in sizes)):
        receive()
    if failure is not None:
        raise failure[1]
    return results


def stream(
    run: Run,
    submit: Callable[[int, Sequence[Any]], Any],
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
