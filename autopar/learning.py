"""Learning from real runs: a run far off what the plan assumed corrects the stored plan.

Only runs that ran as planned reach here (see :mod:`autopar.run`): an override
says nothing about the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from .model import Workload, format_seconds
from .plan import Plan
from .planner import HEAVY_ITEM_S, Planned, Request, decide, save
from .store import PlanStore
from .system import current_system

__all__ = ["LEARN_MIN_S", "LEARN_RATIO", "LEARN_RATIO_WORKERS", "LEARN_WALL_RATIO", "learn"]

logger = logging.getLogger("autopar")

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
    Only runs that ran as planned may be reported (see :mod:`autopar.run`).
    """
    options, plan, stored = planned.options, planned.plan, planned.workload
    if options is None or not options.use_cache or planned.hit is None or stored is None:
        return None
    sampled_s = stored.get("item_s")
    if wall_s < LEARN_MIN_S or n_run <= 0 or item_s <= 0:
        return None
    if not isinstance(sampled_s, (int, float)) or isinstance(sampled_s, bool) or sampled_s <= 0:
        return None
    ratio = item_s / sampled_s
    predicted_s = n_run * sampled_s / max(plan.estimated_speedup, 1e-9) if plan.executor == "process" else 0.0
    slow_run = plan.executor == "process" and wall_s > LEARN_WALL_RATIO * predicted_s
    margin = LEARN_RATIO if plan.executor == "serial" else LEARN_RATIO_WORKERS
    if 1 / margin < ratio < margin and not slow_run:
        return None
    request = planned.request or Request(
        lambda x: x, name, "", None, options, store, current_system(options.start_method), None, ship_problem
    )
    request = replace(request, store=store, ship_problem=ship_problem or request.ship_problem)
    n_items = stored.get("n_items")
    workload = Workload.from_record(stored, n_items=n_items if type(n_items) is int else n_run, item_s=item_s)
    decision, _ = decide(request, workload)
    executor, n_jobs, chunksize = decision.executor, decision.n_jobs, decision.chunksize
    if plan.executor == "process" and slow_run and wall_s > n_run * item_s:
        executor, n_jobs, chunksize = "serial", 1, 1  # slower than the loop over these items would have been
    if executor == "process" and ship_problem is not None and ship_problem() is not None:
        return None  # it cannot go to workers; it stays serial
    observed = (
        f"{n_run} items ran in {format_seconds(wall_s)} ({format_seconds(item_s)} per item; "
        f"the sample said {format_seconds(sampled_s)})"
    )
    parallel = executor == "process"
    learned = Plan(
        executor="process" if parallel else "serial",
        n_jobs=n_jobs,
        chunksize=chunksize,
        estimated_speedup=decision.estimated_speedup if parallel else 1.0,
        reason=f"{n_jobs} workers, chunks of {chunksize}, learned from a run: {observed}"
        if parallel
        else f"serial, learned from a run: {observed}",
        warnings=plan.warnings,
        from_cache=False,
        start_method=request.system.start_method,
        learned=plan.learned + 1,
    )
    save(request, planned.key, learned, {**stored, "item_s": item_s}, heavy=parallel and item_s >= HEAVY_ITEM_S)
    logger.debug("autopar: learned for %s: %s", planned.key, learned.reason)
    return learned
