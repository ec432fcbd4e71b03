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
from collections.abc import Callable, Iterator
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
        """Mean seconds per item (the quantity total work scales with)."""
        return statistics.fmean(self.steady) if self.times else 0.0

    @property
    def median_s(self) -> float:
        """Median seconds per item."""
        return statistics.median(self.steady) if self.times else 0.0

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of item times, or None below three steady items."""
        steady = self.steady
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
        self._cpu = 0.0
        self._wall = 0.0
        self._runnable = 0.0

    @property
    def elapsed_s(self) -> float:
        """Wall seconds spent evaluating items so far."""
        return self._wall

    def median_s(self) -> float:
        """Median seconds per item so far (items are timed net of CPU waits)."""
        return sorted(self.times)[len(self.times) // 2] if self.times else 0.0

    def run(self, source: Iterator[Any], *, max_items: int, budget_s: float) -> bool:
        """Evaluate up to ``max_items`` more items or until ``budget_s`` is spent.

        At least one item is evaluated when any is left. Returns True when
        ``source`` is exhausted. An exception from the function propagates, with a
        note naming the item's index, exactly as a serial loop would raise it.
        """
        func = self.func
        items, results, times = self.items, self.results, self.times
        perf = time.perf_counter
        cpu0 = time.process_time()
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
                add_item_note(exc, len(items), item)
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
        self._cpu += time.process_time() - cpu0
        self._runnable += runnable_seconds() - runnable0
        return exhausted

    def summary(self) -> Sample:
        """Measure pickle sizes of the first few items and results; freeze a Sample."""
        in_sizes: list[int] = []
        out_sizes: list[int] = []
        pickle_times: list[float] = []
        problem: str | None = None
        for index, (item, result) in enumerate(zip(self.items, self.results, strict=True)):
            if index >= SIZE_ITEMS:
                break
            t0 = time.perf_counter()
            try:
                blob_in = dumps(item)
            except Exception as exc:  # noqa: BLE001 - any pickling failure is reported
                problem = f"item {index} cannot be pickled: {type(exc).__name__}: {exc}"
                break
            try:
                blob_out = dumps(result)
            except Exception as exc:  # noqa: BLE001
                problem = f"the result of item {index} cannot be pickled: {type(exc).__name__}: {exc}"
                break
            pickle.loads(blob_in)
            pickle.loads(blob_out)
            pickle_times.append(time.perf_counter() - t0)
            in_sizes.append(len(blob_in))
            out_sizes.append(len(blob_out))
        return Sample(
            times=tuple(self.times[:_MAX_TIMES_KEPT]),
            cpu_s=self._cpu,
            wall_s=self._wall,
            in_bytes=statistics.fmean(in_sizes) if in_sizes else math.nan,
            out_bytes=statistics.fmean(out_sizes) if out_sizes else math.nan,
            pickle_s=statistics.fmean(pickle_times) if pickle_times else 0.0,
            unpicklable=problem,
            runnable_s=min(self._runnable, self._wall),
        )
