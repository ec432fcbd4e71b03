"""What a miss samples: items from across the input within a budget, and native
thread pools compared as workers will run them.

Every item evaluated here keeps its result (see :class:`~autopar.sampling.Sampler`):
sampling is part of the run, serialised, so its budget is a small share of it.
"""

from __future__ import annotations

import contextlib
import contextvars
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

from .model import IO_BOUND_CPU_FRACTION, STREAM_ASSUMED_ITEMS, format_seconds
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
#: below it they save 25 ms at most, and two threads' windows of a few ms are hard
#: to read on a virtual machine (a new thread may wait milliseconds to start).
THREADS_WORTH_S = 50e-3
#: Each of the two threads runs about this much work while scaling is measured
#: (every result is kept): a virtual CPU left idle can take a millisecond to wake,
#: which on a 1 ms window read as "holds the GIL" for zlib work (0.9x; 1.5-1.85x
#: with 4-9 ms per thread on the same 2-core machine)...
SCALING_TARGET_S = 6e-3
#: ...and up to this much when the run is long (:data:`SCALING_SHARE` of it): work
#: that holds the GIL keeps the second thread from starting for a switch interval
#: (5 ms), and the speedup is read only while both run.
SCALING_LONG_S = 10e-3
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

    Read only while both threads are inside their items (see :func:`_on_two_threads`):

    * CPU work: the CPU seconds both threads used per wall second. Work that holds
      the GIL cannot use more than one CPU, so it never reads above 1, whatever the
      load; a busy machine only lowers readings (and a window in which the threads
      waited long for a CPU is not read at all).
    * waiting work: twice the items' serial time over their time on the threads (a
      lock or a single connection that serialises them makes each take twice as
      long: ~1).

    A reading in the unclear band is taken again and the higher one kept. With
    random access the items are a contiguous run from across the input, after the
    spread sample's (results kept by position; an exception kept for its turn; a
    contiguous run adds no chunk boundaries to the run); otherwise the stream's
    prefix (an exception raised as a loop would).
    """
    readings: list[float] = []
    exhausted = False
    for _ in range(SCALING_READINGS):
        reading, exhausted = _reading(n_items, sampler, source, items)
        if reading is not None:
            readings.append(reading)
        if exhausted or sampler.failed is not None:
            break
        if reading is not None and not SCALING_UNCLEAR[0] <= reading < SCALING_UNCLEAR[1]:
            break
    sampler.thread_scaling = max(readings) if readings else None
    return exhausted


#: Readings taken at most; a reading in this band (or none: the threads waited for a
#: CPU that something else had, or never ran together) is taken again.
SCALING_READINGS = 3
SCALING_UNCLEAR = (1.1, 1.6)
#: Measuring is skipped when the two threads' items would be more than this share of
#: the run: work that holds the GIL runs them no faster than one thread, where
#: processes would have run them in parallel (6 items of 0.25 s lost 2 of them).
#: Each thread is pinned to a CPU of its own while measuring: left to the
#: scheduler, both often queued on one CPU for the first milliseconds.
SCALING_RUN_SHARE = 0.25
#: Items per thread at most from a stream (read ahead of the run: a stream of
#: large items must not be held in memory by the thousand).
STREAM_SCALING_ITEMS = 64


def threads_worth_measuring(n_items: int | None, sampler: Sampler) -> bool:
    """The run is long enough for threads to matter, and its items short enough
    that two threads' worth of them is a small part of it."""
    per_item = sampler.median_s()
    run_s = (n_items if n_items is not None else STREAM_ASSUMED_ITEMS) * per_item
    # Each thread runs one item at least, however long the target.
    target = max(min(SCALING_LONG_S, max(SCALING_TARGET_S, SCALING_SHARE * run_s)), per_item)
    return run_s >= THREADS_WORTH_S and 2 * target <= SCALING_RUN_SHARE * run_s


