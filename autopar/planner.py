"""From a function and its input to a :class:`~autopar.plan.Plan`, in named steps.

::

    probe a few items here (results kept) -> time bucket -> key -> look up
        hit  -> the stored plan (validated, clamped, fingerprint checked)
        miss -> sample a few more items -> decide (cost model) -> save

Only the probe runs on a hit: it is the user's own work, not overhead, since its
results are kept. The planner runs no work of its own: what it needs from where the
work will run (the system, a way to measure that backend's costs, whether the
function can be shipped) arrives as values. :mod:`autopar.learning` corrects a
stored plan from a real run that ran as planned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any
from warnings import warn

from .costs import load_or_measure_costs
from .errors import AutoparWarning
from .hints import forget_hints, read_hint, write_hint
from .model import IO_BOUND_CPU_FRACTION, STREAM_ASSUMED_ITEMS, Costs, Decision, Workload, choose_plan, prior_costs
from .plan import DEFAULT_TTL_S, Plan, plan_record, read_plan_record, serial_plan, stale_reason, stored_plan
from .sampling import Sampler
from .serialization import pickle_problem
from .store import PlanStore
from .system import NATIVE_POOL_MODULES, THREAD_VARS, SystemInfo, current_system
from .worker_setup import find_setup
from .workload import hint_key, key_time_bucket, plan_key, plan_prefix, size_bucket, time_bucket

__all__ = [
    "DEFAULT_TTL_S",
    "Cluster",
    "Options",
    "Planned",
    "decide",
    "forget_hints",
    "make_plan",
    "plan_prefix",
    "save",
]

logger = logging.getLogger("autopar")

#: The probe evaluates at most this many items to learn the time bucket...
PROBE_MAX_ITEMS = 16
#: ...or stops once this much time is spent: one item of >= 0.5 ms is timed well
#: enough on its own, and tiny items get a median over up to 16 calls.
PROBE_BUDGET_S = 0.0005
#: On a miss, sampling continues up to this many items in all...
SAMPLE_MAX_ITEMS = 64
#: ...or this much time, the cold-planning budget of a short call...
SAMPLE_BUDGET_S = 0.02
#: ...or this share of the estimated serial run, so sampling a long run of heavy
#: items never serialises a noticeable part of it.
SAMPLE_SHARE = 0.02
#: A prior-cost plan this clearly serial needs no measured costs: even with the
#: measured costs halving the overheads it would stay serial.
CLEARLY_SERIAL = 0.5
#: Items at least this heavy are not probed here once a stored plan sends them to
#: workers: probing one would run it alone while the workers wait (a 0.25 s item
#: on two workers costs a third of a six-item run). A hint row remembers the time
#: bucket, and real runs check it (see :func:`learn`).
HEAVY_ITEM_S = 0.01
#: With native thread pools loaded, this many pairs of items after the probe are
#: timed alternately with one thread (as a worker runs them) and the caller's own...
LIMITED_PAIRS = 3
#: ...when the probed items take at least this long (shorter ones are timer noise),
#: and believed only when the caller's threads were this much faster (two single
#: items differ by tens of percent on a busy machine).
THREAD_TIMING_MIN_S = 20e-6
THREAD_SPEEDUP_MIN = 1.3
#: A forked worker's own memory to begin with (page tables, first copied pages).
FORK_WORKER_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Options:
    """The decorator's planning options."""

    max_workers: int | None = None
    start_method: str | None = None
    use_cache: bool = True
    ttl: float = DEFAULT_TTL_S


@dataclass(frozen=True)
class Cluster:
    """A cluster to plan for instead of this machine (see :mod:`autopar.backends.dask`).

    ``fingerprint`` takes the start method's place in plan keys and records, so a
    plan made for a laptop is never used on a cluster, nor the other way round.
    """

    fingerprint: str
    threads: int
    memory_bytes: int
    measure: Callable[[], Costs]
    executor: str = "dask"

    def system(self) -> SystemInfo:
        """The cluster as a :class:`SystemInfo`: the seed's invalidation rules apply."""
        here = current_system()
        return replace(
            here, usable_cpus=max(1, self.threads), start_method=self.fingerprint, available_memory=self.memory_bytes
        )


