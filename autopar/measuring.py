"""What a miss samples: items from across the input within a budget, and native
thread pools compared as workers will run them.

Every item evaluated here keeps its result (see :class:`~autopar.sampling.Sampler`):
sampling is part of the run, serialised, so its budget is a small share of it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .model import IO_BOUND_CPU_FRACTION, STREAM_ASSUMED_ITEMS
from .notes import add_item_note
from .sampling import Sampler
from .system import NATIVE_POOL_MODULES, THREAD_VARS, mark_thread_worker

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
    "thread_scaling",
    "thread_speedup",
]

logger = logging.getLogger("autopar")

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

#: Threads are measured only when the serial run is estimated at least this long:
#: below it they could save a few milliseconds at most, and measuring takes some.
THREADS_WORTH_S = 20e-3
#: Each of the two threads runs about this much work while scaling is measured
#: (every result is kept): a virtual CPU left idle can take a millisecond to wake,
#: which on a 1 ms window read as "holds the GIL" for zlib work (0.9x; 1.5-1.85x
#: with 4-9 ms per thread on the same 2-core machine)...
SCALING_TARGET_S = 4e-3
#: ...and up to this much when the run is long (:data:`SCALING_SHARE` of it): work
#: that holds the GIL keeps the second thread from starting for a switch interval
#: (5 ms), and the speedup is read only while both run.
SCALING_LONG_S = 15e-3
SCALING_SHARE = 0.05
#: Items per thread at most (tiny items): enough for a steady wall time.
SCALING_MAX_ITEMS = 4096


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
    positions = sampler.positions = spread_positions(len(sampler.items), n_items)
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


def thread_scaling(n_items: int | None, sampler: Sampler, source: Iterator[Any], items: Sequence[Any] | None) -> bool:
    """Run the next items on two threads of this process at once; sets
    ``sampler.thread_scaling`` to how much faster two threads ran them than one
    would (~1 for work that holds the GIL, ~2 for work that releases it or waits).
    Returns True when the input ran out.

    No reference run is needed, so the items need not resemble each other: the
    speedup is the items' overlap (their wall times summed, over the pair's wall
    time). For CPU work it is at most the CPUs both threads used together (CPU
    seconds per wall second): work that holds the GIL cannot use more than one,
    whatever the clocks say, so a noisy reading never gives it threads. Noise only
    lowers readings (a virtual CPU slow to wake, another process), so a reading
    short of clear is taken again and the higher one kept.

    With random access the items come from across the input, after the spread
    sample's (their results kept by position; an exception is kept for its turn);
    otherwise from the stream's prefix (an exception raised as a loop would).
    """
    readings: list[float] = []
    exhausted = False
    for _ in range(SCALING_READINGS):
        reading, exhausted = _reading(n_items, sampler, source, items)
        if reading is not None:
            readings.append(reading)
        if exhausted or (reading is not None and reading >= SCALING_CLEAR):
            break
    sampler.thread_scaling = max(readings) if readings else None
    return exhausted


#: Readings taken at most, and the speedup that needs no second one.
SCALING_READINGS = 2
SCALING_CLEAR = 1.6


def _reading(
    n_items: int | None, sampler: Sampler, source: Iterator[Any], items: Sequence[Any] | None
) -> tuple[float | None, bool]:
    """One two-thread run of the next items: its speedup, and whether the input ran out."""
    per_item = sampler.median_s()
    run_s = (n_items if n_items is not None else STREAM_ASSUMED_ITEMS) * per_item
    target = min(SCALING_LONG_S, max(SCALING_TARGET_S, SCALING_SHARE * run_s))
    per_thread = max(1, min(SCALING_MAX_ITEMS, math.ceil(target / per_item) if per_item > 0 else 1))
    positions = sampler.positions if items is not None else None
    if positions is not None and items is not None:
        chosen = list(itertools.islice(positions, 2 * per_thread))
        batch = [items[p] for p in chosen]
    else:
        if n_items is not None:
            per_thread = int(min(per_thread, (n_items - len(sampler.items)) // 2))
        chosen = []
        batch = list(itertools.islice(source, 2 * per_thread)) if per_thread >= 1 else []
    if len(batch) < 2:
        if chosen:
            try:
                sampler.keep_at(chosen, batch, _serially(sampler, batch, chosen))
            except Exception as exc:  # noqa: BLE001 - raised in its turn, as run_at's are
                if sampler.failed is None or chosen[0] < sampler.failed[0]:
                    sampler.failed = (chosen[0], exc)
                return None, True
            return None, False
        sampler.keep(batch, _serially(sampler, batch))
        return None, n_items is None or n_items <= len(sampler.items)
    pair = _on_two_threads(sampler.func, batch)
    first_failed = next((k for k, result in enumerate(pair.results) if isinstance(result, _Failed)), None)
    if chosen:
        done = [k for k, r in enumerate(pair.results) if not isinstance(r, (_Failed, _Missing))]
        sampler.keep_at([chosen[k] for k in done], [batch[k] for k in done], [pair.results[k] for k in done])
        if first_failed is not None:
            failure = pair.results[first_failed]
            assert isinstance(failure, _Failed)
            add_item_note(failure.exc, chosen[first_failed], batch[first_failed])
            if sampler.failed is None or chosen[first_failed] < sampler.failed[0]:
                sampler.failed = (chosen[first_failed], failure.exc)  # type: ignore[assignment]
            return None, True
    else:
        if first_failed is not None:
            failure = pair.results[first_failed]
            assert isinstance(failure, _Failed)
            sampler.keep(batch[:first_failed], pair.results[:first_failed])
            add_item_note(failure.exc, len(sampler.items), batch[first_failed])
            raise failure.exc
        sampler.keep(batch, pair.results)
    ran_out = positions is None and len(batch) < 2 * per_thread
    if pair.overlap <= 0:  # the threads hardly ran at the same time: no reading
        return None, ran_out
    cpu_fraction = min(1.0, sampler.cpu_fraction())
    if cpu_fraction >= IO_BOUND_CPU_FRACTION:  # CPU work: in parallel only as far as it used two CPUs
        reading = min(pair.overlap, pair.concurrency)
    elif cpu_fraction >= _WAITING_CPU_SHARE:  # waits, and some CPU work that may hold the GIL
        reading = min(pair.overlap, pair.concurrency / cpu_fraction)
    else:
        reading = pair.overlap
    logger.debug(
        "autopar: two threads: overlap %.2f, %.2f CPUs, the sample's CPU share %.2f",
        pair.overlap, pair.concurrency, cpu_fraction,
    )  # fmt: skip
    return max(0.0, reading), ran_out


#: Work that uses less than this share of its wall time on a CPU is waiting work:
#: its GIL-held part is too small to cap what the overlap says.
_WAITING_CPU_SHARE = 0.1


class _Failed:
    """An item that raised on a sampling thread (its exception, raised later)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Missing:
    """An item after a failure on the same thread: never evaluated (the run does it)."""


