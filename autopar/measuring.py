"""What a miss samples: items from across the input within a budget, and native
thread pools compared as workers will run them.

Every item evaluated here keeps its result (see :class:`~autopar.sampling.Sampler`):
sampling is part of the run, serialised, so its budget is a small share of it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from .model import IO_BOUND_CPU_FRACTION, STREAM_ASSUMED_ITEMS
from .sampling import Sampler
from .system import NATIVE_POOL_MODULES, THREAD_VARS

__all__ = [
    "LIMITED_PAIRS",
    "THREAD_TIMING_MIN_S",
    "SAMPLE_BUDGET_S",
    "SAMPLE_MAX_ITEMS",
    "SAMPLE_SHARE",
    "compare_threads",
    "native_threads",
    "one_native_thread",
    "sample",
    "spread_positions",
    "thread_speedup",
]

#: On a miss, sampling continues up to this many items in all...
SAMPLE_MAX_ITEMS = 64
#: ...or this much time, the cold-planning budget of a short call...
SAMPLE_BUDGET_S = 0.02
#: ...or this share of the estimated serial run, so sampling a long run of heavy
#: items never serialises a noticeable part of it.
SAMPLE_SHARE = 0.02
#: With native thread pools loaded, this many pairs of items after the probe are
#: timed alternately with one thread (as a worker runs them) and the caller's own...
LIMITED_PAIRS = 3
#: ...when the probed items take at least this long (shorter ones are timer noise),
#: and believed only when the caller's threads were this much faster (two single
#: items differ by tens of percent on a busy machine).
THREAD_TIMING_MIN_S = 20e-6
THREAD_SPEEDUP_MIN = 1.3
#: What limiting native threads and restoring them costs (threadpoolctl lists the
#: loaded libraries each time): ~1 ms, counted against the sampling budget.
_LIMIT_S = 1e-3

def spread_positions(low: int, high: int) -> Iterator[int]:
    """Positions in ``low..high-1`` in an order that covers the range evenly at every
    length (van der Corput: the middle, the quarters, the eighths...), each once."""
    span = high - low
    seen: set[int] = set()
    denominator = 2
    while len(seen) < span:
        for numerator in range(1, denominator, 2):
            position = low + (numerator * span) // denominator
            if position not in seen:
                seen.add(position)
                yield position
        if denominator > 2 * span:
            break
        denominator *= 2


def native_threads() -> int:
    """Most threads any loaded native thread pool runs with (1 when none is loaded).

    Asked only when a module that carries such pools is imported: importing
    threadpoolctl and listing the pools costs milliseconds.
    """
    if any(var in os.environ for var in THREAD_VARS) or not any(m in sys.modules for m in NATIVE_POOL_MODULES):
        return 1
    try:
        from threadpoolctl import threadpool_info

        return max((int(pool.get("num_threads") or 1) for pool in threadpool_info()), default=1)
    except Exception:  # noqa: BLE001 - an odd library must not stop planning
        return 1


@contextlib.contextmanager
def one_native_thread() -> Iterator[None]:
    """Native thread pools limited to one thread, as in a worker of a plan using every
    CPU, and restored on the way out, whatever the function raised. threadpoolctl
    applies a limit when it is made, so it is made here, on entering. A library
    that cannot be limited leaves the pools as they are."""
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=1)
    except Exception:  # noqa: BLE001 - an odd native library must not stop planning
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            limits.restore_original_limits()


def sample(n_items: int | None, sampler: Sampler, source: Iterator[Any], items: Sequence[Any] | None) -> bool:
    """Sample more items, within the budget; True when the input ran out.

    Only time spent evaluating items counts against the budget: a slow first open
    of the store must not starve the sample. With random access to the input, the
    items come from across it, not its prefix (see :func:`_sample_spread`).
    """
    if items is not None and n_items is not None and n_items - len(sampler.items) > SAMPLE_MAX_ITEMS:
        _sample_spread(sampler, items, n_items)
        return False
    estimated_total = (n_items if n_items is not None else STREAM_ASSUMED_ITEMS) * sampler.median_s()
    budget = min(SAMPLE_BUDGET_S, SAMPLE_SHARE * estimated_total) - sampler.elapsed_s
    if budget > 0 and len(sampler.items) < SAMPLE_MAX_ITEMS:
        return sampler.run(source, max_items=SAMPLE_MAX_ITEMS - len(sampler.items), budget_s=budget)
    return False


def _sample_spread(sampler: Sampler, items: Sequence[Any], n_items: int) -> None:
    """Items from across the rest of the input, within a budget re-estimated as they
    come: when cost grows along the input (values, file sizes, dates), the first
    items alone say "cheap" and the run teaches otherwise.

    The middle item is always evaluated once the input is long enough that one
    average item is at most :data:`SAMPLE_SHARE` of the run.
    """
    positions = spread_positions(len(sampler.items), n_items)
    if n_items * SAMPLE_SHARE >= 1 and sampler.run_at(items, positions, max_items=1, budget_s=0.0):
        return
    while len(sampler.items) + len(sampler.spread_times) < SAMPLE_MAX_ITEMS:
        estimated_total = n_items * sampler.estimate_s(n_items)
        budget = min(SAMPLE_BUDGET_S, SAMPLE_SHARE * estimated_total) - sampler.elapsed_s
        if budget <= 0:
            return
        room = SAMPLE_MAX_ITEMS - len(sampler.items) - len(sampler.spread_times)
        if sampler.run_at(items, positions, max_items=min(8, room), budget_s=budget):
            return


def compare_threads(n_items: int | None, sampler: Sampler, source: Iterator[Any]) -> float | None:
    """How much faster the caller's native thread pools run the work than a worker's
    one thread: the next items alternate between the two, so neighbours are compared
    with neighbours whatever the cost does along the input. None when the input ran
    out. Skipped (1.0) when even one pair would not fit in the sampling budget.
    """
    probe_s = sampler.median_s()
    n_items = n_items if n_items is not None else STREAM_ASSUMED_ITEMS
    budget = min(SAMPLE_BUDGET_S, SAMPLE_SHARE * n_items * probe_s)
    pairs = min(LIMITED_PAIRS, int(budget / (2 * (probe_s + _LIMIT_S))))
    first = len(sampler.times)
    for index in range(2 * pairs):
        with one_native_thread() if index % 2 == 0 else contextlib.nullcontext():
            if sampler.run(source, max_items=1, budget_s=0.0):
                return None
    alternated = sampler.times[first:]
    return thread_speedup(alternated[1::2], alternated[0::2], sampler.cpu_fraction())


def thread_speedup(caller_times: list[float], worker_times: list[float], cpu_fraction: float) -> float:
    """The caller's threads' speedup over a worker's one thread, from alternated
    neighbours; 1.0 when too short, too noisy to tell, or for waiting work."""
    if not caller_times or not worker_times:
        return 1.0
    caller = statistics.median(caller_times)
    worker = statistics.median(worker_times)
    speedup = worker / caller if caller >= THREAD_TIMING_MIN_S else 1.0
    if speedup < THREAD_SPEEDUP_MIN or cpu_fraction < IO_BOUND_CPU_FRACTION:
        return 1.0  # timer and scheduler noise, or waiting work: threads do not matter
    return min(speedup, float(native_threads()))
