"""From a function and its input to a :class:`~autopar.plan.Plan`: look up, or measure.

The path of one call::

    probe a few items here (results kept) -> time bucket -> key -> store lookup
        hit  -> the stored plan (validated, clamped, fingerprint checked)
        miss -> sample a few more items -> cost model -> store the plan

Only the probe runs on a hit: it is the user's own work, not overhead, since its
results are kept. Planning never starts a pool except to measure the machine's
costs, once per machine and start method (see :mod:`autopar.calibration`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any
from warnings import warn

from ._version import CACHE_FORMAT
from .calibration import load_or_measure_costs
from .errors import AutoparWarning
from .model import (
    STREAM_ASSUMED_ITEMS,
    Costs,
    Decision,
    Workload,
    choose_plan,
    format_seconds,
    prior_costs,
)
from .plan import Plan, plan_record, read_plan_record, serial_plan, stale_reason
from .sampling import Sampler
from .serialization import pickle_problem
from .store import PlanStore
from .system import SystemInfo, current_system
from .workload import plan_key, size_bucket, time_bucket

__all__ = [
    "DEFAULT_TTL_S",
    "Cluster",
    "Options",
    "Planned",
    "forget_hints",
    "learn",
    "make_plan",
    "plan_prefix",
]

logger = logging.getLogger("autopar")

#: Plans older than a week are re-measured (the prior library's proven default).
DEFAULT_TTL_S = 7 * 24 * 3600.0
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
#: A run whose items took this many times longer (or shorter) than the sample
#: said corrects the stored plan: the first items were not representative, or the
#: data changed. Below it, the difference is noise a plan does not care about.
LEARN_RATIO = 1.5
#: The same for a run on workers, whose busy time is coarser: a freshly started
#: worker faults in its pages, and workers share the CPUs with the parent.
LEARN_RATIO_WORKERS = 2.0
#: A parallel run this much slower than its prediction corrects the plan too.
LEARN_WALL_RATIO = 1.5
#: Runs shorter than this teach nothing: start-up and timer noise dominate.
LEARN_MIN_S = 0.02
#: Items at least this heavy are not probed here once a stored plan sends them to
#: workers: probing one would run it alone while the workers wait (a 0.25 s item
#: on two workers costs a third of a six-item run). A hint row remembers the time
#: bucket, and real runs check it (see :func:`learn`).
HEAVY_ITEM_S = 0.01
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


_hints: dict[str, int | None] = {}
_HINTS_MAX = 1024


def _hint_key(plan_key_: str) -> str:
    """The hint row for a plan key: the same key without its time bucket."""
    return "hint:" + plan_key_.rsplit(":t", 1)[0]


def _read_hint(store: PlanStore, key: str) -> int | None:
    """The remembered time bucket, memoised per process (one store read per key)."""
    if key in _hints:
        return _hints[key]
    text = store.get(key)
    bucket: int | None = None
    if isinstance(text, str) and text.isdigit() and len(text) <= 2 and int(text) <= 40:
        bucket = int(text)
    if len(_hints) >= _HINTS_MAX:
        _hints.clear()
    _hints[key] = bucket
    return bucket


def _write_hint(store: PlanStore, plan_key_: str, tbucket: int | None, name: str, ttl: float) -> None:
    key = _hint_key(plan_key_)
    if tbucket is None:
        if _hints.get(key) is not None:  # only a hint known to exist costs a write to drop
            store.delete(key)
        _hints[key] = None
        return
    store.set(key, str(tbucket), tag=name, expire=ttl)
    _hints[key] = tbucket


def forget_hints() -> None:
    """Drop the per-process memo of hint rows (after the store was cleared)."""
    _hints.clear()


def plan_prefix(name: str) -> str:
    """The key prefix shared by every plan of the function called ``name``."""
    return f"plan:v{CACHE_FORMAT}:{name}:"


def _lookup(
    store: PlanStore,
    keys: list[str],
    system: SystemInfo,
    options: Options,
) -> tuple[str, Plan, dict[str, Any]] | None:
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
        plan = Plan(
            executor=record.executor,
            n_jobs=record.n_jobs,
            chunksize=record.chunksize,
            estimated_speedup=record.estimated_speedup,
            reason=record.reason,
            warnings=record.warnings,
            from_cache=True,
            start_method=system.start_method,
            learned=record.learned,
        )
        return key, plan, record.workload
    return None


def _decide(
    workload: Workload, system: SystemInfo, options: Options, store: PlanStore, cluster: Cluster | None = None
) -> tuple[Decision, dict[str, Any]]:
    """The model's decision, measuring machine costs only when they could matter."""
    costs = prior_costs(system.start_method)
    cpus, cap = system.usable_cpus, options.max_workers
    memory: float | None = float(system.available_memory)
    if cluster is None:
        workload = replace(workload, worker_bytes=worker_bytes(system.start_method))
    else:  # the cluster's workers run already, and Dask manages their memory
        memory = None
        costs = load_or_measure_costs(store, system, measure=cluster.measure)
        decision = choose_plan(workload, costs, usable_cpus=cpus, max_workers=cap)
        return decision, asdict(costs)
    decision = choose_plan(workload, costs, usable_cpus=cpus, max_workers=cap, memory_bytes=memory)
    best = min((c.predicted_s for c in decision.candidates), default=float("inf"))
    clearly_serial = decision.executor == "serial" and decision.serial_s < CLEARLY_SERIAL * best
    if not clearly_serial and decision.candidates:
        costs = load_or_measure_costs(store, system)
        decision = choose_plan(workload, costs, usable_cpus=cpus, max_workers=cap, memory_bytes=memory)
    return decision, asdict(costs)


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
) -> Planned:
    """Probe, look up, and on a miss sample, decide and store. See the module doc.

    ``func`` is called here to measure. ``ship_problem`` says why the function
    cannot be sent to workers (default: ``func`` fails both pickle and cloudpickle);
    it is asked only before a process plan is returned.
    """
    t_start = time.perf_counter()
    system = current_system(options.start_method) if cluster is None else cluster.system()
    parallel = "process" if cluster is None else cluster.executor
    sampler = Sampler(func)

    def key_for(bucket: int) -> str:
        return plan_key(
            name,
            digest,
            size=size_bucket(n_items),
            tbucket=bucket,
            start_method=system.start_method,
            cpus=system.usable_cpus,
            max_workers=options.max_workers,
        )

    if options.use_cache and not profile and n_items is not None and n_items > 1:
        hinted = _read_hint(store, _hint_key(key_for(0)))
        if hinted is not None:
            found = _lookup(store, [key_for(hinted)], system, options)
            if found is not None and found[1].executor == parallel:
                logger.debug("autopar: heavy items, plan %s used without probing", found[0])
                return Planned(found[1], sampler, source, True, found[0], options, found[2])

    exhausted = sampler.run(source, max_items=PROBE_MAX_ITEMS, budget_s=PROBE_BUDGET_S)
    exhausted = exhausted or (n_items is not None and len(sampler.items) >= n_items)
    probe_s = sorted(sampler.times)[len(sampler.times) // 2] if sampler.times else 0.0
    tbucket = time_bucket(probe_s)
    key = key_for(tbucket)
    if exhausted:
        plan = serial_plan(
            f"serial: all {len(sampler.items)} item(s) were evaluated while measuring",
            start_method=system.start_method,
        )
        return Planned(plan, sampler, source, None, key, options)

    if options.use_cache and not profile:
        # A neighbouring time bucket is as good: a few items' median jitters by tens
        # of percent between calls, and a plan is insensitive to a factor of two.
        neighbours = [key, key_for(tbucket - 1), key_for(tbucket + 1)] if tbucket > 0 else [key, key_for(1)]
        found = _lookup(store, neighbours, system, options)
        if found is not None:
            logger.debug("autopar: plan cache hit for %s: %s", found[0], found[1].reason)
            return Planned(found[1], sampler, source, True, found[0], options, found[2])

    estimated_total = (n_items if n_items is not None else STREAM_ASSUMED_ITEMS) * probe_s
    # Only time spent evaluating items counts against the budget: a slow first open
    # of the store must not starve the sample.
    budget = min(SAMPLE_BUDGET_S, SAMPLE_SHARE * estimated_total) - sampler.elapsed_s
    if budget > 0 and len(sampler.items) < SAMPLE_MAX_ITEMS:
        exhausted = sampler.run(source, max_items=SAMPLE_MAX_ITEMS - len(sampler.items), budget_s=budget)
    sample = sampler.summary()
    if exhausted:
        plan = serial_plan(
            f"serial: all {len(sampler.items)} item(s) were evaluated while measuring",
            start_method=system.start_method,
        )
        return Planned(plan, sampler, source, False, key, options)

    workload = Workload(
        n_items=n_items,
        item_s=sample.mean_s,
        cv=sample.cv,
        cpu_fraction=sample.cpu_fraction,
        in_bytes=sample.in_bytes,
        out_bytes=sample.out_bytes,
        pickle_s=sample.pickle_s,
    )
    decision, costs = _decide(workload, system, options, store, cluster)
    executor: str = decision.executor
    reason, warnings = decision.reason, list(decision.warnings)
    if cluster is not None and executor == "process":
        executor = cluster.executor
        reason = f"{reason} on {cluster.fingerprint}"
    for text in decision.warnings:
        warn(f"autopar: {name}: {text}", AutoparWarning, stacklevel=4)
    if executor == parallel:
        problem = sample.unpicklable or (ship_problem() if ship_problem is not None else pickle_problem(func))
        if problem is not None:
            executor = "serial"
            reason = f"serial: parallel would pay ({decision.estimated_speedup:.2f}x) but {problem}"
            warnings.append(problem)
    speedup = decision.estimated_speedup if executor == parallel else 1.0
    n_jobs = decision.n_jobs if executor == parallel else 1
    chunksize = decision.chunksize if executor == parallel else 1
    planning_s = time.perf_counter() - t_start
    logger.debug("autopar: planned %s in %.1f ms: %s", key, planning_s * 1e3, reason)

    stored = {
        "n_items": n_items,
        "size_bucket": size_bucket(n_items),
        "time_bucket": tbucket,
        "item_s": workload.item_s,
        "cv": workload.cv,
        "cpu_fraction": workload.cpu_fraction,
        "in_bytes": workload.in_bytes,
        "out_bytes": workload.out_bytes,
        "pickle_s": workload.pickle_s,
    }
    if options.use_cache and not profile:
        _save(
            store,
            key,
            name,
            options,
            system,
            executor=executor,
            n_jobs=n_jobs,
            chunksize=chunksize,
            speedup=speedup,
            reason=reason,
            warnings=tuple(warnings),
            workload=stored,
            heavy=executor == parallel and workload.item_s >= HEAVY_ITEM_S and n_items is not None,
        )
    details = None
    if profile:
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
            "system": asdict(system),
        }
    plan = Plan(
        executor=executor,  # type: ignore[arg-type]
        n_jobs=n_jobs,
        chunksize=chunksize,
        estimated_speedup=speedup,
        reason=reason,
        warnings=tuple(warnings),
        from_cache=False,
        start_method=system.start_method,
        profile=details,
    )
    return Planned(plan, sampler, source, False, key, options, stored)