@dataclass(frozen=True)
class Request:
    """One planning: the function, its input's size, and where the work would run."""

    func: Callable[[Any], Any]
    name: str
    digest: str
    n_items: int | None
    options: Options
    store: PlanStore
    system: SystemInfo
    measure: Callable[[], Costs] | None
    """Measures the backend's costs (None: plan from the built-in priors)."""
    ship_problem: Callable[[], str | None] | None
    cluster: Cluster | None = None
    profile: bool = False
    warm: Callable[[], int] = lambda: 0
    """Workers of a pool already running for this call's backend, asked when deciding
    (measuring the costs may have just started one)."""
    ship_bytes: Callable[[], tuple[int, int]] | None = None
    """The function's pickled bytes sent with every chunk, and read once per worker."""
    setup_s: float = 0.0
    """Seconds the function's per-worker setup took here (0: none, or it had run)."""

    @property
    def parallel(self) -> str:
        """The executor a parallel plan names: ``process``, or the cluster's."""
        return "process" if self.cluster is None else self.cluster.executor

    @property
    def cached(self) -> bool:
        """True when this planning reads and writes the store."""
        return self.options.use_cache and not self.profile

    def key(self, bucket: int) -> str:
        return plan_key(
            self.name,
            self.digest,
            size=size_bucket(self.n_items),
            tbucket=bucket,
            start_method=self.system.start_method,
            cpus=self.system.usable_cpus,
            max_workers=self.options.max_workers,
        )


@dataclass
class Planned:
    """A plan plus what planning already computed: sampled items and their results."""

    plan: Plan
    sampler: Sampler
    source: Iterator[Any]
    hit: bool | None
    key: str
    options: Options | None = None
    workload: dict[str, Any] | None = None
    """What the stored plan was made from (for :func:`learn`, which then needs no read)."""
    request: Request | None = None


# -- the steps ---------------------------------------------------------------------------


def make_plan(
    func: Callable[[Any], Any],
    name: str,
    digest: str,
    source: Iterator[Any],
    n_items: int | None,
    options: Options,
    store: PlanStore,
    *,
    profile: bool = False,
    ship_problem: Callable[[], str | None] | None = None,
    cluster: Cluster | None = None,
    measure: Callable[[], Costs] | None = None,
    items: Sequence[Any] | None = None,
    warm: Callable[[], int] | None = None,
    ship_bytes: Callable[[], tuple[int, int]] | None = None,
) -> Planned:
    """Probe, look up, and on a miss sample, decide and save. See the module doc.

    ``items``, when the input has random access, lets the sample come from across
    it; their results are then in ``planned.sampler.scattered`` by position.

    ``func`` is called here to measure. ``ship_problem`` says why the function
    cannot be sent to workers (default: ``func`` fails both pickle and cloudpickle);
    it is asked only before a parallel plan is returned. ``measure`` times the
    backend's costs when they could change the decision (a cluster's own measure
    replaces it).
    """
    t_start = time.perf_counter()
    system = current_system(options.start_method) if cluster is None else cluster.system()
    if cluster is not None:
        measure = cluster.measure
    request = Request(
        func, name, digest, n_items, options, store, system, measure, ship_problem, cluster, profile,
        warm or (lambda: 0), ship_bytes,
    )  # fmt: skip
    sampler = Sampler(func)
    # Per-worker setup runs here before any item is timed: it is not an item's cost.
    with_setup = find_setup(func)
    try:
        setup_s = with_setup.prepare() if with_setup is not None else 0.0
    except Exception:  # noqa: BLE001 - the items that need it raise it, as the call's policy says
        setup_s = 0.0
    if setup_s:
        request = replace(request, setup_s=setup_s)
    skipped = _skip_probe(request, sampler, source)
    if skipped is not None:
        return skipped
    tbucket, exhausted = _probe(request, sampler, source)
    key = request.key(tbucket)
    if exhausted:
        return _all_evaluated(request, sampler, source, None, key)
    found = _look_up(request, tbucket, sampler, source)
    if found is not None:
        return found
    native = request.cluster is None and native_threads() > 1
    speedup = 1.0
    if native:
        compared = _compare_threads(request, sampler, source)
        if compared is None:
            return _all_evaluated(request, sampler, source, False, key)
        speedup = compared
    with one_native_thread() if native else contextlib.nullcontext():
        exhausted = _sample(request, sampler, source, items)
    if exhausted:
        return _all_evaluated(request, sampler, source, False, key)
    return _decide_and_save(request, sampler, source, key, tbucket, t_start, speedup)