def _reading(
    n_items: int | None, sampler: Sampler, source: Iterator[Any], items: Sequence[Any] | None
) -> tuple[float | None, bool]:
    """One two-thread run of the next items: its speedup, and whether the input ran out."""
    per_item = sampler.median_s()
    run_s = (n_items if n_items is not None else STREAM_ASSUMED_ITEMS) * per_item
    target = min(SCALING_LONG_S, max(SCALING_TARGET_S, SCALING_SHARE * run_s))
    per_thread = max(1, min(SCALING_MAX_ITEMS, math.ceil(target / per_item) if per_item > 0 else 1))
    per_thread = int(min(per_thread, max(1.0, SCALING_RUN_SHARE * run_s / max(per_item, 1e-12) / 2)))
    positions = sampler.positions if items is not None else None
    chosen: list[int] = []
    if positions is not None and items is not None:
        chosen = _contiguous(sampler, positions, len(items), 2 * per_thread)
        batch = [items[p] for p in chosen]
    else:
        # A stream is read only this far ahead of the run (imap's promise, for large items too).
        per_thread = min(per_thread, STREAM_SCALING_ITEMS)
        if n_items is not None:
            per_thread = int(min(per_thread, (n_items - len(sampler.items)) // 2))
        batch = list(itertools.islice(source, 2 * per_thread)) if per_thread >= 1 else []
    if len(batch) < 2:
        if chosen:
            _keep_at(sampler, chosen, batch, [_evaluated(sampler.func, x) for x in batch])
            return None, sampler.failed is not None
        sampler.keep(batch, _serially(sampler, batch))
        return None, n_items is None or n_items <= len(sampler.items)
    pair = _on_two_threads(sampler.func, batch)
    if chosen:
        _keep_at(sampler, chosen, batch, pair.results)
        if sampler.failed is not None:
            return None, True
    else:
        first_failed = next((k for k, r in enumerate(pair.results) if isinstance(r, _Failed)), None)
        if first_failed is not None:
            failure = pair.results[first_failed]
            assert isinstance(failure, _Failed)
            sampler.keep(batch[:first_failed], pair.results[:first_failed])
            add_item_note(failure.exc, len(sampler.items), batch[first_failed])
            raise failure.exc
        sampler.keep(batch, pair.results)
    ran_out = positions is None and len(batch) < 2 * per_thread
    cpu_fraction = min(1.0, sampler.cpu_fraction())
    if pair.concurrency is None and not pair.both_ran and cpu_fraction >= IO_BOUND_CPU_FRACTION:
        # CPU work, two threads on CPUs of their own, and the second never got going
        # while the first ran: it was waiting for the GIL.
        logger.debug("autopar: two threads: one ran its whole part before the other began")
        return 1.0, ran_out
    if pair.concurrency is None:  # the threads waited for CPUs, or the window was too short
        return None, ran_out
    if cpu_fraction >= _WAITING_CPU_SHARE:  # in parallel only as far as it used more than one CPU
        reading = pair.concurrency / max(cpu_fraction, IO_BOUND_CPU_FRACTION)
        if cpu_fraction < IO_BOUND_CPU_FRACTION:  # waits too: those overlap whatever the GIL does
            reading = min(reading, pair.waiting_speedup(per_item))
    else:
        reading = pair.waiting_speedup(per_item)
    logger.debug(
        "autopar: two threads: %.2f CPUs, items %s each (alone %s), the sample's CPU share %.2f",
        pair.concurrency, format_seconds(pair.item_s), format_seconds(per_item), cpu_fraction,
    )  # fmt: skip
    return min(2.0, max(0.0, reading)), ran_out


def _contiguous(sampler: Sampler, positions: Iterator[int], n_items: int, count: int) -> list[int]:
    """``count`` positions in a row from the next spread position, skipping any
    already evaluated: the run's chunks then break around one run, not ``count`` holes."""
    first = next(positions, None)
    if first is None:
        return []
    failed = sampler.failed[0] if sampler.failed is not None else -1
    taken: list[int] = []
    position = first
    while len(taken) < count and position < n_items:
        if position not in sampler.scattered and position != failed:
            taken.append(position)
        position += 1
    return taken


def _keep_at(sampler: Sampler, chosen: list[int], batch: list[Any], results: list[Any]) -> None:
    """Results by position; every evaluated position is kept, so the run never evaluates
    it again: the first failure in input order is held for its turn, later failures
    (raised after it anyway) are kept as placeholders. A KeyboardInterrupt or
    SystemExit from an item is raised at once."""
    for result in results:
        if isinstance(result, _Failed) and not isinstance(result.exc, Exception):
            raise result.exc
    done = [k for k, r in enumerate(results) if not isinstance(r, _Missing)]
    values = [None if isinstance(results[k], _Failed) else results[k] for k in done]
    sampler.keep_at([chosen[k] for k in done], [batch[k] for k in done], values)
    for k in done:
        result = results[k]
        if isinstance(result, _Failed):
            add_item_note(result.exc, chosen[k], batch[k])
            sampler.fail_at(chosen[k], result.exc)  # type: ignore[arg-type]


def _evaluated(func: Callable[[Any], Any], item: Any) -> Any:
    try:
        return func(item)
    except BaseException as exc:  # noqa: BLE001 - kept for its turn by _keep_at
        return _Failed(exc)


#: Work that uses less than this share of its wall time on a CPU is waiting work.
_WAITING_CPU_SHARE = 0.1


class _Failed:
    """An item that raised on a sampling thread (its exception, raised later)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Missing:
    """An item after a failure on the same thread: never evaluated (the run does it)."""


class _Pair:
    """Two threads' run: results in order, the CPUs used while both ran (None: not
    read), and the mean wall seconds of an item on the threads."""

    def __init__(self, results: list[Any], concurrency: float | None, item_s: float, both_ran: bool) -> None:
        self.results, self.concurrency, self.item_s, self.both_ran = results, concurrency, item_s, both_ran

    def waiting_speedup(self, alone_s: float) -> float:
        """Two threads' throughput over one thread's, from item times: waits that
        overlap leave an item's time as it was alone."""
        return 2.0 * alone_s / self.item_s if self.item_s > 0 else 0.0


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
    """``batch`` split between two new threads started together (each in a copy of
    the caller's context: ``decimal`` settings and other context variables follow);
    the speedup is read only while both threads are inside their items.

    The second thread may start milliseconds after the first (an idle virtual CPU
    wakes slowly; work that holds the GIL keeps it out for a switch interval), and
    one finishes before the other: those stretches say nothing about running two at
    once. So this thread reads both threads' CPU clocks (and their waits for a CPU)
    when both have begun and again when the first one ends.
    """
    half = (len(batch) + 1) // 2
    parts = [batch[:half], batch[half:]]
    out: list[list[Any]] = [[], []]
    walls = [0.0, 0.0]
    native = [0, 0]
    began = [threading.Event(), threading.Event()]
    ended = threading.Event()
    read = threading.Event()
    ready = threading.Barrier(3)
    context = contextvars.copy_context()
    cpus = _two_cpus()

    def work(k: int) -> None:
        mark_thread_worker()  # a .map inside the function runs serially, as on workers
        native[k] = threading.get_native_id()
        if cpus:  # one CPU each: the scheduler may leave a new thread queued behind the first for ms
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cpus[k]})
        ready.wait()
        began[k].set()
        results = out[k]
        perf = time.perf_counter
        try:
            for item in parts[k]:
                t0 = perf()
                try:
                    results.append(func(item))
                except BaseException as exc:  # noqa: BLE001 - raised or kept by the caller
                    results.append(_Failed(exc))
                    return
                finally:
                    walls[k] += perf() - t0
        finally:
            ended.set()
            read.wait(_READ_WAIT_S)  # alive until its CPU clock is read: an ended thread has none

    threads = [
        threading.Thread(target=context.copy().run, args=(work, k), name="autopar-sample", daemon=True)
        for k in (0, 1)
    ]
    for thread in threads:
        thread.start()
    ready.wait()
    reading = _Window([t.ident or 0 for t in threads], native)
    try:
        for event in began:
            event.wait()
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
    evaluated = sum(len(o) for o in out)
    both_ran = reading.start is not None
    return _Pair(results, reading.concurrency(), sum(walls) / max(1, evaluated), both_ran)


