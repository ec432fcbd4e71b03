"""The process backend measures its own costs: a real pool, timed once per machine.

What starting and stopping a worker costs, one chunk's round trip, and moving a
byte between processes, per start method. :mod:`autopar.costs` keeps the result in
the store, so a new process reads it back (tens of microseconds) instead of paying
the ~0.1 s measurement again.
"""

from __future__ import annotations

import logging
import multiprocessing
import time

from ..model import Costs
from ._worker import echo, pid_after
from .pool import PoolRun

__all__ = ["measure_costs"]

logger = logging.getLogger("autopar")

#: Round trips timed to measure per-chunk cost; ~10 ms in all on a 2-core machine.
_ROUND_TRIPS = 200
#: Payloads of 1 MiB sent both ways to measure the per-byte transfer cost.
_PAYLOADS = 8
_PAYLOAD_BYTES = 1 << 20


def measure_costs(start_method: str) -> Costs:
    """Start two real workers and time start-up, round trips, transfer and shutdown."""
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

        t1 = perf()
        for i in range(_ROUND_TRIPS):
            run.submit(echo, i, (None,))
        while run.pending:
            run.receive()
        chunk_s = (perf() - t1) / _ROUND_TRIPS

        payload = bytes(_PAYLOAD_BYTES)
        t2 = perf()
        for i in range(_PAYLOADS):
            run.submit(echo, i, (payload,))
        while run.pending:
            run.receive()
        moved = (perf() - t2) - _PAYLOADS * chunk_s
        byte_s = max(moved, 1e-6) / (_PAYLOADS * 2 * _PAYLOAD_BYTES)
        abort = False
    finally:
        t3 = perf()
        run.close(abort=abort)
        stop_s = perf() - t3
    costs = Costs(
        worker_start_s=max(1e-4, (ready_s + stop_s) / 2),
        chunk_s=max(1e-6, chunk_s),
        byte_s=max(1e-12, byte_s),
        measured=True,
    )
    logger.debug("autopar: measured %s costs: %s", start_method, costs)
    return costs