def _compare_threads(request: Request, sampler: Sampler, source: Iterator[Any]) -> float | None:
    """How much faster the caller's native thread pools run the work than a worker's
    one thread: the next items alternate between the two, so neighbours are compared
    with neighbours whatever the cost does along the input. None when the input ran
    out. Skipped (1.0) when even one pair would not fit in the sampling budget.
    """
    probe_s = _probe_s(sampler)
    n_items = request.n_items if request.n_items is not None else STREAM_ASSUMED_ITEMS
    budget = min(SAMPLE_BUDGET_S, SAMPLE_SHARE * n_items * probe_s)
    pairs = min(LIMITED_PAIRS, int(budget / (2 * probe_s))) if probe_s > 0 else LIMITED_PAIRS
    first = len(sampler.times)
    for index in range(2 * pairs):
        with one_native_thread() if index % 2 == 0 else contextlib.nullcontext():
            if sampler.run(source, max_items=1, budget_s=0.0):
                return None
    alternated = sampler.times[first:]
    return _thread_speedup(alternated[1::2], alternated[0::2], sampler.cpu_fraction())


def _thread_speedup(caller_times: list[float], worker_times: list[float], cpu_fraction: float) -> float:
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


def _skip_probe(request: Request, sampler: Sampler, source: Iterator[Any]) -> Planned | None:
    """A stored parallel plan for heavy items, found through its hint row: no probe."""
    if not request.cached or request.n_items is None or request.n_items <= 1:
        return None
    hinted = read_hint(request.store, hint_key(request.key(0)))
    if hinted is None:
        return None
    found = _lookup(request, [request.key(hinted)])
    if found is None or found[1].executor != request.parallel:
        return None
    logger.debug("autopar: heavy items, plan %s used without probing", found[0])
    return Planned(found[1], sampler, source, True, found[0], request.options, found[2], request)


def _probe(request: Request, sampler: Sampler, source: Iterator[Any]) -> tuple[int, bool]:
    """Run the first items here; their median time picks the time bucket."""
    exhausted = sampler.run(source, max_items=PROBE_MAX_ITEMS, budget_s=PROBE_BUDGET_S)
    n_items = request.n_items
    exhausted = exhausted or (n_items is not None and len(sampler.items) >= n_items)
    return time_bucket(_probe_s(sampler)), exhausted


def _probe_s(sampler: Sampler) -> float:
    return sampler.median_s()


def _all_evaluated(
    request: Request, sampler: Sampler, source: Iterator[Any], hit: bool | None, key: str
) -> Planned:
    plan = serial_plan(
        f"serial: all {len(sampler.items)} item(s) were evaluated while measuring",
        start_method=request.system.start_method,
    )
    return Planned(plan, sampler, source, hit, key, request.options, None, request)


def _look_up(request: Request, tbucket: int, sampler: Sampler, source: Iterator[Any]) -> Planned | None:
    """The stored plan for this bucket, or a neighbouring one: a few items' median
    jitters by tens of percent between calls, and a plan is insensitive to a factor of two."""
    if not request.cached:
        return None
    buckets = [tbucket, tbucket - 1, tbucket + 1] if tbucket > 0 else [tbucket, 1]
    found = _lookup(request, [request.key(b) for b in buckets])
    if found is None:
        return None
    logger.debug("autopar: plan cache hit for %s: %s", found[0], found[1].reason)
    return Planned(found[1], sampler, source, True, found[0], request.options, found[2], request)


