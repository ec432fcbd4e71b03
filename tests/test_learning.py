"""Plans corrected by what real runs measured, and kept on disk."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autopar import AutoParallel
from autopar.evidence import MAX_RUNS, Evidence, config_name, parse_config
from autopar.learning import MAX_TRIALS, SWITCH_MARGIN, Option, learn, tune
from autopar.model import MIN_SPEEDUP, Workload
from autopar.plan import Plan, PlanRecord, read_plan_record
from autopar.planner import Options, Planned, make_plan
from autopar.store import get_store
from autopar.system import usable_cpus
from autopar.workload import function_identity
from tests import workloads

pytestmark = pytest.mark.timeout(60)


def _planned(func: AutoParallel[[int], int], items: range) -> tuple[Planned, str]:
    """A plan made and stored as ``func.map(items)`` would make it."""
    name, digest = function_identity(func.__wrapped__)
    measure = func.call().target.measure  # the process backend's, as func.map would plan
    raw = func.__wrapped__
    planned = make_plan(raw, name, digest, iter(items), len(items), Options(), get_store(), measure=measure)
    return planned, name


def _stored(planned: Planned) -> PlanRecord:
    record = read_plan_record(get_store().get(planned.key), usable_cpus=usable_cpus(), max_workers=None)
    assert record is not None
    return record


# What a run measured is given to learn() directly: a real run on a busy machine is
# slower than its prediction for reasons no plan can know, and a test of a decision
# controls the measurements it decides from.


def _run(func: AutoParallel[[int], int], wall: float, item: float, n: int = 300) -> tuple[Planned, Plan | None]:
    """Look the plan up as ``func.map`` would, then report a run ``wall`` times its
    prediction whose items took ``item`` times the stored item time."""
    planned, name = _planned(func, range(n))
    assert planned.workload is not None
    stored_s = planned.workload["item_s"]
    n_run = n - len(planned.sampler.items)
    speedup = planned.plan.estimated_speedup if planned.plan.executor == "process" else 1.0
    predicted = n_run * stored_s / speedup
    learned = learn(planned, name, get_store(), n_run=n_run, wall_s=wall * predicted, item_s=item * stored_s)
    return planned, learned


def test_runs_that_agree_with_the_plan_change_nothing_and_settle() -> None:
    planned, _ = _planned(workloads.heavy_plain, range(300))
    assert planned.plan.executor == "process"
    before = _stored(planned)
    for factor in (1.0, 1.3, 0.9, 1.1, 1.0):
        assert _run(workloads.heavy_plain, factor, factor)[1] is None
    after = _stored(planned)
    assert (after.executor, after.n_jobs, after.chunksize, after.learned) == (
        before.executor, before.n_jobs, before.chunksize, 0
    )  # fmt: skip
    runs = Evidence.from_record(after.workload["evidence"])
    assert runs.count(config_name("process", before.n_jobs, before.chunksize)) == MAX_RUNS
    _run(workloads.heavy_plain, 1.05, 1.0)
    assert _stored(planned) == after, "settled: a run like the others is not even written"


def test_one_slow_run_moves_nothing_two_try_the_serial_loop() -> None:
    planned, _ = _planned(workloads.heavy_plain, range(300))
    assert planned.plan.executor == "process"
    speedup = planned.plan.estimated_speedup
    slow = 1.5 * speedup  # wall 1.5x the serial loop's predicted time
    assert _run(workloads.heavy_plain, slow, 1.0)[1] is None, "one run is not evidence"
    _, learned = _run(workloads.heavy_plain, slow, 1.0)
    assert learned is not None
    assert (learned.executor, learned.n_jobs, learned.learned) == ("serial", 1, 1)
    assert "learned from runs" in learned.reason
    assert "trying it" in learned.reason
    assert _stored(planned).executor == "serial"
    assert workloads.heavy_plain.cache_info().learned == 0, "learn() itself counts nothing; .map does"


def test_a_serial_plan_whose_items_prove_heavy_goes_parallel_after_one_run() -> None:
    planned, _ = _planned(workloads.light_plain, range(3000))
    assert planned.plan.executor == "serial", planned.plan.reason
    _, learned = _run(workloads.light_plain, 20.0, 20.0, n=3000)  # items 20x what the sample said
    assert learned is not None, "one run far off the sample says the sample was not representative"
    assert learned.executor == "process"
    assert "the sample said" in learned.reason


def test_a_workload_settles_and_stays_settled_through_noise() -> None:
    """Repeated calls with +-25 % noise on a shared machine: no plan flips after the third."""
    rng = random.Random(7)
    configs = []
    for _ in range(12):
        planned, _ = _run(workloads.heavy_plain, rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.15))
        configs.append((planned.plan.executor, planned.plan.n_jobs, planned.plan.chunksize))
    assert len(set(configs[3:])) == 1, configs


def test_trials_are_bounded_when_nothing_runs_as_predicted() -> None:
    """Every configuration runs 3x slower than predicted: at most MAX_TRIALS untried
    ones are tried, then the best measured one stays."""
    changes = 0
    last = None
    for _ in range(16):
        planned, learned = _run(workloads.heavy_plain, 3.0, 1.0)
        changes += learned is not None
        last = learned or planned.plan
    stored = Evidence.from_record(_stored(planned).workload["evidence"])
    assert stored.trials <= MAX_TRIALS
    assert changes <= MAX_TRIALS + 2
    assert last is not None


def test_explicit_arguments_teach_nothing() -> None:
    workloads.ramp.map(range(300), n_jobs=2)
    assert workloads.ramp.cache_info().learned == 0


def _calls(log: Path) -> list[tuple[int, int]]:
    return [(int(x), int(pid)) for x, pid in (line.split() for line in log.read_text().splitlines())]


def test_heavy_items_skip_the_probe_once_a_plan_sends_them_to_workers(call_log: Path) -> None:
    items = [(x, str(call_log)) for x in range(16)]
    expected = list(range(16))
    # Planned, not run: a run slower than predicted (a busy machine) would rightly
    # correct the plan to serial, and this test is about the plan that was stored.
    assert workloads.logged_heavy.plan(items).executor == "process"
    assert any(pid == os.getpid() for _, pid in _calls(call_log)), "planning probes here"
    before = len(_calls(call_log))
    assert workloads.logged_heavy.map(items) == expected
    assert workloads.logged_heavy.cache_info().hits == 1
    second = _calls(call_log)[before:]
    assert sorted(x for x, _ in second) == expected, "each item exactly once"
    assert all(pid != os.getpid() for _, pid in second), "no item probed here on a hit"


def test_clearing_the_cache_forgets_the_heavy_hint(call_log: Path) -> None:
    items = [(x, str(call_log)) for x in range(12)]
    workloads.logged_heavy.map(items)
    workloads.logged_heavy.cache_clear()
    workloads.logged_heavy.map(items)
    assert workloads.logged_heavy.cache_info().misses == 1


def test_results_too_big_for_memory_warn_and_say_so_in_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    import autopar
    from autopar import system

    monkeypatch.setattr(system, "available_memory", lambda: 64 * 2**20)  # 64 MiB "available"
    with pytest.warns(autopar.AutoparWarning, match=r"use \.imap"):
        plan = workloads.big_result.plan(range(100))  # 100 x 1 MiB results
    assert any(".imap" in w for w in plan.warnings)


_options = st.builds(
    Option,
    st.sampled_from(["serial", "process:2:1", "process:2:16", "process:4:8", "process:3:64"]),
    st.floats(1e-3, 100.0),
    st.integers(0, 5),
)


@given(_options, st.lists(_options, max_size=6), st.integers(0, MAX_TRIALS + 1))
def test_tune_keeps_the_current_plan_unless_another_is_clearly_better(
    current: Option, others: list[Option], trials: int
) -> None:
    options = [current, *(o for o in others if o.config != current.config)]
    choice, trial = tune(current, options, trials=trials)
    assert choice in options
    if choice.config == current.config:
        assert not trial
        return
    if trial:
        assert trials < MAX_TRIALS, "trials are bounded"
        assert not choice.measured
        assert choice.estimate_s * MIN_SPEEDUP <= current.estimate_s, "an untried plan must be predicted clearly faster"
    else:
        assert choice.measured
        assert choice.estimate_s < current.estimate_s * (1 - SWITCH_MARGIN), "a measured plan must be clearly faster"


@given(_options)
def test_tune_is_stable_for_a_single_option(current: Option) -> None:
    assert tune(current, [current], trials=0) == (current, False)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)


@given(_json)
def test_evidence_from_any_json_is_valid_or_empty(obj: object) -> None:
    evidence = Evidence.from_record(obj)
    for name, runs in evidence.runs.items():
        assert config_name(*parse_config(name)) == name  # type: ignore[misc]
        assert runs.count == len(runs.busy) >= 1
        assert all(0 <= v <= 86_400 and math.isfinite(v) for v in runs.wall + runs.busy)
    assert 0 <= evidence.trials <= 1000


@pytest.mark.parametrize(
    "record",
    [
        {"runs": {"process:2:8": {"wall": [float("nan"), 1.0], "busy": [1.0, 1.0]}}},
        {"runs": {"process:2:8": {"wall": [-1.0], "busy": [1.0]}}},
        {"runs": {"process:2:8": {"wall": [True], "busy": [1.0]}}},
        {"runs": {"process:1:8": {"wall": [1.0], "busy": [1.0]}}},
        {"runs": {"os.system:2:8": {"wall": [1.0], "busy": [1.0]}}},
        {"runs": {"process:2:8": {"wall": [1.0, 2.0], "busy": [1.0]}}},
    ],
)
def test_forged_evidence_is_left_out(record: dict[str, object]) -> None:
    assert Evidence.from_record(record).runs == {}


@given(st.lists(st.floats(1e-6, 10.0), min_size=2, max_size=MAX_RUNS), st.floats(10.0, 1e4))
def test_one_slow_run_never_raises_the_measured_time(runs: list[float], outlier: float) -> None:
    evidence = Evidence()
    for value in runs:
        evidence = evidence.add("process:2:8", value, value)
    with_outlier = evidence.add("process:2:8", max(runs) * outlier, 1.0)
    before, after = evidence.measured("process:2:8"), with_outlier.measured("process:2:8")
    assert before is not None
    assert after is not None
    assert after <= max(runs), "the lower median ignores one high value"


def test_calls_close_together_count_on_warm_workers() -> None:
    """A workload that only pays on workers that are already running: serial while
    runs are far apart, parallel once they come within a warm pool's life."""
    from autopar.model import Costs

    costs = Costs(worker_start_s=0.2, chunk_s=60e-6, byte_s=1e-9, measured=True)
    w = Workload(n_items=300, item_s=2e-3, cv=0.1, worker_setup_s=0.0)
    evidence = Evidence().add("serial", 2e-3, 2e-3)
    cold, _ = _options_of(evidence, w, costs, repeated=False)
    warm, _ = _options_of(evidence, w, costs, repeated=True)
    now = next(o for o in cold if o.config == "serial")
    assert tune(now, cold, trials=0)[0].config == "serial", "cold: 0.4 s of start for a 0.6 s job"
    assert tune(now, warm, trials=0)[0].config != "serial", "warm: the workers are running"


def _options_of(evidence: Evidence, w: Workload, costs: object, *, repeated: bool) -> tuple[list[Option], float]:
    from autopar.learning import _options
    from autopar.model import choose_plan

    decision = choose_plan(w, costs, usable_cpus=2)  # type: ignore[arg-type]
    return _options(evidence, w, costs, decision.candidates, 2, 0, "serial", 300, repeated=repeated)  # type: ignore[arg-type]


def test_evidence_remembers_when_it_last_ran() -> None:
    evidence = Evidence().add("serial", 1e-3, 1e-3)
    assert evidence.repeated(30.0)
    again = Evidence.from_record(evidence.to_record())
    assert again.last == pytest.approx(evidence.last)
    assert not Evidence.from_record({**evidence.to_record(), "last": 1e12}).repeated(30.0), "from the future: ignored"
    assert not Evidence.from_record({**evidence.to_record(), "last": 1.0}).repeated(30.0), "long ago"