class _Pair:
    """Two threads' run: results in order, the items' overlap (their summed wall
    times over the pair's) and concurrency (CPU seconds per wall second)."""

    def __init__(self, results: list[Any], overlap: float, concurrency: float) -> None:
        self.results, self.overlap, self.concurrency = results, overlap, concurrency


def _serially(sampler: Sampler, batch: list[Any], positions: list[int] | None = None) -> list[Any]:
    """A batch too small to split, evaluated here (an exception raised, its index noted)."""
    results = []
    for offset, item in enumerate(batch):
        try:
            results.append(sampler.func(item))
        except BaseException as exc:
            add_item_note(exc, positions[offset] if positions else len(sampler.items) + offset, item)
            raise
    return results


def _on_two_threads(func: Callable[[Any], Any], batch: list[Any]) -> _Pair:
    """``batch`` split between two new threads started together; the speedup is read
    only while both threads are inside their items.

    The second thread may start milliseconds after the first (an idle virtual CPU
    wakes slowly; work that holds the GIL keeps it out for a switch interval), and
    one finishes before the other: those stretches say nothing about running two at
    once. So this thread reads both threads' CPU clocks (and their waits for a CPU)
    when both have begun and again when the first one ends.
    """
    half = (len(batch) + 1) // 2
    parts = [batch[:half], batch[half:]]
    out: list[list[Any]] = [[], []]
    native = [0, 0]
    began = [threading.Event(), threading.Event()]
    ended = threading.Event()
    read = threading.Event()
    ready = threading.Barrier(3)

    def work(k: int) -> None:
        mark_thread_worker()  # a .map inside the function runs serially, as on workers
        native[k] = threading.get_native_id()
        ready.wait()
        began[k].set()
        results = out[k]
        try:
            for item in parts[k]:
                try:
                    results.append(func(item))
                except BaseException as exc:  # noqa: BLE001 - raised or kept by the caller
                    results.append(_Failed(exc))
                    return
        finally:
            ended.set()
            read.wait(_READ_WAIT_S)  # alive until its CPU clock is read: an ended thread has none

    threads = [threading.Thread(target=work, args=(k,), name="autopar-sample", daemon=True) for k in (0, 1)]
    for thread in threads:
        thread.start()
    ready.wait()
    reading = _Window([t.ident or 0 for t in threads], native)
    for event in began:
        event.wait()
    try:
        if not ended.is_set():
            reading.open()
            ended.wait()
            reading.close()
    finally:
        read.set()
    for thread in threads:
        thread.join()
    results = [*out[0], *([_Missing()] * (len(parts[0]) - len(out[0]))), *out[1]]
    results += [_Missing()] * (len(batch) - len(results))
    return _Pair(results, *reading.speedup())


