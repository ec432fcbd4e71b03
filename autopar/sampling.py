"""Real evaluations of a few items, timed: the measurements a plan is made from.

The sampler runs the user's function in this process and *keeps every result*, so
an item evaluated while planning is never evaluated again. It knows nothing of
pools or caches; it turns clocks and pickle sizes into a :class:`Sample`.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .notes import add_item_note
from .serialization import dumps
from .system import on_fork_in_child

__all__ = ["Sample", "Sampler"]

#: Items whose pickled size and pickling time are measured. Sizes vary less than
#: run times, and pickling a 200 MB item costs ~0.1 s, so a few are enough.
SIZE_ITEMS = 4
#: At most this many per-item times are kept in a Sample (enough for a median,
#: a spread and a tail; more would only bloat ``profile=True`` output).
_MAX_TIMES_KEPT = 256
#: From this many timed items on, the first is left out of means and spreads.
_STEADY_AFTER = 4


@dataclass(frozen=True)
class Sample:
    """What a few real evaluations of the function cost, in seconds and bytes."""

    times: tuple[float, ...]
    cpu_s: float
    wall_s: float
    in_bytes: float
    out_bytes: float
    pickle_s: float
    unpicklable: str | None = None
    runnable_s: float = 0.0
    """Seconds the sampling thread was ready to run but waited for a CPU (Linux
    schedstat): time lost to a busy machine, not to waiting on I/O."""
    spread: tuple[float, ...] = ()
    """Times of items sampled across the rest of the input (not its prefix)."""
    n_items: int | None = None
    """The input's length, when known: what ``spread`` stands for."""

    @property
    def n_timed(self) -> int:
        """How many items were timed."""
        return len(self.times)

    @property
    def steady(self) -> tuple[float, ...]:
        """Item times without the first once four are known.

        The first call pays one-time costs (lazy imports, cold caches, page faults);
        kept, it reads as an outlier that shrinks chunks for no reason.
        """
        return self.times[1:] if len(self.times) >= _STEADY_AFTER else self.times

    @property
    def mean_s(self) -> float:
        """Mean seconds per item over the whole input (the quantity total work scales with).

        With items sampled across the input, the prefix stands for itself and the
        spread sample for everything after it: when cost grows along the input,
        the first items alone would say "cheap".
        """
        prefix = statistics.fmean(self.steady) if self.times else 0.0
        if not self.spread or not self.n_items:
            return prefix
        rest = self.n_items - len(self.times)
        if rest <= 0:
            return prefix
        return (prefix * len(self.times) + statistics.fmean(self.spread) * rest) / (len(self.times) + rest)

    @property
    def median_s(self) -> float:
        """Median seconds per item."""
        return statistics.median(self.steady) if self.times else 0.0

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of item times, or None below three steady items."""
        steady = self.steady + self.spread
        if len(steady) < 3:
            return None
        mean = statistics.fmean(steady)
        return statistics.pstdev(steady) / mean if mean > 0 else 0.0

    @property
    def cpu_fraction(self) -> float:
        """CPU seconds per wall second while sampling (about 1 for CPU-bound work).

        Time spent waiting for a CPU is left out of the wall time: on a loaded
        machine CPU-bound work would otherwise look like waiting work and get more
        workers than CPUs.
        """
        wall = self.wall_s - self.runnable_s
        if wall <= 0:
            return 1.0
        return max(0.0, self.cpu_s / wall)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for reports and ``profile=True``."""
        return {
            "n_timed": self.n_timed,
            "n_spread": len(self.spread),
            "mean_s": self.mean_s,
            "median_s": self.median_s,
            "cv": self.cv,
            "cpu_fraction": self.cpu_fraction,
            "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes,
            "pickle_s": self.pickle_s,
            "unpicklable": self.unpicklable,
        }


_SCHEDSTAT = "/proc/thread-self/schedstat"
#: Per thread (by ident), its schedstat file, opened once; -1 where there is none.
_schedstat_fds: dict[int, int] = {}


def runnable_seconds() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux
    ``schedstat``'s run-queue time); 0 where the kernel does not say.

    The file is opened once per thread and re-read with ``pread`` (~1 us), so every
    probe can afford two readings.
    """
    ident = threading.get_ident()
    fd = _schedstat_fds.get(ident)
    if fd is None:
        try:
            fd = os.open(_SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if len(_schedstat_fds) > 256:  # threads come and go: keep the table small
            for old in _schedstat_fds.values():
                if old >= 0:
                    os.close(old)
            _schedstat_fds.clear()
        _schedstat_fds[ident] = fd
    if fd < 0:
        return 0.0
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _forget_schedstat_in_child() -> None:
    """After ``os.fork()``: the open files name the parent's threads."""
    for fd in _schedstat_fds.values():
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    _schedstat_fds.clear()


