"""The Dask backend: the same chunks, run as tasks on an existing ``distributed`` cluster.

``Client.map(f, items)`` makes one task per item, and each task costs a scheduler
round trip (a millisecond or more), so a map of cheap items on Dask is often far
slower than the plain loop. Chunking is therefore autopar's job here exactly as on
a local pool: each task runs :func:`_run_chunk` over a chunk of items, with the
chunk size planned from costs measured on the cluster itself
(:meth:`DaskBackend.measure_costs`).

What travels, and why:

* chunks go pickled by autopar (an unpicklable item is named before anything is
  sent) and results come back pickled by the worker (an unsendable result is named
  too); a failure in the user's function comes back as a *value*, so Dask neither
  truncates a long message (it rebuilds exceptions over 10 kB from text) nor loses
  the original type and arguments;
* a function heavier than :data:`SCATTER_FUNC_BYTES` pickled (a ``functools.partial``
  carrying an array) is scattered to every worker once and passed to each task as a
  future, instead of riding along with every task;
* every task has its own key (``pure=False`` semantics), so equal items or equal
  chunks are never merged into one computation.

A worker lost mid-chunk is Dask's to handle: the scheduler reruns the chunk on
another worker (``distributed.scheduler.allowed-failures`` times, 3 by default) and
then gives up with ``KilledWorker``, which becomes
:class:`~autopar.errors.WorkerCrashedError` naming the chunk's items. A cluster
with no workers at all makes tasks wait for one, as Dask does: ``timeout`` bounds
the call. Worker processes that run a chunk are marked as autopar workers, so a
``.map`` nested in the function runs serially there (Dask's worker processes are
daemons, which cannot start a pool anyway).

``distributed`` is imported only when a backend is made, so ``import autopar``
never pays its ~0.5 s import.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pickle
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    DaskUnavailableError,
    NoClientError,
    TaskTimeoutError,
    UnpicklableError,
    WorkerCrashedError,
)
from ..model import Costs
from ..notes import add_note
from ..serialization import Shipment, dumps
from ..system import mark_worker
from . import dask_cluster
from .base import Sendable
from .chunks import (
    RESULT_CANNOT,
    chunk_slices,
    evaluate,
    pickle_chunk,
    pickle_values,
    span,
    stream,
    stream_chunks,
    translate_failure,
)
from .dask_cluster import (  # the cluster-facing half; INSTALL_HINT and ClusterInfo are re-exported
    INSTALL_HINT,
    ClusterInfo,
    _active_client,
    _costs,
    _distributed,
    _origin,
)
from .failures import ItemFailure, pickle_failure

__all__ = [
    "INSTALL_HINT",
    "ClusterInfo",
    "DaskBackend",
    "DaskUnavailableError",
    "NoClientError",
]

#: A function whose pickle is larger than this is scattered to every worker once
#: and passed to tasks as a future: at ~1 ms per task already, 64 KiB more per task
#: starts to show, while scattering costs one extra round trip per ``map``.
SCATTER_FUNC_BYTES = 64 * 1024
#: A pickled chunk larger than this is scattered on its own instead of riding in
#: the task graph: Dask warns about graph messages over 10 MB
#: (``distributed.admin.large-graph-warning-threshold``).
INLINE_CHUNK_BYTES = 4 << 20
#: Chunks are submitted in ``Client.map`` batches of at most this many pickled
#: bytes: one graph message per batch, each under Dask's 10 MB warning.
BATCH_BYTES = 8 << 20
#: Chunks in flight per worker thread for streams (``imap``): a thread never waits
#: for the next submission, and an endless input is read only this far ahead.
STREAM_CHUNKS_PER_THREAD = 4
#: Results held for ordered streams beyond those in flight, per thread.
STREAM_BUFFER_PER_THREAD = 16


def _pickle_chunk(chunk: Sequence[Any], start: int) -> bytes:
    return pickle_chunk(chunk, start, "the cluster")


def _run_chunk(start: int, blob: bytes, fn: Callable[[Any], Any], origin: str) -> tuple[bool, bytes]:
    """Evaluate one pickled chunk on a worker: ``(True, pickled results)`` or ``(False, pickled failure)``.

    A worker in another process is marked as an autopar worker, so a ``.map``
    nested in the function runs serially there; ``origin`` (the client's host and
    pid) keeps a threads-only cluster in the client's own process unmarked.
    """
    if origin != _origin():
        mark_worker()
    func = getattr(fn, "_autopar_raw", fn)  # an @auto_parallel wrapper: call the raw function
    try:
        results = evaluate(func, pickle.loads(blob), start)
        return True, pickle_values(results, start, RESULT_CANNOT)
    except (ItemFailure, UnpicklableError) as failure:
        return False, pickle_failure(failure)


def _translate_failure(payload: bytes, start: int, count: int) -> BaseException:
    """The exception the caller sees for a chunk whose function raised."""
    try:
        failure = pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild the exception here
        msg = f"{span(start, count)} raised an exception that cannot be unpickled here: {type(exc).__name__}: {exc}"
        return UnpicklableError(msg)
    return translate_failure(failure)


@dataclass
class _Chunk:
    start: int
    count: int
    future: Any
    data: Any = None
    """The scattered chunk's future, for a chunk too big to ride in the graph."""