def _lookup(request: Request, keys: list[str]) -> tuple[str, Plan, dict[str, Any]] | None:
    store, system, options = request.store, request.system, request.options
    now = time.time()
    for key in keys:
        record = read_plan_record(store.get(key), usable_cpus=system.usable_cpus, max_workers=options.max_workers)
        if record is None:
            continue
        why = stale_reason(record.system, record.created, system, now=now, ttl=options.ttl)
        if why is not None:
            logger.debug("autopar: stored plan %s is stale: %s", key, why)
            store.delete(key)
            continue
        return key, stored_plan(record, system.start_method), record.workload
    return None


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


def _sample(request: Request, sampler: Sampler, source: Iterator[Any], items: Sequence[Any] | None) -> bool:
    """Sample more items, within the budget; True when the input ran out.

    Only time spent evaluating items counts against the budget: a slow first open
    of the store must not starve the sample. With random access to the input, the
    items come from across it, not its prefix (see :func:`_sample_spread`).
    """
    n_items = request.n_items
    if items is not None and n_items is not None and n_items - len(sampler.items) > SAMPLE_MAX_ITEMS:
        _sample_spread(request, sampler, items, n_items)
        return False
    estimated_total = (n_items if n_items is not None else STREAM_ASSUMED_ITEMS) * _probe_s(sampler)
    budget = min(SAMPLE_BUDGET_S, SAMPLE_SHARE * estimated_total) - sampler.elapsed_s
    if budget > 0 and len(sampler.items) < SAMPLE_MAX_ITEMS:
        return sampler.run(source, max_items=SAMPLE_MAX_ITEMS - len(sampler.items), budget_s=budget)
    return False


def _sample_spread(request: Request, sampler: Sampler, items: Sequence[Any], n_items: int) -> None:
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


def _decide_and_save(
    request: Request,
    sampler: Sampler,
    source: Iterator[Any],
    key: str,
    tbucket: int,
    t_start: float,
    thread_speedup: float = 1.0,
) -> Planned:
    sample = sampler.summary(request.n_items)
    workload = Workload(
        n_items=request.n_items,
        item_s=sample.mean_s,
        worker_setup_s=request.setup_s,
        serial_item_s=sample.mean_s / thread_speedup if thread_speedup > 1.0 else None,
        cv=sample.cv,
        cpu_fraction=sample.cpu_fraction,
        in_bytes=sample.in_bytes,
        out_bytes=sample.out_bytes,
        pickle_s=sample.pickle_s,
    )
    decision, costs = decide(request, workload)
    for text in decision.warnings:
        warn(f"autopar: {request.name}: {text}", AutoparWarning, stacklevel=5)
    plan = _plan_of(request, decision, sample.unpicklable)
    if request.n_items is None:  # a stream: only its first items could be seen
        prefix = f"; sampled from the stream's first {sample.n_timed} items (a prefix: the run may correct it)"
        plan = replace(plan, reason=plan.reason + prefix)
    planning_s = time.perf_counter() - t_start
    logger.debug("autopar: planned %s in %.1f ms: %s", key, planning_s * 1e3, plan.reason)
    if decision.candidates:
        workload = _with_function_bytes(request, workload)
    stored = workload.to_record(tbucket, size_bucket(request.n_items))
    if request.cached:
        heavy = plan.executor == request.parallel and workload.item_s >= HEAVY_ITEM_S and request.n_items is not None
        save(request, key, plan, stored, heavy=heavy)
    if request.profile:
        details = {
            "key": key,
            "planning_s": planning_s,
            "sample": sample.to_dict(),
            "times": list(sample.times),
            "costs": costs,
            "predicted_s": decision.predicted_s,
            "serial_s": decision.serial_s,
            "candidates": [asdict(c) for c in decision.candidates],
            "considered": [asdict(c) for c in decision.considered],
            "estimated_speedup": decision.estimated_speedup,
            "chunk_bytes": workload.chunk_bytes,
            "worker_load_bytes": workload.worker_load_bytes,
            "system": asdict(request.system),
        }
        plan = replace(plan, profile=details)
    return Planned(plan, sampler, source, False, key, request.options, stored, request)


