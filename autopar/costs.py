"""Measured machine costs, kept in the store: read back, or measured and stored.

The measuring itself belongs to a backend (the process backend times a real pool,
the Dask backend its cluster); this module only keeps the result, keyed by start
method (or cluster fingerprint) and CPU count, and re-measures it when stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .model import Costs
from .plan import DEFAULT_TTL_S, costs_record, read_costs_record, stale_reason
from .store import PlanStore
from .system import SystemInfo
from .workload import costs_key

__all__ = ["load_or_measure_costs"]

logger = logging.getLogger("autopar")

_measure_lock = threading.Lock()


def load_or_measure_costs(store: PlanStore, system: SystemInfo, measure: Callable[[], Costs]) -> Costs:
    """Costs for ``system`` from the store; measured with ``measure`` and stored when
    missing or stale (after :data:`~autopar.plan.DEFAULT_TTL_S`, like plans)."""
    key = costs_key(system.start_method, system.usable_cpus)
    with _measure_lock:  # two threads planning at once measure once
        parsed = read_costs_record(store.get(key))
        now = time.time()
        if parsed is not None:
            costs, stored_system, created = parsed
            why = stale_reason(stored_system, created, system, now=now, ttl=DEFAULT_TTL_S, check_memory=False)
            if why is None:
                return costs
            logger.debug("autopar: stored costs are stale: %s", why)
        costs = measure()
        store.set(key, costs_record(costs, system, time.time()), expire=DEFAULT_TTL_S)
        return costs
