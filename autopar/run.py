"""One run path: (plan, the caller's overrides, the backend) -> results + a RunRecord.

``map``, ``imap``, timeouts and explicit arguments all go through here. The record
says what actually ran; only a run that ran as planned is reported to the planner
to learn from (an override says nothing about the plan).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import operator
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

from .backends import Backend, SerialBackend, ThreadBackend, check_backend, get_backend
from .backends.thread import warm_threads
from .errors import NotIterableError
from .learning import LEARN_MIN_S, learn
from .model import Costs, Workload, format_seconds
from .notes import item_index, shift_item_note
from .plan import Plan, serial_plan
from .planner import Cluster, Options, Planned, decide, make_plan
from .sampling import runnable_seconds
from .serialization import Shipment
from .store import get_store
from .system import in_worker, usable_cpus
from .worker_setup import refresh_setup

__all__ = ["IN_WORKER", "Call", "Execution", "RunRecord", "Target", "as_sequence", "iterate", "resolve"]

logger = logging.getLogger("autopar")

IN_WORKER = "serial: inside a worker (no nested pools)"
#: A stream of unknown length running serially is weighed again for workers each
#: time its run doubles, from this many seconds on (see ``_serial_until_parallel_pays``).
STREAM_CHECK_S = 0.05
#: Items it runs between looks at the clock, at most (the batch doubles up to it).
STREAM_BATCH_MAX = 4096
_FIXED = serial_plan("explicit n_jobs and chunksize")


def as_sequence(iterable: Iterable[Any]) -> Sequence[Any]:
    """Lists, tuples and ranges as they are; any other iterable read into a list."""
    if isinstance(iterable, (list, tuple, range)):
        return iterable
    return list(iterate(iterable))


def iterate(iterable: Iterable[Any]) -> Iterator[Any]:
    """``iter(iterable)``, or :class:`NotIterableError` naming what was given."""
    try:
        return iter(iterable)
    except TypeError:
        msg = f"autopar needs an iterable of items, got {type(iterable).__name__}"
        raise NotIterableError(msg) from None


def length_hint(iterable: Iterable[Any]) -> int | None:
    """The input's length when known (a sequence, or a length hint), else None."""
    if isinstance(iterable, Sequence):
        return len(iterable)
    hint = operator.length_hint(iterable, 0)
    return hint or None


_THREADS = ThreadBackend()


@dataclasses.dataclass(frozen=True)
class Target:
    """A call's backend: its name, the backend object, the parallel executors the plan
    may choose, and for a cluster what planning needs.

    ``auto`` plans for threads and processes; ``process``, ``thread`` and ``dask``
    each for their own. Explicit ``n_jobs`` without a parallel plan uses the first
    of ``explicit`` (processes for ``auto``, as before threads existed).
    """

    name: str
    backend: Backend
    cluster: Cluster | None = None
    executors: tuple[str, ...] = ("process",)

    @classmethod
    def named(cls, name: str, start_method: str, *, threads: bool = True) -> Target:
        """The backend called ``name``; a cluster's is asked for its size and costs.
        Without ``threads``, ``auto`` plans for processes only."""
        check_backend(name)
        if name == "dask" and in_worker():  # nested in a worker, a map runs serially anyway
            return cls(name, SerialBackend())
        backend = get_backend(name, start_method=start_method)
        cluster = None
        if name == "dask":
            info = backend.cluster()  # type: ignore[attr-defined]
            memory = info.memory_per_worker * info.workers
            cluster = Cluster(info.fingerprint, info.threads, memory, backend.measure_costs)  # type: ignore[attr-defined]
        executors = {"auto": ("thread", "process"), "thread": ("thread",)}.get(name, ("process",))
        if not threads and name == "auto":
            executors = ("process",)
        return cls(name, backend, cluster, executors)

    @property
    def explicit(self) -> str:
        """The executor explicit ``n_jobs`` gets when the plan is serial."""
        return "thread" if self.name == "thread" else "process"

    def backend_for(self, executor: str) -> Backend:
        """Where an executor's chunks run: threads here, anything else on this target."""
        return _THREADS if executor == "thread" else self.backend

    def warm(self) -> int:
        """Workers of this backend already running (a warm pool), 0 when none."""
        warm_workers: Callable[[], int] | None = getattr(self.backend, "warm_workers", None)
        return warm_workers() if warm_workers is not None else 0

    @property
    def measure(self) -> Callable[[], Costs] | None:
        """How this backend measures its own costs (None: it has none to measure)."""
        measure: Callable[[], Costs] | None = getattr(self.backend, "measure_costs", None)
        return measure


