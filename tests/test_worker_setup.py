"""Per-worker setup: once in each worker, once per call here, errors named once."""

from __future__ import annotations

import os

import pytest

from autopar import auto_parallel
from autopar.backends.warm import WarmPools
from tests import setup_helpers

pytestmark = pytest.mark.timeout(120)

predict = auto_parallel(setup_helpers.predict, setup=setup_helpers.load_model)
scaled = auto_parallel(setup_helpers.scale, setup=setup_helpers.scaled_setup)
broken = auto_parallel(setup_helpers.use, setup=setup_helpers.broken_setup)


def test_setup_runs_once_in_each_worker_and_its_result_is_used(start_method: str) -> None:
    items = list(range(120))
    results = predict.map(items, n_jobs=2, chunksize=3)
    assert [value for value, _, _, _ in results] == [3 * x for x in items]
    by_worker: dict[int, set[int]] = {}
    for _, loaded_by, runs, computed_by in results:
        assert loaded_by == computed_by, "each process loads its own (a forked worker never inherits the caller's)"
        by_worker.setdefault(computed_by, set()).add(runs)
    assert all(len(runs) == 1 for runs in by_worker.values()), f"once per worker: {by_worker}"
    assert {pid for _, _, _, pid in results} - {os.getpid()}, "workers computed"


def test_a_warm_worker_keeps_its_setup_across_calls() -> None:
    first = predict.map(list(range(60)), n_jobs=2, chunksize=3)
    second = predict.map(list(range(60)), n_jobs=2, chunksize=3)
    assert WarmPools.idle()[0].calls == 2
    by_worker: dict[int, set[int]] = {}
    for _, _, runs, pid in first + second:
        by_worker.setdefault(pid, set()).add(runs)
    assert all(len(runs) == 1 for runs in by_worker.values()), f"once per worker, across calls: {by_worker}"


def test_a_serial_run_sets_up_here_once_while_nothing_it_reads_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = setup_helpers.COUNTER.runs
    results = predict.map(list(range(10)), n_jobs=1)
    assert {(loaded, pid) for _, loaded, _, pid in results} == {(os.getpid(), os.getpid())}
    assert setup_helpers.COUNTER.runs == before + 1
    predict.map(list(range(10)), n_jobs=1)
    assert setup_helpers.COUNTER.runs == before + 1, "kept: a model is not loaded again for every call"
    monkeypatch.setattr(setup_helpers, "WEIGHT", 4)
    results = predict.map(list(range(10)), n_jobs=1)
    assert setup_helpers.COUNTER.runs == before + 2, "what setup reads changed: it runs again"
    assert [value for value, _, _, _ in results] == [4 * x for x in range(10)]


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


def test_called_directly_the_function_is_itself() -> None:
    assert predict({"pid": 1, "runs": 1, "weight": 2}, 5)[0] == 10
    assert predict.cache_parameters()["setup"] == "tests.setup_helpers.load_model"


def test_setup_works_with_starmap_and_several_iterables(start_method: str) -> None:
    pairs = [(x, x + 1) for x in range(30)]
    assert scaled_pair.starmap(pairs, n_jobs=2, chunksize=3) == [3 * (a + b) for a, b in pairs]
    assert scaled_pair.map(range(30), range(1, 31)) == [3 * (a + b) for a, b in pairs]


def test_a_function_that_cannot_take_the_setup_and_an_item_is_refused() -> None:
    one_arg = auto_parallel(setup_helpers.scaled_setup_user, setup=setup_helpers.scaled_setup)
    with pytest.raises(TypeError, match="takes"):
        one_arg.map([1, 2, 3])


def test_setup_must_be_callable() -> None:
    with pytest.raises(TypeError, match="setup must be a callable"):
        auto_parallel(setup_helpers.use, setup=42)  # type: ignore[arg-type]


scaled_pair = auto_parallel(setup_helpers.scale_pair, setup=setup_helpers.scaled_setup)


def test_a_failed_setup_is_tried_again_not_remembered(start_method: str) -> None:
    """on_error="return" keeps the pool warm after setup failed; once the outside world
    is fixed, the next call must not get the old failure from warm workers."""
    from pathlib import Path

    down = Path(setup_helpers.DOWN_FILE)
    down.touch()
    try:
        flaky = auto_parallel(setup_helpers.use, setup=setup_helpers.flaky_setup, on_error="return")
        first = flaky.map(list(range(20)), n_jobs=2, chunksize=2)
        assert all(isinstance(r, ConnectionError) for r in first)
        pools = WarmPools.idle()
    finally:
        down.unlink()
    assert flaky.map(list(range(20)), n_jobs=2, chunksize=2) == list(range(20))
    assert WarmPools.idle() == pools, "the same warm workers: they tried setup again"