def _save(
    store: PlanStore,
    key: str,
    name: str,
    options: Options,
    system: SystemInfo,
    *,
    executor: str,
    n_jobs: int,
    chunksize: int,
    speedup: float,
    reason: str,
    warnings: tuple[str, ...],
    workload: dict[str, Any],
    heavy: bool,
    learned: int = 0,
) -> None:
    """Store a plan, and the hint that lets its heavy items skip the probe (or drop it)."""
    record = plan_record(
        function=name,
        executor=executor,
        n_jobs=n_jobs,
        chunksize=chunksize,
        estimated_speedup=speedup,
        reason=reason,
        warnings=warnings,
        system=system,
        created=time.time(),
        workload=workload,
        learned=learned,
    )
    store.set(key, record, tag=name, expire=options.ttl)
    _write_hint(store, key, int(key.rsplit(":t", 1)[1]) if heavy else None, name, options.ttl)


def _workload_from(record: dict[str, Any], n_items: int | None, item_s: float) -> Workload:
    def num(name: str, default: float) -> float:
        value = record.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    cv = record.get("cv")
    return Workload(
        n_items=n_items,
        item_s=item_s,
        cv=float(cv) if isinstance(cv, (int, float)) and not isinstance(cv, bool) else None,
        cpu_fraction=num("cpu_fraction", 1.0),
        in_bytes=num("in_bytes", 0.0),
        out_bytes=num("out_bytes", 0.0),
        pickle_s=num("pickle_s", 0.0),
    )


