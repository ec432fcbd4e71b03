"""The process backend: a real ``multiprocessing.Pool``, watched so it cannot hang.

Chunks go out with ``apply_async``; completions come back through a queue. While
waiting, the parent checks every worker's exit code, so a worker killed mid-chunk
(which a bare Pool silently replaces, losing the chunk: CPython gh-66587) raises
:class:`~autopar.errors.WorkerCrashedError` instead of hanging forever. On any
error the pool is terminated at once; on success it is closed and joined, so no
worker outlives the call.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import queue
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import RemoteTraceback, UnpicklableError, WorkerCrashedError
from ..notes import add_note
from ..system import mark_worker
from ._worker import ItemFailure, run_chunk

__all__ = ["PoolRun", "ProcessBackend"]

logger = logging.getLogger("autopar")

#: How often the parent checks worker exit codes while no result arrives. A dead
#: worker is reported within this delay; each check is one waitpid per worker.
POLL_S = 0.05
#: Chunks in flight per worker for streams (``imap``): enough that a worker never
#: waits for the parent, few enough that an endless input is not read ahead.
STREAM_CHUNKS_PER_WORKER = 4
#: Results held for ordered streams beyond those in flight, per worker, before
#: the parent stops reading ahead and waits for the slow chunk.
STREAM_BUFFER_PER_WORKER = 16


# Raised by a Pool worker whose result cannot be pickled (missing from typeshed).
_MaybeEncodingError: type[Exception] = getattr(multiprocessing.pool, "MaybeEncodingError")  # noqa: B009


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is gone"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _span(start: int, count: int) -> str:
    return f"item {start}" if count == 1 else f"items {start}..{start + count - 1}"


class PoolRun:
    """One pool for one call: submit chunks, receive them, detect dead workers."""

    def __init__(self, ctx: Any, n_jobs: int) -> None:
        self.pool: multiprocessing.pool.Pool = ctx.Pool(n_jobs, initializer=mark_worker)
        # Private, but the only way to see a dead worker: Pool replaces it silently.
        self.workers: list[Any] = list(self.pool._pool)
        self.done: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
        self.pending: dict[int, int] = {}
        self._closed = False

    # -- sending and receiving ---------------------------------------------------------

    def submit(self, func: Callable[[Any], Any], start: int, chunk: Sequence[Any]) -> None:
        """Send one chunk (its first item's index is ``start``)."""
        self.pending[start] = len(chunk)
        self.pool.apply_async(
            run_chunk,
            (func, start, chunk),
            callback=self._succeeded,
            error_callback=functools.partial(self._failed, start),
        )

    def _succeeded(self, result: tuple[int, list[Any]]) -> None:
        self.done.put((result[0], True, result[1]))

    def _failed(self, start: int, exc: BaseException) -> None:
        self.done.put((start, False, exc))

    def receive(self) -> tuple[int, list[Any]]:
        """The next finished chunk as ``(start, results)``; raises its failure."""
        while True:
            try:
                start, ok, payload = self.done.get(timeout=POLL_S)
            except queue.Empty:
                self._check_workers()
                continue
            count = self.pending.pop(start, 0)
            if ok:
                return start, payload
            raise self._translate(payload, start, count)

    def _check_workers(self) -> None:
        for process in self.workers:
            code = process.exitcode
            if code is not None:
                spans = ", ".join(_span(s, c) for s, c in sorted(self.pending.items())[:5])
                msg = (
                    f"worker pid {process.pid} {_describe_exit(code)} while {len(self.pending)} "
                    f"chunk(s) were unfinished ({spans}); their results are lost"
                )
                raise WorkerCrashedError(msg)

    @staticmethod
    def _translate(exc: BaseException, start: int, count: int) -> BaseException:
        """The exception the caller should see for a failed chunk."""
        if isinstance(exc, ItemFailure):
            original = exc.exc
            original.__cause__ = RemoteTraceback(exc.tb)
            add_note(original, f"autopar: raised while processing item {exc.index}: {exc.item_repr}")
            return original
        if isinstance(exc, _MaybeEncodingError):
            msg = f"a result of {_span(start, count)} cannot be sent back from the worker: {exc.args[0]}"
            err: BaseException = UnpicklableError(msg)
            err.__cause__ = exc
            return err
        # The task itself failed to pickle in the parent's task-handler thread.
        msg = f"{_span(start, count)} cannot be sent to a worker: {type(exc).__name__}: {exc}"
        err = UnpicklableError(msg)
        err.__cause__ = exc
        return err

    # -- shutting down -----------------------------------------------------------------

    def close(self, *, abort: bool) -> None:
        """Join the workers after success; terminate them at once after a failure."""
        if self._closed:
            return
        self._closed = True
        if abort:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def _chunks(items: Sequence[Any], start: int, chunksize: int) -> Iterator[tuple[int, Sequence[Any]]]:
    for first in range(start, len(items), chunksize):
        yield first, items[first : first + chunksize]


def _stream_chunks(source: Iterator[Any], offset: int, chunksize: int) -> Iterator[tuple[int, list[Any]]]:
    first = offset
    while True:
        chunk = list(itertools.islice(source, chunksize))
        if not chunk:
            return
        yield first, chunk
        first += len(chunk)


class ProcessBackend:
    """Runs chunks on a ``multiprocessing.Pool`` made with the given start method."""

    name = "process"

    def __init__(self, start_method: str) -> None:
        self.start_method = start_method
        self._ctx = multiprocessing.get_context(start_method)

    def open(self, n_jobs: int) -> PoolRun:
        """Start ``n_jobs`` workers (callers must ``close`` the run)."""
        return PoolRun(self._ctx, n_jobs)

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
        total = len(items) - start
        if total <= 0:
            return []
        results: list[Any] = [None] * total
        run = self.open(n_jobs)
        abort = True
        try:
            for first, chunk in _chunks(items, start, chunksize):
                run.submit(func, first, chunk)
            while run.pending:
                first, values = run.receive()
                results[first - start : first - start + len(values)] = values
            abort = False
        finally:
            run.close(abort=abort)
        return results

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
        """Stream results, reading ``source`` only a few chunks ahead of the workers."""
        return self._imap(func, _stream_chunks(source, offset, chunksize), n_jobs, ordered)

    def _imap(
        self,
        func: Callable[[Any], Any],
        chunks: Iterable[tuple[int, Sequence[Any]]],
        n_jobs: int,
        ordered: bool,
    ) -> Iterator[Any]:
        in_flight_cap = n_jobs * STREAM_CHUNKS_PER_WORKER
        held_cap = in_flight_cap + n_jobs * STREAM_BUFFER_PER_WORKER
        chunk_iter = iter(chunks)
        held: dict[int, list[Any]] = {}
        order: collections.deque[int] = collections.deque()  # starts, in submission order
        exhausted = False
        run = self.open(n_jobs)
        abort = True
        try:
            while True:
                while not exhausted and len(run.pending) < in_flight_cap and (len(run.pending) + len(held) < held_cap):
                    nxt = next(chunk_iter, None)
                    if nxt is None:
                        exhausted = True
                        break
                    run.submit(func, nxt[0], nxt[1])
                    if ordered:
                        order.append(nxt[0])
                if not run.pending and not held:
                    break
                if run.pending:
                    first, values = run.receive()
                    if not ordered:
                        yield from values
                        continue
                    held[first] = values
                while order and order[0] in held:
                    yield from held.pop(order.popleft())
            abort = False
        finally:
            run.close(abort=abort)