class _DaskRun:
    """One ``map`` or ``imap`` call: submit chunks, receive them, cancel the rest on failure."""

    def __init__(self, client: Any, func: Callable[[Any], Any], timeout: float | None) -> None:
        self._dist = _distributed()
        self.client = client
        self.origin = _origin()
        name = re.sub(r"[^A-Za-z0-9_]", "_", getattr(func, "__name__", type(func).__name__))[:40]
        self.prefix = f"autopar-{name}"
        self.pending: dict[str, _Chunk] = {}
        # Results are fetched by Dask's event loop as tasks finish; ``timeout`` is a
        # deadline for the whole call, counted from here.
        self.completed = self._dist.as_completed(
            loop=client.loop, with_results=True, raise_errors=False, timeout=timeout
        )
        try:
            blob = dumps(func)
        except Exception as exc:
            msg = f"the function cannot be sent to the cluster: {type(exc).__name__}: {exc}"
            raise UnpicklableError(msg) from exc
        self.func: Any = func
        self._func_future: Any = None
        if len(blob) > SCATTER_FUNC_BYTES:
            self._func_future = client.scatter(func, broadcast=True, hash=False)
            self.func = self._func_future

    def submit(self, chunks: Iterable[tuple[int, bytes, int]]) -> None:
        """Submit pickled chunks ``(start, blob, count)``, one task each, in few graph messages."""
        batch: list[tuple[int, bytes, int]] = []
        size = 0
        for chunk in chunks:
            if batch and size + len(chunk[1]) > BATCH_BYTES:
                self._submit_batch(batch)
                batch, size = [], 0
            batch.append(chunk)
            size += len(chunk[1]) if len(chunk[1]) <= INLINE_CHUNK_BYTES else 0
        if batch:
            self._submit_batch(batch)

    def _submit_batch(self, batch: list[tuple[int, bytes, int]]) -> None:
        big = [i for i, (_, blob, _) in enumerate(batch) if len(blob) > INLINE_CHUNK_BYTES]
        args: list[Any] = [blob for _, blob, _ in batch]
        if big:
            for i, future in zip(big, self.client.scatter([args[i] for i in big], hash=False), strict=True):
                args[i] = future
        keys = [f"{self.prefix}-{uuid.uuid4().hex}" for _ in batch]
        futures = self.client.map(
            _run_chunk,
            [start for start, _, _ in batch],
            args,
            fn=self.func,
            origin=self.origin,
            key=keys,
            pure=False,
        )
        for key, future, arg, (start, _, count) in zip(keys, futures, args, batch, strict=True):
            self.pending[key] = _Chunk(start, count, future, None if isinstance(arg, bytes) else arg)
        self.completed.update(futures)

    def receive(self) -> tuple[int, list[Any]]:
        """The next finished chunk as ``(start, results)``; raises its failure.

        Dask's ``as_completed`` waits in slices of 0.1 s, so Ctrl-C is seen at once.
        """
        while True:
            try:
                future, result = next(self.completed)
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes before 3.11
                spans = ", ".join(span(c.start, c.count) for c in sorted(self.pending.values(), key=_by_start)[:5])
                msg = f"timed out with {len(self.pending)} chunk(s) unfinished ({spans})"
                raise TaskTimeoutError(msg) from None
            chunk = self.pending.pop(future.key, None)
            if chunk is None:  # pragma: no cover - not a future of this run
                continue
            try:
                return chunk.start, self._unpack(chunk, future, result)
            finally:
                # Forget the task now, whatever Python objects still hold its future
                # (a traceback, the caller's frame): the scheduler then drops it.
                future.release()
                if chunk.data is not None:
                    chunk.data.release()

    def _unpack(self, chunk: _Chunk, future: Any, result: Any) -> list[Any]:
        where = span(chunk.start, chunk.count)
        if future.status == "error":
            _, exc, tb = result
            if isinstance(exc, self._dist.KilledWorker):
                msg = (
                    f"Dask gave up on {where}: {exc.allowed_failures + 1} workers died while running them "
                    f"(distributed.scheduler.allowed-failures is {exc.allowed_failures})"
                )
                raise WorkerCrashedError(msg) from exc
            add_note(exc, f"autopar: Dask could not run {where}")
            raise exc.with_traceback(tb)
        if future.cancelled():
            err = result if isinstance(result, BaseException) else self._dist.CancelledError(future.key)
            add_note(
                err, f"autopar: the task for {where} was cancelled outside autopar (client closed, scheduler lost?)"
            )
            raise err
        ok, payload = result
        if not ok:
            raise _translate_failure(payload, chunk.start, chunk.count)
        try:
            values: list[Any] = pickle.loads(payload)
        except Exception as exc:
            msg = f"the results of {where} cannot be unpickled here: {type(exc).__name__}: {exc}"
            raise UnpicklableError(msg) from exc
        return values

    def close(self, *, abort: bool) -> None:
        """Release the shared function; after a failure, cancel every unfinished chunk first."""
        futures = [c.future for c in self.pending.values()]
        futures += [c.data for c in self.pending.values() if c.data is not None]
        self.pending.clear()
        if self._func_future is not None:
            futures.append(self._func_future)
            self._func_future = None
        if abort and futures:
            with contextlib.suppress(Exception):  # a client already gone has nothing left to cancel
                self.client.cancel(futures)
        for future in futures:
            with contextlib.suppress(Exception):
                future.release()


