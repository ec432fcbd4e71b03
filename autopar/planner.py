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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any
from warnings import warn

from . import measuring
from .costs import load_or_measure_costs
from .errors import AutoparWarning
from .hints import forget_hints, read_hint, write_hint
from .measuring import THREAD_TIMING_MIN_S, native_threads, one_native_thread
from .model import Costs, Decision, Workload, choose_plan, prior_costs
from .plan import DEFAULT_TTL_S, Plan, plan_record, read_plan_record, serial_plan, stale_reason, stored_plan
from .sampling import Sampler
from .serialization import pickle_problem
from .store import PlanStore
from .system import SystemInfo, current_system
from .worker_setup import find_setup
from .workload import hint_key, key_time_bucket, plan_key, plan_prefix, size_bucket, time_bucket

__all__ = [
    "DEFAULT_TTL_S",
    "Cluster",
    "Options",
    "Planned",
    "decide",
    "forget_hints",
    "heavy_items",
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
#: A prior-cost plan this clearly serial needs no measured costs: even with the
#: measured costs halving the overheads it would stay serial.
CLEARLY_SERIAL = 0.5
#: Items at least this heavy are not probed here once a stored plan sends them to
#: workers: probing one would run it alone while the workers wait (a 0.25 s item
#: on two workers costs a third of a six-item run). A hint row remembers the time
#: bucket, and real runs check it (see :func:`learn`).
HEAVY_ITEM_S = 0.01
#: The same for a plan on threads: tens of threads overlapping waits finish a round
#: in one item's time, so even a 1 ms item probed alone first costs a round.
THREAD_HEAVY_ITEM_S = 0.001
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
    executors: tuple[str, ...] = ("process",)
    """Parallel executors the plan may choose: ``process`` (or the cluster's) and ``thread``."""
    warm_threads: Callable[[], int] = lambda: 0
    """Idle threads of this process a thread plan would use without starting any."""

    @property
    def parallel(self) -> str:
        """The executor a parallel plan names: ``process``, or the cluster's."""
        return "process" if self.cluster is None else self.cluster.executor

    @property
    def allowed(self) -> frozenset[str]:
        """Executors a plan for this request may name: serial, and the parallel ones allowed."""
        return frozenset({"serial", *(e if e == "thread" else self.parallel for e in self.executors)})

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
            executors=self.executors,
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
    executors: tuple[str, ...] = ("process",),
    warm_threads: Callable[[], int] | None = None,
) -> Planned:
    """Probe, look up, and on a miss sample, decide and save. See the module doc.

    ``items``, when the input has random access, lets the sample come from across
    it; their results are then in ``planned.sampler.scattered`` by position.

    ``func`` is called here to measure. ``ship_problem`` says why the function
    cannot be sent to workers (default: ``func`` fails both pickle and cloudpickle);
    it is asked only before a parallel plan is returned. ``measure`` times the
    backend's costs when they could change the decision (a cluster's own measure
    replaces it). ``executors`` are the parallel executors allowed; with ``thread``
    among them the sample also measures how the work scales on two threads.
    """
    t_start = time.perf_counter()
    system = current_system(options.start_method) if cluster is None else cluster.system()
    if cluster is not None:
        measure = cluster.measure
    request = Request(
        func, name, digest, n_items, options, store, system, measure, ship_problem, cluster, profile,
        warm or (lambda: 0), ship_bytes, 0.0, executors if cluster is None else ("process",),
        warm_threads or (lambda: 0),
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
    # Threads matter only for items long enough to time (and comparing costs a few
    # milliseconds of threadpoolctl calls): tiny items are never compared or limited.
    native = request.cluster is None and _probe_s(sampler) >= THREAD_TIMING_MIN_S and native_threads() > 1
    speedup = 1.0
    if native:
        compared = measuring.compare_threads(request.n_items, sampler, source)
        if compared is None:
            return _all_evaluated(request, sampler, source, False, key)
        speedup = compared
    with one_native_thread() if native else contextlib.nullcontext():
        exhausted = measuring.sample(request.n_items, sampler, source, items)
        if not exhausted and sampler.failed is None and _threads_worth_measuring(request, sampler):
            exhausted = measuring.thread_scaling(request.n_items, sampler, source, items)
    if exhausted and sampler.failed is None:
        return _all_evaluated(request, sampler, source, False, key)
    return _decide_and_save(request, sampler, source, key, tbucket, t_start, speedup, sampler.thread_scaling)


def _threads_worth_measuring(request: Request, sampler: Sampler) -> bool:
    """Threads are allowed, and the serial run is long enough for them to matter."""
    if "thread" not in request.executors or request.cluster is not None:
        return False
    return measuring.threads_worth_measuring(request.n_items, sampler)


def _skip_probe(request: Request, sampler: Sampler, source: Iterator[Any]) -> Planned | None:
    """A stored parallel plan for heavy items, found through its hint row: no probe."""
    if not request.cached or request.n_items is None or request.n_items <= 1:
        return None
    hinted = read_hint(request.store, hint_key(request.key(0)))
    if hinted is None:
        return None
    found = _lookup(request, [request.key(hinted)])
    if found is None or found[1].executor not in (request.parallel, "thread"):
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


def _all_evaluated(request: Request, sampler: Sampler, source: Iterator[Any], hit: bool | None, key: str) -> Planned:
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
        if record.executor not in request.allowed:  # forged, or made when more was allowed
            logger.debug("autopar: stored plan %s names %s, not allowed here", key, record.executor)
            continue
        why = stale_reason(record.system, record.created, system, now=now, ttl=options.ttl)
        if why is not None:
            logger.debug("autopar: stored plan %s is stale: %s", key, why)
            store.delete(key)
            continue
        return key, stored_plan(record, system.start_method), record.workload
    return None


def _decide_and_save(
    request: Request,
    sampler: Sampler,
    source: Iterator[Any],
    key: str,
    tbucket: int,
    t_start: float,
    thread_speedup: float = 1.0,
    thread_scaling: float | None = None,
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
        thread_scaling=thread_scaling,
    )
    if sample.unpicklable is not None:  # items that cannot travel may still go to threads
        request = replace(request, executors=tuple(e for e in request.executors if e == "thread"))
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
    stored["executors"] = list(request.executors)  # what learning may move the plan to
    if request.cached:
        heavy = heavy_items(request, plan.executor, workload.item_s) and request.n_items is not None
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
            "thread_scaling": workload.thread_scaling,
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
    parallel = executor in (request.parallel, "thread")
    if executor == request.parallel:
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
    executors, threads = request.executors, request.warm_threads()

    def choose(w: Workload, c: Costs, warm: int) -> Decision:
        return choose_plan(
            w, c, usable_cpus=cpus, max_workers=cap, memory_bytes=memory, warm=warm, executors=executors,
            warm_threads=threads,
        )  # fmt: skip

    decision = choose(workload, costs, request.warm())
    processes = [c.predicted_s for c in decision.candidates if c.executor == "process"]
    best = min(processes, default=float("inf"))
    # Measured costs could at most halve the priors' overheads: a plan that stays
    # serial, or on threads, even then needs no pool started to measure them.
    chosen_s = min(decision.predicted_s, decision.serial_s)
    clearly_not = decision.executor != "process" and chosen_s < CLEARLY_SERIAL * best
    if not clearly_not and processes:
        if request.measure is not None:
            costs = load_or_measure_costs(request.store, system, request.measure)
        workload = _with_function_bytes(request, workload)
        decision = choose(workload, costs, request.warm())  # measuring may have left its pool running
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


def heavy_items(request: Request, executor: str, item_s: float) -> bool:
    """True when a parallel plan's items are heavy enough to skip the probe (see
    :data:`HEAVY_ITEM_S`, :data:`THREAD_HEAVY_ITEM_S`)."""
    if executor == "thread":
        return item_s >= THREAD_HEAVY_ITEM_S
    return executor == request.parallel and item_s >= HEAVY_ITEM_S


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
