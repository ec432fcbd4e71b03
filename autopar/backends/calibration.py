"""The process backend measures its own costs: a real pool, timed once per machine.

What starting and stopping a worker costs, one chunk's round trip, and moving a
byte between processes, per start method. :mod:`autopar.costs` keeps the result in
the store, so a new process reads it back (tens of microseconds) instead of paying
the ~0.1 s measurement again.
"""

from __future__ import annotations

import logging
import multiprocessing
import statistics
import time
from collections.abc import Callable

from ..model import Costs, prior_costs
from ._worker import echo, pid_after
from .pool import PoolRun

__all__ = ["measure_costs"]

logger = logging.getLogger("autopar")

#: Round trips timed to measure per-chunk cost, in batches; ~10 ms in all on a 2-core
#: machine. The median batch is kept: one batch that met a busy moment moves nothing.
_ROUND_TRIPS = 200
_BATCHES = 5
#: Payloads of 1 MiB sent both ways to measure the per-byte transfer cost, one at a
#: time; the median is kept.
_PAYLOADS = 5
_PAYLOAD_BYTES = 1 << 20
#: Stopping a worker costs about this share of starting it (a join, no import).
_STOP_SHARE = 0.1
#: A start measured slower than this many times the built-in prior is a busy moment,
#: not the machine: it is capped, so one bad second cannot keep every plan serial for
#: a week (and runs that disagree with the model have the costs measured again).
_MAX_OVER_PRIOR = 3.0


def measure_costs(start_method: str, keep: Callable[[PoolRun], None] | None = None) -> Costs:
    """Start two real workers and time start-up, round trips and transfer.

    With ``keep``, the pool is handed to it afterwards instead of being stopped (the
    warm pools): the call that needed the measurement then runs on these workers,
    so measuring adds ~10-20 ms to the first call, not a pool's start and stop.
    """
    perf = time.perf_counter
    t0 = perf()
    run = PoolRun(multiprocessing.get_context(start_method), 2)
    abort = True
    try:
        seen: set[int] = set()
        start = 0
        while len(seen) < 2 and start < 200:
            for _ in range(2):
                run.submit(pid_after, start, (0.002,))
                start += 1
            while run.pending:
                seen.update(run.receive()[1])
        ready_s = perf() - t0

        per_batch = _ROUND_TRIPS // _BATCHES
        trips = []
        for _ in range(_BATCHES):
            t1 = perf()
            for i in range(per_batch):
                run.submit(echo, i, (None,))
            while run.pending:
                run.receive()
            trips.append((perf() - t1) / per_batch)
        chunk_s = statistics.median(trips)

        payload = bytes(_PAYLOAD_BYTES)
        moves = []
        for i in range(_PAYLOADS):
            t2 = perf()
            run.submit(echo, i, (payload,))
            run.receive()
            moves.append(max(perf() - t2 - chunk_s, 1e-6) / (2 * _PAYLOAD_BYTES))
        byte_s = statistics.median(moves)
        abort = False
    finally:
        if keep is not None and not abort:
            run._reusable, run.release = True, keep
        run.close(abort=abort)
    prior = prior_costs(start_method).worker_start_s
    worker_start_s = min(ready_s / 2 * (1 + _STOP_SHARE), _MAX_OVER_PRIOR * prior)
    costs = Costs(
        worker_start_s=max(1e-4, worker_start_s),
        chunk_s=max(1e-6, chunk_s),
        byte_s=max(1e-12, byte_s),
        measured=True,
    )
    logger.debug("autopar: measured %s costs: %s (workers ready in %.1f ms)", start_method, costs, ready_s * 1e3)
    return costs