def _plan_of(request: Request, decision: Decision, unpicklable: str | None) -> Plan:
    """The plan a decision makes, serial when the function or items cannot be shipped."""
    executor: str = decision.executor
    reason, warnings = decision.reason, list(decision.warnings)
    cluster = request.cluster
    if cluster is not None and executor == "process":
        executor = cluster.executor
        reason = f"{reason} on {cluster.fingerprint}"
    parallel = executor == request.parallel
    if parallel:
        problem = unpicklable or _ship_problem(request)
        if problem is not None:
            executor, parallel = "serial", False
            reason = f"serial: parallel would pay ({decision.estimated_speedup:.2f}x) but {problem}"
            warnings.append(problem)
    return Plan(
        executor=executor,  # type: ignore[arg-type]
        n_jobs=decision.n_jobs if parallel else 1,
        chunksize=decision.chunksize if parallel else 1,
        estimated_speedup=decision.estimated_speedup if parallel else 1.0,
        reason=reason,
        warnings=tuple(warnings),
        from_cache=False,
        start_method=request.system.start_method,
    )


def _ship_problem(request: Request) -> str | None:
    if request.ship_problem is not None:
        return request.ship_problem()
    return pickle_problem(request.func)


def decide(request: Request, workload: Workload) -> tuple[Decision, dict[str, Any]]:
    """The model's decision, measuring the backend's costs only when they could matter."""
    system, options = request.system, request.options
    cpus, cap = system.usable_cpus, options.max_workers
    if request.cluster is not None:  # its workers run already, and Dask manages their memory
        costs = load_or_measure_costs(request.store, system, request.cluster.measure)
        return choose_plan(workload, costs, usable_cpus=cpus, max_workers=cap), asdict(costs)
    costs = prior_costs(system.start_method)
    memory = float(system.available_memory)
    workload = replace(workload, worker_bytes=worker_bytes(system.start_method))
    decision = choose_plan(workload, costs, usable_cpus=cpus, max_workers=cap, memory_bytes=memory, warm=request.warm())
    best = min((c.predicted_s for c in decision.candidates), default=float("inf"))
    clearly_serial = decision.executor == "serial" and decision.serial_s < CLEARLY_SERIAL * best
    if not clearly_serial and decision.candidates:
        if request.measure is not None:
            costs = load_or_measure_costs(request.store, system, request.measure)
        workload = _with_function_bytes(request, workload)
        warm = request.warm()  # measuring may have left its pool running for this call
        decision = choose_plan(workload, costs, usable_cpus=cpus, max_workers=cap, memory_bytes=memory, warm=warm)
    return decision, asdict(costs)


def _with_function_bytes(request: Request, workload: Workload) -> Workload:
    """The function's pickled sizes, asked only when parallel is in question."""
    if workload.chunk_bytes or workload.worker_load_bytes or request.ship_bytes is None:
        return workload
    try:
        per_chunk, once = request.ship_bytes()
    except Exception:  # noqa: BLE001 - a function that cannot be pickled is reported elsewhere
        return workload
    return replace(workload, chunk_bytes=float(per_chunk), worker_load_bytes=float(once))


def worker_bytes(start_method: str) -> float:
    """An estimate of one worker's own memory before any item.

    A forked worker shares this process's pages until it writes them: a few MiB of
    its own to begin with. A spawn or forkserver worker imports the function's
    module afresh; this process's resident size is a generous stand-in.
    """
    if start_method == "fork":
        return float(FORK_WORKER_BYTES)
    try:
        import psutil

        return float(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil failures must not stop planning
        return float(FORK_WORKER_BYTES)


def save(request: Request, key: str, plan: Plan, workload: dict[str, Any], *, heavy: bool) -> None:
    """Store a plan, and the hint that lets its heavy items skip the probe (or drop it)."""
    record = plan_record(
        function=request.name,
        executor=plan.executor,
        n_jobs=plan.n_jobs,
        chunksize=plan.chunksize,
        estimated_speedup=plan.estimated_speedup,
        reason=plan.reason,
        warnings=plan.warnings,
        system=request.system,
        created=time.time(),
        workload=workload,
        learned=plan.learned,
    )
    ttl = request.options.ttl
    request.store.set(key, record, tag=request.name, expire=ttl)
    write_hint(request.store, key, key_time_bucket(key) if heavy else None, request.name, ttl)
