"""Per-worker setup: once in each worker, once per call here, errors named once."""

from __future__ import annotations

import os

import pytest

from autopar import auto_parallel
from autopar.backends.warm import WarmPools
from autopar.worker_setup import WithSetup
from tests import setup_helpers

pytestmark = pytest.mark.timeout(120)

predict = auto_parallel(WithSetup(setup_helpers.load_model, setup_helpers.predict))
scaled = auto_parallel(WithSetup(setup_helpers.scaled_setup, setup_helpers.scale))
broken = auto_parallel(WithSetup(setup_helpers.broken_setup, setup_helpers.use))


def test_setup_runs_once_in_each_worker_and_its_result_is_used(start_method: str) -> None:
    items = list(range(120))
    results = predict.map(items, n_jobs=2, chunksize=3)
    assert [value for value, _, _, _ in results] == [3 * x for x in items]
    for _, loaded_by, runs, computed_by in results:
        assert loaded_by == computed_by, "each process loads its own (a forked worker never inherits the caller's)"
        if computed_by != os.getpid():
            assert runs == 1, "once per worker"
    assert {pid for _, _, _, pid in results} - {os.getpid()}, "workers computed"


def test_a_warm_worker_keeps_its_setup_across_calls() -> None:
    first = predict.map(list(range(60)), n_jobs=2, chunksize=3)
    second = predict.map(list(range(60)), n_jobs=2, chunksize=3)
    assert WarmPools.idle()[0].calls == 2
    assert all(runs == 1 for _, _, runs, pid in first + second if pid != os.getpid())


def test_a_serial_run_sets_up_once_here_per_call() -> None:
    before = setup_helpers.RUNS
    results = predict.map(list(range(10)), n_jobs=1)
    assert {(loaded, pid) for _, loaded, _, pid in results} == {(os.getpid(), os.getpid())}
    assert setup_helpers.RUNS == before + 1
    predict.map(list(range(10)), n_jobs=1)
    assert setup_helpers.RUNS == before + 2, "each call sets up again here: what setup reads may have changed"


def test_a_changed_global_read_by_setup_is_seen(start_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(40))
    assert scaled.map(items, n_jobs=2, chunksize=4) == [3 * x for x in items]
    monkeypatch.setattr(setup_helpers, "SCALE", 5)
    assert scaled.map(items, n_jobs=2, chunksize=4) == [5 * x for x in items]
    assert scaled.map(items, n_jobs=1) == [5 * x for x in items]


def test_a_setup_that_raises_fails_the_map_once_with_its_name(start_method: str) -> None:
    with pytest.raises(RuntimeError, match="model file not found") as info:
        broken.map(list(range(40)), n_jobs=2, chunksize=4)
    notes = "\n".join(info.value.__notes__)
    assert "setup function tests.setup_helpers.broken_setup" in notes
    assert "raised while processing item" in notes


def test_setup_time_is_not_an_item_cost() -> None:
    """Setup runs before the probe: a slow setup does not make items look heavy."""
    plan = predict.plan(list(range(2000)))
    assert plan.executor in ("serial", "process")
    planned_items_s = 0.001
    # The stored workload's item time is the items' (1 ms), not the setup's.
    from autopar.plan import read_plan_record
    from autopar.store import get_store
    from autopar.system import usable_cpus

    store = get_store()
    records = [read_plan_record(store.get(k), usable_cpus=usable_cpus(), max_workers=None) for k in store.list_keys()]
    (workload,) = [r.workload for r in records if r is not None]
    assert workload["item_s"] < 10 * planned_items_s