#: How long a sampling thread that ended waits for its clock to be read, at most.
_READ_WAIT_S = 5.0
#: A window in which the two threads waited for a CPU more than this share of the
#: time is not read: the machine, not the work, decided how much ran at once.
_MAX_WAIT_SHARE = 0.5
#: CPU seconds per wall second that work holding the GIL cannot reach (it reads
#: 0.93-0.99 on a quiet machine): above it, the pair's waits for a CPU are credited.
_MORE_THAN_ONE_CPU = 1.15
#: A shorter window is not read: a thread's wake-up or a clock read is a fair part of it.
_MIN_WINDOW_S = 1e-3


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

    def concurrency(self) -> float | None:
        """CPUs the two threads used together per wall second of the window; None
        when there was no window, or the threads spent most of it waiting for a CPU.

        Time the threads waited for a CPU (something else had it) is the machine's,
        not the work's, and is credited, but only to work that showed it can use
        more than one CPU: work on the GIL never uses more than one (CPU seconds per
        wall second <= 1 whatever the scheduling), and its waits would otherwise read
        as parallelism (a GIL-bound pair read 1.9x on a loaded machine).
        """
        if self.start is None or self.stop is None:
            logger.debug("autopar: two threads: never both inside their items (clocks: %d)", len(self.clocks))
            return None
        wall = self.stop[0] - self.start[0]
        waits = max(0.0, self.stop[2] - self.start[2])
        if wall < _MIN_WINDOW_S or waits > _MAX_WAIT_SHARE * 2 * wall:
            logger.debug("autopar: two threads: no reading (window %.2f ms, waits %.2f ms)", 1e3 * wall, 1e3 * waits)
            return None
        cpu = max(0.0, self.stop[1] - self.start[1])
        plain = cpu / wall
        if plain < _MORE_THAN_ONE_CPU:
            return plain
        return min(2.0, cpu / max(wall - waits / 2, 0.5 * wall))


def _two_cpus() -> list[int]:
    """Two CPUs this process may use, for the sampling threads to be pinned to (empty:
    fewer than two, or no affinity on this platform)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None or not hasattr(os, "sched_setaffinity"):
        return []
    try:
        allowed = sorted(getaffinity(0))
    except OSError:
        return []
    return allowed[:2] if len(allowed) >= 2 else []


def _task_waited(native_id: int) -> float:
    """Seconds a thread of this process (by native id) waited for a CPU; 0 unknown."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0
