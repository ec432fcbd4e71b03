"""Plans corrected by what real runs measured, and kept on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autopar import AutoParallel
from autopar.learning import LEARN_RATIO_WORKERS, LEARN_WALL_RATIO, learn
from autopar.plan import PlanRecord, read_plan_record
from autopar.planner import Options, Planned, make_plan
from autopar.store import get_store
from autopar.system import usable_cpus
from autopar.workload import function_identity
from tests import workloads

pytestmark = pytest.mark.timeout(60)


def test_a_run_that_disagrees_with_the_sample_corrects_the_stored_plan() -> None:
    items = range(300)
    first_plan = workloads.ramp.plan(items)
    assert first_plan.executor == "serial", "the sample sees only the cheap first items"
    assert workloads.ramp.map(items) == [x * 5 for x in items]
    assert workloads.ramp.cache_info().learned == 1
    learned = workloads.ramp.plan(items)
    assert learned.from_cache
    assert learned.learned == 1
    assert learned.executor == "process"
    assert "learned from a run" in learned.reason
    assert workloads.ramp.map(items) == [x * 5 for x in items]


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
# slower than its prediction for reasons no plan can know, and learning from that is
# right, but a test of agreement needs a run that agrees.


def test_a_run_that_agrees_with_the_plan_changes_nothing() -> None:
    planned, name = _planned(workloads.heavy_plain, range(300))
    assert planned.plan.executor == "process"
    before = _stored(planned)
    assert planned.workload is not None
    sampled = planned.workload["item_s"]
    n_run = 300 - len(planned.sampler.items)
    predicted = n_run * sampled / planned.plan.estimated_speedup
    store = get_store()
    assert learn(planned, name, store, n_run=n_run, wall_s=predicted, item_s=sampled) is None
    within = learn(
        planned,
        name,
        store,
        n_run=n_run,
        wall_s=0.95 * LEARN_WALL_RATIO * predicted,
        item_s=0.95 * LEARN_RATIO_WORKERS * sampled,
    )
    assert within is None, "inside both margins: noise, not news"
    assert _stored(planned) == before
    assert before.learned == 0


def test_a_parallel_run_slower_than_the_serial_loop_turns_the_plan_serial() -> None:
    planned, name = _planned(workloads.heavy_plain, range(300))
    assert planned.plan.executor == "process"
    assert planned.workload is not None
    sampled = planned.workload["item_s"]
    n_run = 300 - len(planned.sampler.items)
    learned = learn(planned, name, get_store(), n_run=n_run, wall_s=1.2 * n_run * sampled, item_s=sampled)
    assert learned is not None
    assert (learned.executor, learned.n_jobs, learned.learned) == ("serial", 1, 1)
    assert "learned from a run" in learned.reason
    stored = _stored(planned)
    assert (stored.executor, stored.learned) == ("serial", 1)


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