def learn(
    planned: Planned,
    name: str,
    store: PlanStore,
    *,
    n_run: int,
    wall_s: float,
    item_s: float,
    ship_problem: Callable[[], str | None] | None = None,
) -> Plan | None:
    """Correct the stored plan when a real run disagreed with it by a wide margin.

    ``n_run`` items ran in ``wall_s`` (this call's run, after the probe), each taking
    ``item_s`` of computing on average. When that is :data:`LEARN_RATIO` off the
    sampled per-item time, or a parallel run took :data:`LEARN_WALL_RATIO` times its
    prediction, the model decides again with what was observed and the stored plan
    is replaced (its ``learned`` count says how often). Returns the new plan, or None.
    """
    options, plan, stored = planned.options, planned.plan, planned.workload
    if options is None or not options.use_cache or planned.hit is None or stored is None:
        return None
    if wall_s < LEARN_MIN_S or n_run <= 0:
        return None
    sampled_s = stored.get("item_s")
    if not isinstance(sampled_s, (int, float)) or isinstance(sampled_s, bool) or sampled_s <= 0 or item_s <= 0:
        return None
    ratio = item_s / sampled_s
    predicted_s = n_run * sampled_s / max(plan.estimated_speedup, 1e-9) if plan.executor == "process" else 0.0
    slow_run = plan.executor == "process" and wall_s > LEARN_WALL_RATIO * predicted_s
    margin = LEARN_RATIO if plan.executor == "serial" else LEARN_RATIO_WORKERS
    if 1 / margin < ratio < margin and not slow_run:
        return None
    system = current_system(options.start_method)
    n_items = stored.get("n_items")
    workload = _workload_from(stored, n_items if type(n_items) is int else n_run, item_s)
    decision, _ = _decide(workload, system, options, store)
    executor, n_jobs, chunksize = decision.executor, decision.n_jobs, decision.chunksize
    if plan.executor == "process" and slow_run and wall_s > n_run * min(item_s, sampled_s):
        executor, n_jobs, chunksize = "serial", 1, 1  # it ran slower than the loop would have
    if executor == "process" and ship_problem is not None and ship_problem() is not None:
        return None  # it cannot go to workers; it stays serial
    observed = (
        f"{n_run} items ran in {format_seconds(wall_s)} ({format_seconds(item_s)} per item; "
        f"the sample said {format_seconds(sampled_s)})"
    )
    if executor == "serial":
        reason = f"serial, learned from a run: {observed}"
        speedup = 1.0
    else:
        reason = f"{n_jobs} workers, chunks of {chunksize}, learned from a run: {observed}"
        speedup = decision.estimated_speedup
    learned = plan.learned + 1
    _save(
        store,
        planned.key,
        name,
        options,
        system,
        executor=executor,
        n_jobs=n_jobs,
        chunksize=chunksize,
        speedup=speedup,
        reason=reason,
        warnings=plan.warnings,
        workload={**stored, "item_s": item_s},
        heavy=executor == "process" and item_s >= HEAVY_ITEM_S,
        learned=learned,
    )
    logger.debug("autopar: learned for %s: %s", planned.key, reason)
    return Plan(
        executor="process" if executor == "process" else "serial",
        n_jobs=n_jobs,
        chunksize=chunksize,
        estimated_speedup=speedup,
        reason=reason,
        warnings=plan.warnings,
        from_cache=False,
        start_method=system.start_method,
        learned=learned,
    )