def _callable(func: Sendable) -> Callable[[Any], Any]:
    """The function itself: Dask pickles what it sends (cloudpickle), once per task graph."""
    return func.func if isinstance(func, Shipment) else func


def _by_start(chunk: _Chunk) -> int:
    return chunk.start


def _chunks(items: Sequence[Any], start: int, chunksize: int, skip: Sequence[int]) -> Iterator[tuple[int, bytes, int]]:
    for first, chunk in chunk_slices(items, start, chunksize, skip):
        yield first, _pickle_chunk(chunk, first), len(chunk)


class DaskBackend:
    """Runs chunks as tasks on a ``distributed`` cluster, through its ``Client``.

    ``n_jobs`` does not limit ``map``: every chunk is submitted at once and Dask's
    scheduler hands them to worker threads as they free up (queuing them on the
    scheduler, not the workers), which is both the fastest and what Dask users
    expect. For ``imap`` it bounds read-ahead: ``n_jobs * STREAM_CHUNKS_PER_THREAD``
    chunks in flight. Pass the cluster's thread count (:meth:`cluster`).
    """

    name = "dask"

    def __init__(self, client: Any = None) -> None:
        dist = _distributed()
        self.client: Any = _active_client(dist) if client is None else client

    # -- the cluster and its costs -----------------------------------------------------

    def cluster(self) -> ClusterInfo:
        """Workers, threads and memory as the scheduler reports them (within
        :data:`~.dask_cluster.CLUSTER_INFO_TTL_S`: asking costs a round trip, ~1 ms, per ``.map``)."""
        return dask_cluster.cluster_info(self.client)

    def measure_costs(self) -> Costs:
        """Per-task overhead and per-byte transfer cost on this cluster, measured once per fingerprint
        by chunks that travel through :func:`_run_chunk` as real ones do (see :func:`.dask_cluster.measure_costs`)."""
        return dask_cluster.measure_costs(self.client, _run_chunk, _costs)

    # -- running -----------------------------------------------------------------------

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
        """Results of ``func`` on ``items[start:]``, in order: one task per chunk of ``chunksize``
        (None at ``skip`` positions, evaluated while sampling).

        ``progress`` is called with the number of items in each finished chunk. On
        any failure, Ctrl-C included, every unfinished chunk is cancelled first.
        """
        total = len(items) - start
        if total <= 0:
            return []
        chunks = _chunks(items, start, max(1, chunksize), skip)
        results: list[Any] = [None] * total
        first = next(chunks, None)  # an unpicklable first item fails before anything is sent
        if first is None:
            return results
        run = _DaskRun(self.client, _callable(func), timeout)
        abort = True
        try:
            run.submit(itertools.chain([first], chunks))
            while run.pending:
                begin, values = run.receive()
                results[begin - start : begin - start + len(values)] = values
                if progress is not None:
                    progress(len(values))
            abort = False
        finally:
            run.close(abort=abort)
        return results

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
        """Stream results, reading ``source`` (whose first index is ``offset``) a few chunks ahead."""
        chunks = stream_chunks(source, offset, max(1, chunksize))
        return self._imap(_callable(func), chunks, max(1, n_jobs), ordered, timeout, progress)

    def _imap(
        self,
        func: Callable[[Any], Any],
        chunks: Iterator[tuple[int, list[Any]]],
        n_jobs: int,
        ordered: bool,
        timeout: float | None,
        progress: Callable[[int], None] | None,
    ) -> Iterator[Any]:
        run = _DaskRun(self.client, func, timeout)
        abort = True
        try:
            yield from stream(
                run,
                lambda first, chunk: run.submit([(first, _pickle_chunk(chunk, first), len(chunk))]),
                chunks,
                in_flight=n_jobs * STREAM_CHUNKS_PER_THREAD,
                held=n_jobs * (STREAM_CHUNKS_PER_THREAD + STREAM_BUFFER_PER_THREAD),
                ordered=ordered,
                progress=progress,
            )
            abort = False
        finally:
            run.close(abort=abort)