on_fork_in_child(_forget_schedstat_in_child)


#: Items at least this long are timed net of the time their thread waited for a
#: CPU (reading it costs ~1 us); shorter ones could hardly have waited, and the
#: run's CPU share is still corrected as a whole.
NET_OF_WAIT_S = 100e-6


class Sampler:
    """Evaluates items one at a time, keeping items, results and per-item times."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        self.items: list[Any] = []
        self.results: list[Any] = []
        self.times: list[float] = []
        self.scattered: dict[int, Any] = {}
        """Results of items sampled across the input, by position (after the prefix)."""
        self.spread_times: list[float] = []
        self._spread_items: list[Any] = []
        self.positions: Iterator[int] | None = None
        """Where sampling across the input goes on (see :func:`~.measuring.sample`)."""
        self.thread_scaling: float | None = None
        """Two threads' speedup over one on sampled items (see :func:`~.measuring.thread_scaling`)."""
        self.failed: tuple[int, Exception] | None = None
        """An item sampled across the input that raised, and its exception (not raised yet)."""
        self._cpu = 0.0
        self._wall = 0.0
        self._runnable = 0.0

    @property
    def elapsed_s(self) -> float:
        """Wall seconds spent evaluating items so far."""
        return self._wall

    def cpu_fraction(self) -> float:
        """CPU seconds per wall second so far, net of waiting for a CPU (see :class:`Sample`)."""
        wall = self._wall - min(self._runnable, self._wall)
        return 1.0 if wall <= 0 else max(0.0, self._cpu / wall)

    def median_s(self) -> float:
        """Median seconds per item so far (items are timed net of CPU waits)."""
        return sorted(self.times)[len(self.times) // 2] if self.times else 0.0

    def estimate_s(self, n_items: int | None) -> float:
        """Mean seconds per item over an input of ``n_items``, from what was timed so far."""
        prefix = sorted(self.times)[len(self.times) // 2] if self.times else 0.0
        if not self.spread_times or not n_items:
            return prefix
        rest = max(0, n_items - len(self.times))
        spread = statistics.fmean(self.spread_times)
        return (prefix * len(self.times) + spread * rest) / max(1, len(self.times) + rest)

    def run(self, source: Iterator[Any], *, max_items: int, budget_s: float) -> bool:
        """Evaluate up to ``max_items`` more items or until ``budget_s`` is spent.

        At least one item is evaluated when any is left. Returns True when
        ``source`` is exhausted. An exception from the function propagates, with a
        note naming the item's index, exactly as a serial loop would raise it.
        """
        return self._run(source, self.items, self.results, self.times, max_items=max_items, budget_s=budget_s)

    def run_at(self, items: Sequence[Any], positions: Iterator[int], *, max_items: int, budget_s: float) -> bool:
        """Evaluate ``items`` at the next ``positions`` (as :meth:`run` does the prefix).

        Results are kept by position in :attr:`scattered`, so the run evaluates
        every other item once. Returns True when ``positions`` is exhausted.
        """
        chosen: list[int] = []

        def source() -> Iterator[Any]:
            for position in positions:
                chosen.append(position)
                yield items[position]

        results: list[Any] = []
        try:
            exhausted = self._run(
                source(),
                self._spread_items,
                results,
                self.spread_times,
                max_items=max_items,
                budget_s=budget_s,
                positions=chosen,
            )
        except Exception as exc:  # noqa: BLE001 - raised later, in the input's order
            # Kept for the run to raise when it reaches this item's turn: an earlier
            # item's exception comes first, as in a serial loop.
            self.failed = (chosen[-1], exc)
            return True
        finally:
            self.scattered.update(zip(chosen, results, strict=False))
        return exhausted

    def _run(
        self,
        source: Iterator[Any],
        items: list[Any],
        results: list[Any],
        times: list[float],
        *,
        max_items: int,
        budget_s: float,
        positions: list[int] | None = None,
    ) -> bool:
        func = self.func
        perf = time.perf_counter
        cpu0 = time.thread_time()  # this thread only: a pool's handler threads or a store opening in the
        # background would make waiting work look CPU-bound (a native pool's caller thread computes too)
        runnable0 = read = runnable_seconds()
        net_of_wait = NET_OF_WAIT_S
        start = perf()
        deadline = start + budget_s
        exhausted = False
        for _ in range(max(1, max_items)):
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            t0 = perf()
            try:
                result = func(item)
            except BaseException as exc:
                add_item_note(exc, len(items) if positions is None else positions[-1], item)
                raise
            t1 = perf()
            took = t1 - t0
            if took >= net_of_wait:
                # Time this thread waited for a CPU since the last reading is the
                # machine's load, not the item's cost: on a busy machine it would move
                # the time bucket (a cache miss) and inflate the plan's item time.
                now = runnable_seconds()
                took -= min(max(0.0, now - read), 0.9 * took)
                read = now
            items.append(item)
            results.append(result)
            times.append(took)
            if t1 >= deadline:
                break
        self._wall += perf() - start
        self._cpu += time.thread_time() - cpu0
        self._runnable += runnable_seconds() - runnable0
        return exhausted

    def keep(self, items: list[Any], results: list[Any]) -> None:
        """Add items evaluated elsewhere (on two threads, measuring how the work scales)
        to the prefix, with their results; they are not timed one by one."""
        self.items.extend(items)
        self.results.extend(results)

    def fail_at(self, position: int, exc: Exception) -> None:
        """An item from across the input raised: the first in input order is held for
        its turn (:attr:`failed`); any later one is only marked evaluated."""
        if self.failed is not None:
            if self.failed[0] < position:
                return
            # The later one was evaluated too: the run must not evaluate it again.
            self.scattered[self.failed[0]] = None
            self._spread_items.append(None)
        self.failed = (position, exc)

    def keep_at(self, positions: list[int], items: list[Any], results: list[Any]) -> None:
        """As :meth:`keep`, for items from across the input: results kept by position."""
        self._spread_items.extend(items)
        self.scattered.update(zip(positions, results, strict=True))

    def summary(self, n_items: int | None = None) -> Sample:
        """Measure pickling as chunks travel; freeze a Sample (``n_items``: the input's length)."""
        items = self.items + self._spread_items
        results = self.results + list(self.scattered.values())
        problem = _unpicklable(items, results)
        in_bytes = out_bytes = math.nan
        pickle_s = 0.0
        if problem is None and items:
            in_bytes, out_bytes, pickle_s = _batch_costs(items, results)
        return Sample(
            times=tuple(self.times[:_MAX_TIMES_KEPT]),
            cpu_s=self._cpu,
            wall_s=self._wall,
            in_bytes=in_bytes,
            out_bytes=out_bytes,
            pickle_s=pickle_s,
            unpicklable=problem,
            runnable_s=min(self._runnable, self._wall),
            spread=tuple(self.spread_times[:_MAX_TIMES_KEPT]),
            n_items=n_items,
        )


def _unpicklable(items: list[Any], results: list[Any]) -> str | None:
    """Why the first few items or results cannot be sent, naming which; else None."""
    for index, (item, result) in enumerate(zip(items[:SIZE_ITEMS], results[:SIZE_ITEMS], strict=True)):
        for what, value in (("item", item), ("the result of item", result)):
            try:
                dumps(value)
            except Exception as exc:  # noqa: BLE001 - any pickling failure is reported
                return f"{what} {index} cannot be pickled: {type(exc).__name__}: {exc}"
    return None


#: A chunk's items are pickled as one list: fixed per-call pickling costs (~1-5 us)
#: are paid once per chunk, not per item. Up to this many sampled items, and about
#: this many bytes, are pickled together to measure it that way.
BATCH_ITEMS = 64
BATCH_BYTES = 1 << 20
#: Batches quicker than this are pickled three times and the fastest kept: a few
#: microseconds are at the timer's and the scheduler's mercy.
_QUICK_S = 1e-3


def _batch_costs(items: list[Any], results: list[Any]) -> tuple[float, float, float]:
    """Per item: pickled bytes in, bytes out, and seconds to pickle and unpickle both,
    measured on lists shaped like a chunk."""
    one = len(dumps(items[0])) + len(dumps(results[0]))
    count = max(1, min(len(items), BATCH_ITEMS, BATCH_BYTES // max(1, one)))
    batch_in, batch_out = list(items[:count]), list(results[:count])
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        blob_in = dumps(batch_in)
        blob_out = dumps(batch_out)
        pickle.loads(blob_in)
        pickle.loads(blob_out)
        took = time.perf_counter() - t0
        best = min(best, took)
        if took >= _QUICK_S:
            break
    return len(blob_in) / count, len(blob_out) / count, best / count
