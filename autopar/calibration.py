"""This machine's own costs, measured once on a real pool and kept in the store.

Measured per start method and CPU count: what starting and stopping a worker
costs, one chunk's round trip, and moving a byte between processes. A new process
reads them back from the store (a few tens of microseconds) instead of paying the
~0.1 s measurement again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._version import CACHE_FORMAT
from .backends._worker import echo, pid_after
from .backends.process import ProcessBackend
from .model import Costs
from .plan import costs_record, read_costs_record, stale_reason
from .store import PlanStore
from .system import SystemInfo

__all__ = ["COSTS_TTL_S", "costs_key", "load_or_measure_costs", "measure_costs"]

logger = logging.getLogger("autopar")

#: Measured costs are re-measured after a week, like plans: kernels, Python builds
#: and machine load drift.
COSTS_TTL_S = 7 * 24 * 3600.0
#: Round trips timed to measure per-chunk cost; ~10 ms in all on a 2-core machine.
_ROUND_TRIPS = 200
#: Payloads of 1 MiB sent both ways to measure the per-byte transfer cost.
_PAYLOADS = 8
_PAYLOAD_BYTES = 1 << 20

_measure_lock = threading.Lock()


def costs_key(system: SystemInfo) -> str:
    """Store key of the measured costs for this start method and CPU count."""
    return f"costs:v{CACHE_FORMAT}:{system.start_method}:c{system.usable_cpus}"


def measure_costs(start_method: str) -> Costs:
    """Start two real workers and time start-up, round trips, transfer and shutdown."""
    backend = ProcessBackend(start_method)
    perf = time.perf_counter
    t0 = perf()
    run = backend.open(2)
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


def load_or_measure_costs(
    store: PlanStore, system: SystemInfo, *, measure: Callable[[], Costs] | None = None
) -> Costs:
    """Costs for ``system`` from the store, measured and stored when missing or stale.

    ``measure`` replaces the local pool measurement (a cluster measures its own).
    """
    key = costs_key(system)
    with _measure_lock:  # two threads planning at once measure once
        parsed = read_costs_record(store.get(key))
        now = time.time()
        if parsed is not None:
            costs, stored_system, created = parsed
            why = stale_reason(stored_system, created, system, now=now, ttl=COSTS_TTL_S, check_memory=False)
            if why is None:
                return costs
            logger.debug("autopar: stored costs are stale: %s", why)
        costs = measure_costs(system.start_method) if measure is None else measure()
        store.set(key, costs_record(costs, system, time.time()), expire=COSTS_TTL_S)
        return costs
