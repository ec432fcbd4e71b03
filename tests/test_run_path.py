"""The run path (issue 11): overrides run as asked and never teach the stored plan."""

from __future__ import annotations

import pytest

from autopar.plan import serial_plan
from autopar.run import resolve
from tests import workloads
from tests.faults import stateful

pytestmark = pytest.mark.timeout(120)


def test_overrides_leave_the_stored_plan_and_its_counters_alone() -> None:
    items = list(range(200))
    assert stateful.waits.map(items) == items
    plan = stateful.waits.plan(items)
    assert plan.executor in ("thread", "process"), plan.reason  # 1 s of sleeping: parallel by any measure
    other = 2 if plan.n_jobs != 2 else 3
    learned = stateful.waits.cache_info().learned  # the first, planned run may teach (a busy machine)
    for _ in range(3):
        assert stateful.waits.map(items, n_jobs=other) == items
    assert stateful.waits.cache_info().learned == learned
    again = stateful.waits.plan(items)
    assert (again.executor, again.n_jobs, again.chunksize) == (plan.executor, plan.n_jobs, plan.chunksize)
    assert again.learned == plan.learned


def test_resolve_says_whether_a_run_is_the_plan() -> None:
    from autopar.plan import Plan

    plan = Plan(executor="process", n_jobs=4, chunksize=10, estimated_speedup=2.0, reason="test")
    assert resolve(plan, n_jobs=None, chunksize=None, cap=None, remaining=100).as_planned
    assert not resolve(plan, n_jobs=2, chunksize=None, cap=None, remaining=100).as_planned
    assert not resolve(plan, n_jobs=None, chunksize=3, cap=None, remaining=100).as_planned
    assert resolve(plan, n_jobs=4, chunksize=None, cap=None, remaining=100).as_planned
    serial = serial_plan("test")
    run = resolve(serial, n_jobs=2, chunksize=None, cap=None, remaining=100)
    assert (run.executor, run.n_jobs, run.chunksize, run.as_planned) == ("process", 2, 13, False)
    assert resolve(serial, n_jobs=1, chunksize=None, cap=None, remaining=100).executor == "serial"


def test_a_failure_while_learning_never_loses_the_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import autopar.run

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(autopar.run, "learn", broken)
    items = list(range(300))
    assert [v for v, _ in workloads.heavy.map(items)] == [2 * x for x in items]


def test_a_failure_while_weighing_workers_for_a_stream_keeps_it_running_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import autopar.run

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(autopar.run, "decide", broken)
    results = list(workloads.tiny_pid.imap(x for x in range(200_000)))
    assert [x for x, _ in results] == list(range(200_000))