@dataclasses.dataclass(frozen=True)
class Execution:
    """What a call will run: executor, workers and chunk size, and whether the plan chose them."""

    executor: str
    n_jobs: int
    chunksize: int
    as_planned: bool


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What actually ran, for learning and reports."""

    executor: str
    n_jobs: int
    chunksize: int
    n_items: int
    wall_s: float
    busy_s: float
    as_planned: bool


def resolve(
    plan: Plan,
    *,
    n_jobs: int | None,
    chunksize: int | None,
    cap: int | None,
    remaining: int | None,
    parallel: str = "process",
) -> Execution:
    """Executor, workers and chunk size after explicit arguments override the plan
    (``parallel``: the executor explicit ``n_jobs`` gets when the plan is serial)."""
    if n_jobs is None:
        if plan.executor == "serial":
            return Execution("serial", 1, 1, True)
        size = chunksize if chunksize is not None else plan.chunksize
        return Execution(plan.executor, plan.n_jobs, size, size == plan.chunksize)
    n = n_jobs if cap is None else min(n_jobs, cap)
    if remaining is not None:
        n = min(n, max(1, remaining))
    if n <= 1:
        return Execution("serial", 1, 1, plan.executor == "serial")
    if chunksize is None:
        if plan.executor != "serial":
            chunksize = plan.chunksize
        elif remaining is not None:
            chunksize = max(1, math.ceil(remaining / (4 * n)))  # Pool.map's default
        else:
            chunksize = 1
    executor = plan.executor if plan.executor != "serial" else parallel
    same = executor == plan.executor and n == plan.n_jobs and chunksize == plan.chunksize
    return Execution(executor, n, chunksize, same)


@dataclasses.dataclass
class Call:
    """One ``.map``/``.imap``/``.plan`` call of a decorated function: the values the run
    path needs, handed over by the decorator (no private attributes are read)."""

    func: Callable[[Any], Any]
    name: str
    digest: str
    options: Options
    chunksize: int | None
    start_method: str
    target: Target
    shipment: Callable[[], Shipment]
    ship_problem: Callable[[], str | None]
    count: Callable[[bool | None], None]
    learned: Callable[[], None]

    def here(self) -> bool:
        """True when items must run in this process (inside a worker, or backend="serial")."""
        return in_worker() or self.target.name == "serial"

    def plan(
        self,
        source: Iterator[Any],
        n_items: int | None,
        *,
        use_cache: bool = True,
        profile: bool = False,
        items: Sequence[Any] | None = None,
    ) -> Planned:
        """Probe, look up, and on a miss sample, decide and store (see :mod:`autopar.planner`)."""
        options = self.options if use_cache else dataclasses.replace(self.options, use_cache=False)
        planned = make_plan(
            self.func,
            self.name,
            self.digest,
            source,
            n_items,
            options,
            get_store(),
            profile=profile,
            ship_problem=self.ship_problem,
            cluster=self.target.cluster,
            measure=self.target.measure,
            items=items,
            warm=self.target.warm,
            ship_bytes=self._ship_bytes,
            executors=self.target.executors,
            warm_threads=warm_threads,
        )
        self.count(planned.hit)
        return planned

    def _begin(self) -> None:
        """A new call: per-worker setup runs again here if what it reads changed."""
        if isinstance(self.func, functools.partial) and not in_worker():
            refresh_setup(self.func)

    def _ship_bytes(self) -> tuple[int, int]:
        """Bytes of the function sent with every chunk, and read once by each worker."""
        shipment = self.shipment()
        return shipment.chunk_bytes, shipment.once_bytes

    def sendable(self, executor: str | None = None) -> Callable[[Any], Any] | Shipment:
        """What the backend runs: the function itself in this process (serially or on
        threads), its shipment elsewhere."""
        here = executor in ("serial", "thread") or isinstance(self.target.backend, (SerialBackend, ThreadBackend))
        return self.func if here else self.shipment()

    # -- map ------------------------------------------------------------------------

    def map(
        self, items: Sequence[Any], n_jobs: int | None, chunksize: int | None, timeout: float | None, tick: Any
    ) -> list[Any]:
        """``[func(x) for x in items]`` as planned, overridden, or under a timeout."""
        self._begin()
        if len(items) == 0 or self.here() or (n_jobs == 1 and timeout is None):
            # An item here cannot be interrupted: a timeout is checked between items
            # (n_jobs=1 with a timeout gets one worker process, below).
            return SerialBackend().map(self.func, items, start=0, progress=tick, timeout=timeout)
        if timeout is not None:
            return self._map_with_timeout(items, n_jobs, chunksize, timeout, tick)
        chunksize = chunksize if chunksize is not None else self.chunksize
        planned: Planned | None = None
        done: list[Any] = []
        skip: list[int] = []  # positions evaluated while sampling, across the input
        if n_jobs is not None and chunksize is not None:  # nothing to plan
            execution = resolve(
                _FIXED, n_jobs=n_jobs, chunksize=chunksize, cap=self.options.max_workers, remaining=len(items),
                parallel=self.target.explicit,
            )  # fmt: skip
            execution = dataclasses.replace(execution, as_planned=False)
        else:
            planned = self.plan(iter(items), len(items), items=items)
            done = planned.sampler.results
            failed = planned.sampler.failed
            skip = sorted([*planned.sampler.scattered, *([failed[0]] if failed is not None else [])])
            remaining = len(items) - len(done) - len(skip)
            execution = resolve(
                planned.plan, n_jobs=n_jobs, chunksize=chunksize, cap=self.options.max_workers, remaining=remaining,
                parallel=self.target.explicit,
            )  # fmt: skip
            if tick is not None:
                tick(len(done) + len(skip))
        failed = planned.sampler.failed if planned is not None else None
        try:
            results, record = self._run(items, len(done), execution, tick, skip)
        except Exception as exc:
            index = item_index(exc)
            if failed is not None and index is not None and index > failed[0]:
                raise failed[1] from None  # the item sampled earlier in the input comes first
            raise
        if failed is not None:
            raise failed[1]  # no earlier item raised: now it is this one's turn
        if planned is not None:
            self._learn(planned, record)
            for position, value in planned.sampler.scattered.items():
                results[position - len(done)] = value
        results[:0] = done  # a memmove; ``done + results`` would copy every result again
        return results

    def _run(
        self, items: Sequence[Any], start: int, execution: Execution, tick: Any, skip: Sequence[int] = ()
    ) -> tuple[list[Any], RunRecord]:
        busy: dict[int, float] = {}
        began = time.perf_counter()
        waited = runnable_seconds()
        if execution.executor == "serial":
            results = SerialBackend().map(self.func, items, start=start, progress=tick, skip=skip)
        else:
            results = self.target.backend_for(execution.executor).map(
                self.sendable(execution.executor),
                items,
                start=start,
                n_jobs=execution.n_jobs,
                chunksize=execution.chunksize,
                progress=tick,
                busy=busy,
                skip=skip,
            )
        wall_s = time.perf_counter() - began
        if execution.executor == "serial":  # net of waiting for a CPU: the work's own time
            busy_s = wall_s - min(max(0.0, runnable_seconds() - waited), 0.9 * wall_s)
        else:
            busy_s = sum(busy.values())
        record = RunRecord(
            execution.executor,
            execution.n_jobs,
            execution.chunksize,
            len(results) - len(skip),
            wall_s,
            busy_s,
            execution.as_planned,
        )
        return results, record

    def _map_with_timeout(
        self, items: Sequence[Any], n_jobs: int | None, chunksize: int | None, timeout: float, tick: Any
    ) -> list[Any]:
        """Every item in workers, none here: an item stuck in this process could not be
        interrupted, so the probe is skipped and Pool's default chunking is used."""
        cap = self.options.max_workers
        cluster = self.target.cluster
        cpus = cluster.threads if cluster is not None else usable_cpus()
        n = max(1, min(n_jobs or cpus, cap or len(items), len(items)))
        size = chunksize or self.chunksize or max(1, math.ceil(len(items) / (4 * n)))
        return self.target.backend.map(
            self.sendable(), items, start=0, n_jobs=n, chunksize=size, timeout=timeout, progress=tick
        )

    def _learn(self, planned: Planned, record: RunRecord) -> None:
        """Let the planner correct the stored plan from a run that ran as planned."""
        if not record.as_planned or record.executor != planned.plan.executor:
            return  # explicit arguments overrode the plan: this run says nothing about it
        if record.executor not in ("serial", "process", "thread") or record.busy_s <= 0:
            return  # a cluster ran it (no busy times yet)
        if record.wall_s < LEARN_MIN_S or record.n_items <= 0:
            return
        store = get_store()
        item_s = record.busy_s / record.n_items
        if record.executor == "thread":  # time inside chunks includes waiting for the GIL and cores:
            sampled = (planned.workload or {}).get("item_s")  # the item's own time is the sample's
            if isinstance(sampled, float) and sampled > 0:
                item_s = sampled
        n_run, wall_s = record.n_items, record.wall_s
        ship, warm = self.ship_problem, self.target.warm()
        try:
            learned = learn(
                planned, self.name, store, n_run=n_run, wall_s=wall_s, item_s=item_s, ship_problem=ship, warm=warm
            )
        except Exception:  # the results are done: learning must never lose them
            logger.debug("autopar: learning from a run of %s failed", self.name, exc_info=True)
            return
        if learned:
            self.learned()

    # -- imap -----------------------------------------------------------------------

    def imap(
        self,
        source: Iterator[Any],
        n_items: int | None,
        ordered: bool,
        n_jobs: int | None,
        chunksize: int | None,
        tick: Any,
    ) -> Iterator[Any]:
        """Results as they come (``ordered``: in input order), planned as ``map`` is."""
        self._begin()
        if self.here() or n_jobs == 1:
            yield from SerialBackend().imap(
                self.func, source, offset=0, n_jobs=1, chunksize=1, ordered=True, progress=tick
            )
            return
        chunksize = chunksize if chunksize is not None else self.chunksize
        offset = 0
        planned: Planned | None = None
        if n_jobs is not None and chunksize is not None:  # nothing to plan, as in map()
            execution = resolve(
                _FIXED, n_jobs=n_jobs, chunksize=chunksize, cap=self.options.max_workers, remaining=n_items,
                parallel=self.target.explicit,
            )  # fmt: skip
        else:
            planned = self.plan(source, n_items)
            if tick is not None:
                tick(len(planned.sampler.results))
            yield from planned.sampler.results
            offset = len(planned.sampler.items)
            remaining = None if n_items is None else n_items - offset
            execution = resolve(
                planned.plan, n_jobs=n_jobs, chunksize=chunksize, cap=self.options.max_workers, remaining=remaining,
                parallel=self.target.explicit,
            )  # fmt: skip
        if execution.executor == "serial" and n_items is None and planned is not None and execution.as_planned:
            switch = yield from self._serial_until_parallel_pays(planned, source, offset, tick)
            if switch is None:
                return
            execution, offset = switch
        if execution.executor == "serial":
            yield from SerialBackend().imap(
                self.func, source, offset=offset, n_jobs=1, chunksize=1, ordered=True, progress=tick
            )
            return
        yield from self.target.backend_for(execution.executor).imap(
            self.sendable(execution.executor),
            source,
            offset=offset,
            n_jobs=execution.n_jobs,
            chunksize=execution.chunksize,
            ordered=ordered,
            progress=tick,
        )

    def _serial_until_parallel_pays(
        self, planned: Planned, source: Iterator[Any], offset: int, tick: Any
    ) -> Generator[Any, None, tuple[Execution, int] | None]:
        """Run a stream of unknown length here while it is short; once the items seen
        show that workers would pay for as many more, return where to go on in parallel.

        The stream's plan assumed its length. Each time the serial run doubles its
        time (from :data:`STREAM_CHECK_S`), the model decides again for a stream as
        long again as the part seen, with the item time measured here (net of
        waiting for a CPU). Returns None when the stream ends first.
        """
        request = planned.request
        serial = SerialBackend()
        index, batch, check_at = offset, 1, STREAM_CHECK_S
        elapsed = 0.0
        while True:
            items = list(itertools.islice(source, batch))
            if not items:
                return None
            began, waited = time.perf_counter(), runnable_seconds()
            try:
                results = serial.map(self.func, items)
            except BaseException as exc:
                shift_item_note(exc, index)
                raise
            took = time.perf_counter() - began
            elapsed += took - min(max(0.0, runnable_seconds() - waited), 0.9 * took)
            if tick is not None:
                tick(len(results))
            yield from results
            index += len(items)
            batch = min(batch * 2, STREAM_BATCH_MAX)
            if elapsed < check_at or request is None or self.ship_problem() is not None:
                continue
            check_at *= 2
            seen = index - offset
            workload = Workload.from_record(planned.workload or {}, n_items=seen, item_s=elapsed / seen)
            try:
                decision, _ = decide(dataclasses.replace(request, n_items=seen, warm=self.target.warm), workload)
            except Exception:  # the stream goes on here, as planned
                logger.debug("autopar: weighing workers for a stream of %s failed", self.name, exc_info=True)
                request = None  # the rest of the stream runs here, as planned
                continue
            if decision.executor != "serial":
                unit = "threads" if decision.executor == "thread" else "workers"
                logger.info(
                    "autopar: %s: a stream of unknown length goes to %d %s after %d items (%s each): %s",
                    self.name, decision.n_jobs, unit, index, format_seconds(elapsed / seen), decision.reason,
                )  # fmt: skip
                return Execution(decision.executor, decision.n_jobs, decision.chunksize, True), index

    # -- plan -----------------------------------------------------------------------

    def plan_only(self, items: Sequence[Any]) -> Plan:
        """What ``map(items)`` would do (a few items are evaluated to measure them)."""
        if in_worker():
            return serial_plan(IN_WORKER, data=items)
        if self.target.name == "serial":
            return serial_plan("serial: backend='serial'", data=items)
        planned = self.plan(iter(items), len(items), items=items)
        return dataclasses.replace(planned.plan, data=items)