#: How long a sampling thread that ended waits for its clock to be read, at most.
_READ_WAIT_S = 5.0


class _Window:
    """Both threads' CPU clocks and run-queue waits, read from this thread at the
    window's two ends (Linux: ``pthread_getcpuclockid`` and ``/proc/self/task``)."""

    def __init__(self, idents: list[int], native: list[int]) -> None:
        getclock = getattr(time, "pthread_getcpuclockid", None)
        try:
            self.clocks = [getclock(ident) for ident in idents] if getclock is not None else []
        except OSError:
            self.clocks = []
        self.native = native
        self.start: tuple[float, float, float] | None = None
        self.stop: tuple[float, float, float] | None = None

    def _now(self) -> tuple[float, float, float]:
        cpu = sum(time.clock_gettime(clock) for clock in self.clocks)
        return time.perf_counter(), cpu, sum(_task_waited(tid) for tid in self.native)

    def open(self) -> None:
        if self.clocks:
            with contextlib.suppress(OSError):
                self.start = self._now()

    def close(self) -> None:
        if self.start is not None:
            with contextlib.suppress(OSError):
                self.stop = self._now()

    def speedup(self) -> tuple[float, float]:
        """Items in flight and CPUs used per wall second in the window; (0, 0) when
        there was none. Time the threads waited for a CPU is the machine's, not the
        work's: work off the GIL keeps both threads running or waiting, so its CPU
        seconds are 2 * window - waits, which over window - waits / 2 reads 2
        whatever the load; work on the GIL has one thread at most running or
        waiting, and reads at most 1."""
        if self.start is None or self.stop is None:
            return 0.0, 0.0
        wall = self.stop[0] - self.start[0]
        if wall <= 0:
            return 0.0, 0.0
        waits = max(0.0, self.stop[2] - self.start[2])
        net = max(wall - waits / 2, 0.1 * wall)
        return 2.0, max(0.0, self.stop[1] - self.start[1]) / net


def _task_waited(native_id: int) -> float:
    """Seconds a thread of this process (by native id) waited for a CPU; 0 unknown."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0
