"""The process backend: chunks on a warm or new :class:`~.pool.PoolRun`.

It asks the warm pools for workers that see what the function reads now
(:meth:`PoolRun.serves`), drives the shared chunk pipeline (:mod:`.chunks`) over
them, and hands a healthy pool back to be kept warm.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .. import depot
from ..depot import Deposit
from ..errors import UnpicklableError
from ..model import Costs
from ..serialization import Shipment
from . import calibration
from .chunks import chunk_slices, collect, pickle_chunk, stream, stream_chunks
from .pool import PoolRun, as_shipment
from .warm import POOL_IDLE_TIMEOUT_S, WarmPools, shutdown

__all__ = ["POOL_IDLE_TIMEOUT_S", "PoolRun", "ProcessBackend", "WarmPools", "shutdown"]

logger = logging.getLogger("autopar")

#: Chunks sent ahead per worker by ``map``: one running and one waiting keeps a
#: worker busy; more would only hold pickled input in memory (all of a 1 GB input
#: was pickled before the first result was read, +1.1 GB at peak, when unbounded).
MAP_CHUNKS_PER_WORKER = 2
#: And at most this many pickled bytes in flight (at least one chunk goes out).
MAP_BYTES_IN_FLIGHT = 64 * 2**20
#: Chunks in flight per worker for streams (``imap``): enough that a worker never
#: waits for the parent, few enough that an endless input is not read ahead.
STREAM_CHUNKS_PER_WORKER = 4
#: Results held for ordered streams beyond those in flight, per worker, before
#: the parent stops reading ahead and waits for the slow chunk.
STREAM_BUFFER_PER_WORKER = 16


class ProcessBackend:
    """Runs chunks on a ``multiprocessing.Pool`` made with the given start method."""

    name = "process"

    def __init__(self, start_method: str, *, reuse: bool = False) -> None:
        self.start_method = start_method
        self.reuse = reuse
        self._ctx = multiprocessing.get_context(start_method)

    def open(self, n_jobs: int, shipment: Shipment | None = None, *, deadline: float | None = None) -> PoolRun:
        """``n_jobs`` workers: a warm pool when ``reuse`` and one fits, else new ones.

        A warm pool fits when its workers see the state ``shipment``'s function reads
        now (:meth:`PoolRun.serves`); otherwise it is retired and a new one started.
        Callers must ``close`` the run; with ``reuse`` a healthy pool then stays warm.
        """
        if self.reuse:
            run = WarmPools.acquire(self.start_method, n_jobs)
            if run is not None:
                if shipment is None or run.serves(shipment):
                    run.reset(deadline)
                    return run
                logger.debug("autopar: %s changed since the warm pool started; starting a new one", shipment.key)
                WarmPools.retire(run)
        run = PoolRun(self._ctx, n_jobs, deadline=deadline)
        run._reusable = self.reuse
        run.release = WarmPools.release if self.reuse else None
        if shipment is not None and shipment.key is not None:
            run.known[shipment.key] = shipment.token  # its workers started with this state
            run._keep.append(shipment.keep)
        return run

    def warm_workers(self) -> int:
        """Workers already running for this start method that a call could reuse."""
        return WarmPools.size(self.start_method) if self.reuse else 0

    def measure_costs(self) -> Costs:
        """This machine's costs for this start method, timed on a real pool of two
        (kept warm afterwards when this backend reuses pools: the call runs on it)."""
        if self.reuse:
            return calibration.measure_costs(self.start_method, keep=WarmPools.release)
        return calibration.measure_costs(self.start_method)

    def map(
        self,
        func: Callable[[Any], Any] | Shipment,
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
        """Results of ``func`` on ``items[start:]``, in order (None at ``skip`` positions).

        Chunks are pickled only a few ahead of the workers
        (:data:`MAP_CHUNKS_PER_WORKER`, :data:`MAP_BYTES_IN_FLIGHT`), so a large input
        is not copied whole into pickles, and a ``timeout`` is checked while sending.
        ``progress`` is called with the number of items in each finished chunk;
        ``busy``, when given, receives each worker's computing seconds by pid.
        """
        total = len(items) - start
        if total <= 0:
            return []
        shipment = as_shipment(func)
        held = _hold(shipment)
        try:
            return self._map(shipment, items, start, total, n_jobs, chunksize, timeout, progress, busy, skip)
        finally:
            if held is not None:
                depot.let_go(held)

    def _map(
        self,
        shipment: Shipment,
        items: Sequence[Any],
        start: int,
        total: int,
        n_jobs: int,
        chunksize: int,
        timeout: float | None,
        progress: Callable[[int], None] | None,
        busy: dict[int, float] | None,
        skip: Sequence[int],
    ) -> list[Any]:
        chunks = chunk_slices(items, start, chunksize, skip)
        first_start, first_chunk = next(chunks, (start, ()))
        if not first_chunk:  # every remaining item was evaluated while sampling
            return [None] * total
        first_blob = pickle_chunk(first_chunk, first_start)  # fail before any worker starts
        deadline = None if timeout is None else time.monotonic() + timeout
        run: PoolRun | None = None
        abort = True
        try:
            run = opened = self.open(n_jobs, shipment, deadline=deadline)
            sent = opened.submit_blob(shipment, first_start, first_blob, len(first_chunk))
            results = collect(
                opened,
                functools.partial(opened.submit, shipment),
                chunks,
                start=start,
                total=total,
                in_flight=n_jobs * MAP_CHUNKS_PER_WORKER,
                bytes_in_flight=MAP_BYTES_IN_FLIGHT,
                progress=progress,
                before_send=opened.check_deadline,
                first=(first_start, sent),
            )
            abort = False
        finally:
            if run is not None:
                run.close(abort=abort)
                if busy is not None:
                    busy.update(run.busy)
        return results

    def imap(
        self,
        func: Callable[[Any], Any] | Shipment,
        source: Iterator[Any],
        *,
        offset: int,
        n_jobs: int,
        chunksize: int,
        ordered: bool,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Any]:
        """Stream results, reading ``source`` only a few chunks ahead of the workers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._imap(func, stream_chunks(source, offset, chunksize), n_jobs, ordered, deadline, progress)

    def _imap(
        self,
        func: Callable[[Any], Any] | Shipment,
        chunks: Iterable[tuple[int, Sequence[Any]]],
        n_jobs: int,
        ordered: bool,
        deadline: float | None,
        progress: Callable[[int], None] | None,
    ) -> Iterator[Any]:
        shipment = as_shipment(func)
        held = _hold(shipment)
        run: PoolRun | None = None
        abort = True
        try:
            run = self.open(n_jobs, shipment, deadline=deadline)
            yield from stream(
                run,
                functools.partial(run.submit, shipment),
                chunks,
                in_flight=n_jobs * STREAM_CHUNKS_PER_WORKER,
                held=n_jobs * (STREAM_CHUNKS_PER_WORKER + STREAM_BUFFER_PER_WORKER),
                ordered=ordered,
                progress=progress,
            )
            abort = False
        finally:
            if run is not None:
                run.close(abort=abort)
            if held is not None:
                depot.let_go(held)


def _hold(shipment: Shipment) -> Deposit | None:
    """A large function's files, written if missing and held for this call: a warm pool
    retired while this call opens its own must not take them away (it was their
    last holder). None for a function that travels inline."""
    if not shipment.size:
        return None
    for _ in range(3):
        made = shipment.deposited()
        depot.hold(made)
        if depot.present(made):
            return made
        depot.let_go(made)  # removed between the check and the hold: write them again
    msg = f"the function could not be written for workers to read ({shipment.deposit})"
    raise UnpicklableError(msg)
