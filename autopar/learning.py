"""Tuning from real runs: evidence kept with the stored plan decides with the model.

Every run that ran as planned (see :mod:`autopar.run`; an override says nothing
about the plan) adds its seconds per item to the plan's :class:`~.evidence.Evidence`.
Then each configuration gets an estimate:

* measured, once :data:`~.evidence.MIN_RUNS` runs back it (their lower median);
* otherwise the model's prediction, with the item time the runs measured (net of
  waiting for a CPU) and scaled by how far the model was off for the parallel
  configurations that were measured.

The plan changes only when another configuration is clearly better: a measured one
by :data:`SWITCH_MARGIN`, an untried one by the model's own :data:`~.model.MIN_SPEEDUP`
(a *trial*, at most :data:`MAX_TRIALS` per plan). One slow run moves nothing: a
single run never counts as measured, and the lower median ignores one outlier. A
stable workload settles on one configuration; once settled, runs like the last
ones are not even written.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

from .evidence import MIN_RUNS, Evidence, config_name, parse_config
from .model import MIN_SPEEDUP, Costs, Workload, format_seconds, predict_parallel
from .plan import Plan
from .planner import Planned, Request, decide, heavy_items, save
from .store import PlanStore
from .system import current_system
from .thread_model import predict_threads
from .workload import costs_key

__all__ = ["LEARN_MIN_S", "LEARN_RATIO", "MAX_TRIALS", "REPEAT_WINDOW_S", "SWITCH_MARGIN", "Option", "learn", "tune"]

logger = logging.getLogger("autopar")

#: Runs shorter than this teach nothing: start-up and timer noise dominate.
LEARN_MIN_S = 0.02
#: One run's item time replaces the sample's only when this far off it (the sample
#: was not representative: a stream's prefix, data that changed). Closer, it waits
#: for a second run to agree.
LEARN_RATIO = 1.5
#: A measured configuration replaces the current one when faster by this share.
SWITCH_MARGIN = 0.10
#: Untried configurations tried per stored plan, at most.
MAX_TRIALS = 3
#: How far the measured parallel runs may scale the model's other predictions.
_CORRECTION_RANGE = (0.5, 4.0)
#: Measured parallel runs this many times off their predictions (either way) have
#: the machine's costs measured again.
COSTS_DISAGREE = 2.0
#: Runs of a plan this close together find the previous run's workers still warm
#: (the warm pools' idle timeout, :data:`autopar.backends.warm.POOL_IDLE_TIMEOUT_S`):
#: untried parallel configurations are then predicted without their start.
REPEAT_WINDOW_S = 30.0


@dataclass(frozen=True)
class Option:
    """A configuration and its estimated time for the whole run."""

    config: str
    estimate_s: float
    runs: int = 0
    """Runs behind a measured estimate (0: the corrected model's prediction)."""

    @property
    def measured(self) -> bool:
        return self.runs >= MIN_RUNS


def tune(current: Option, options: list[Option], *, trials: int) -> tuple[Option, bool]:
    """The configuration to run next, and whether it is a trial of an untried one.

    Pure: the whole policy, property-tested. The current configuration stays unless
    a measured option beats it by :data:`SWITCH_MARGIN`, or an untried one is
    predicted :data:`~.model.MIN_SPEEDUP` times faster and trials are left.
    """
    best = min(options, key=lambda o: o.estimate_s, default=current)
    if best.config == current.config or best.estimate_s >= current.estimate_s:
        return current, False
    if best.measured:
        return (best, False) if best.estimate_s < current.estimate_s * (1 - SWITCH_MARGIN) else (current, False)
    if trials < MAX_TRIALS and best.estimate_s * MIN_SPEEDUP <= current.estimate_s:
        return best, True
    measured = [o for o in options if o.measured and o.config != current.config]
    if measured:  # no trial left: the best measured one may still beat the current one
        return tune(current, measured, trials=trials)
    return current, False


def learn(
    planned: Planned,
    name: str,
    store: PlanStore,
    *,
    n_run: int,
    wall_s: float,
    item_s: float,
    ship_problem: Callable[[], str | None] | None = None,
    warm: int = 0,
) -> Plan | None:
    """Add this run to the plan's evidence; returns the new plan when it changes.

    ``n_run`` items ran in ``wall_s`` (this call's run, after sampling), each taking
    ``item_s`` of computing on average (net of waiting for a CPU). ``warm`` is the
    size of the pool left running after the run. Only runs that ran as planned may
    be reported (see :mod:`autopar.run`).
    """
    options, plan, stored = planned.options, planned.plan, planned.workload
    if options is None or not options.use_cache or planned.hit is None or stored is None:
        return None
    sampled_s = stored.get("item_s")
    if wall_s < LEARN_MIN_S or n_run <= 0 or item_s <= 0:
        return None
    if not isinstance(sampled_s, (int, float)) or isinstance(sampled_s, bool) or sampled_s <= 0:
        return None
    evidence = Evidence.from_record(stored.get("evidence"))
    current = config_name(plan.executor, plan.n_jobs, plan.chunksize)
    if evidence.settled(current, wall_s / n_run):
        return None
    repeated = evidence.repeated(REPEAT_WINDOW_S)  # before this run is recorded
    evidence = evidence.add(current, wall_s / n_run, item_s)
    request = planned.request or Request(
        lambda x: x, name, "", None, options, store, current_system(options.start_method), None, ship_problem
    )
    request = replace(request, store=store, ship_problem=ship_problem or request.ship_problem, warm=lambda: warm)
    allowed = stored.get("executors")
    if isinstance(allowed, list):  # narrower than the call's when the items cannot be pickled
        request = replace(request, executors=tuple(e for e in request.executors if e in allowed))
    n_items = stored.get("n_items")
    n_items = n_items if type(n_items) is int and n_items > 0 else n_run
    t, why_t = _item_time(float(sampled_s), evidence)
    workload = Workload.from_record(stored, n_items=n_items, item_s=t)
    if workload.serial_item_s is not None:  # the caller's own loop, scaled as the items were
        workload = replace(workload, serial_item_s=workload.serial_item_s * t / float(sampled_s))
    decision, costs_dict = decide(request, workload)
    costs = Costs(**{k: v for k, v in costs_dict.items() if k != "measured"})
    cpus = request.system.usable_cpus
    options_, correction = _options(
        evidence, workload, costs, decision.candidates, cpus, warm, current, n_items, repeated=repeated
    )
    options_ = [o for o in options_ if o.config == current or _executor(o.config) in ("serial", *request.executors)]
    if not 1 / COSTS_DISAGREE < correction < COSTS_DISAGREE and request.cluster is None:
        # Measured runs far from the model: the machine's costs may have been timed
        # in a busy moment. Measure them again at the next planning.
        store.delete(costs_key(request.system.start_method, cpus))
    now = next(o for o in options_ if o.config == current)
    choice, trial = tune(now, options_, trials=evidence.trials)
    parsed = parse_config(choice.config)
    if parsed is not None and parsed[0] == "process" and ship_problem is not None and ship_problem() is not None:
        choice, trial, parsed = now, False, parse_config(current)  # it cannot go to workers; it stays serial
    if trial:
        evidence = replace(evidence, trials=evidence.trials + 1)
    changed = choice.config != current
    new = _plan(plan, choice, trial, changed, options_, why_t, request.system.start_method) if changed else plan
    record = {**stored, "item_s": t, "evidence": evidence.to_record()}
    heavy = heavy_items(request, new.executor, t)
    save(request, planned.key, new, record, heavy=heavy)
    if changed:
        logger.debug("autopar: learned for %s: %s", planned.key, new.reason)
        return new
    return None


def _item_time(sampled_s: float, evidence: Evidence) -> tuple[float, str]:
    """The item time to plan with: the runs' median once two agree, one run's when far
    off the sample (it was not representative), else the sample's."""
    observed, count = evidence.item_s()
    if count >= MIN_RUNS or (count == 1 and not 1 / LEARN_RATIO < observed / sampled_s < LEARN_RATIO):
        if abs(observed / sampled_s - 1) < 0.1:
            return observed, ""
        runs = "1 run" if count == 1 else f"{count} runs"
        said = format_seconds(sampled_s)
        return observed, f"items took {format_seconds(observed)} over {runs} (the sample said {said})"
    return sampled_s, ""


def _executor(config: str) -> str:
    parsed = parse_config(config)
    return parsed[0] if parsed is not None else "?"


def describe(config: str) -> str:
    """``serial``, ``2 workers x 64`` or ``8 threads x 1``: a configuration as reasons name it."""
    parsed = parse_config(config)
    if parsed is None or parsed[0] == "serial":
        return config
    unit = "threads" if parsed[0] == "thread" else "workers"
    return f"{parsed[1]} {unit} x {parsed[2]}"


def _options(
    evidence: Evidence,
    w: Workload,
    costs: Costs,
    candidates: tuple[object, ...],
    cpus: int,
    warm: int,
    current: str,
    n_items: int,
    *,
    repeated: bool = False,
) -> tuple[list[Option], float]:
    """Every configuration worth weighing: serial, the model's best per worker count,
    and every configuration with runs, each measured or predicted (corrected); and
    the correction: how far measured parallel runs were from their predictions."""
    configs = {"serial", current, *evidence.runs}
    configs.update(
        config_name(getattr(c, "executor", "process"), c.n_jobs, c.chunksize)  # type: ignore[attr-defined]
        for c in candidates
    )
    predicted: dict[str, float] = {}
    executor_of: dict[str, str] = {}
    for config in configs:
        parsed = parse_config(config)
        if parsed is None:
            continue
        executor, n_jobs, chunksize = parsed
        executor_of[config] = executor
        if n_jobs == 1:
            predicted[config] = n_items * (w.serial_item_s or w.item_s)  # the caller's own threads
        elif executor == "thread":
            predicted[config] = predict_threads(w, n_jobs, chunksize, cpus, n_jobs if repeated else 0)
        else:
            # Calls that come within a warm pool's life find its workers running.
            predicted[config] = predict_parallel(w, costs, n_jobs, chunksize, cpus, n_jobs if repeated else warm)
    # How far the model was off, for each parallel executor on its own (threads and
    # processes are predicted from different costs).
    ratios: dict[str, list[float]] = {}
    for config in evidence.runs:
        measured = evidence.measured(config)
        if config != "serial" and predicted.get(config, 0.0) > 0 and measured is not None:
            ratios.setdefault(executor_of[config], []).append(n_items * measured / predicted[config])
    low, high = _CORRECTION_RANGE
    observed_by = {executor: statistics.median(values) for executor, values in ratios.items()}
    out = []
    for config, prediction in predicted.items():
        measured = evidence.measured(config)
        if measured is not None:
            out.append(Option(config, n_items * measured, evidence.count(config)))
        else:
            correction = min(high, max(low, observed_by.get(executor_of[config], 1.0)))
            out.append(Option(config, prediction * (correction if config != "serial" else 1.0), 0))
    return out, observed_by.get("process", 1.0)


def _plan(
    old: Plan, choice: Option, trial: bool, changed: bool, options: list[Option], why_t: str, start_method: str
) -> Plan:
    """The stored plan for ``choice``, with a reason that says what backs it."""
    parsed = parse_config(choice.config)
    assert parsed is not None
    executor, n_jobs, chunksize = parsed
    serial = next((o for o in options if o.config == "serial"), None)
    unit = "threads" if executor == "thread" else "workers"
    what = "serial" if executor == "serial" else f"{n_jobs} {unit}, chunks of {chunksize}"
    if choice.measured:
        backing = f"measured {format_seconds(choice.estimate_s)} over {choice.runs} runs"
    else:
        backing = f"{'trying it: ' if trial else ''}predicted {format_seconds(choice.estimate_s)} from real runs"
    others = ", ".join(
        f"{describe(o.config)} {'measured' if o.measured else 'predicted'} {format_seconds(o.estimate_s)}"
        for o in sorted(options, key=lambda o: o.estimate_s)[:3]
        if o.config != choice.config
    )
    speedup = serial.estimate_s / choice.estimate_s if serial is not None and choice.estimate_s > 0 else 1.0
    reason = f"{what}, learned from runs: {backing}"
    reason += "".join(f"; {part}" for part in (why_t, others) if part)
    return Plan(
        executor="serial" if executor == "serial" else executor,  # type: ignore[arg-type]
        n_jobs=n_jobs,
        chunksize=chunksize,
        estimated_speedup=1.0 if executor == "serial" else max(speedup, 0.0),
        reason=reason,
        warnings=old.warnings,
        from_cache=False,
        start_method=start_method,
        learned=old.learned + (1 if changed else 0),
    )
