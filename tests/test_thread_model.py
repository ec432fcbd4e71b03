"""The thread executor in the pure cost model: chosen only for work measured to scale
on threads, and then by predicted time against serial and processes (no clocks)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopar.model import IO_BOUND_CPU_FRACTION, MIN_SPEEDUP, Costs, Workload, choose_plan, prior_costs
from autopar.thread_model import (
    MAX_THREADS,
    THREAD_SCALING_MIN,
    gil_enabled,
    gil_share,
    predict_threads,
    thread_counts,
    thread_limit,
)
from tests import strategies as s

BOTH = ("thread", "process")
scalings = st.none() | st.floats(min_value=0.0, max_value=3.0, allow_nan=False)


@given(s.workloads, scalings, s.costs, s.cpus, st.none() | st.integers(min_value=1, max_value=128))
@settings(max_examples=300, deadline=None)
def test_threads_only_for_work_measured_to_scale(
    w: Workload, scaling: float | None, c: Costs, cpus: int, cap: int | None
) -> None:
    w = dataclasses.replace(w, thread_scaling=scaling)
    d = choose_plan(w, c, usable_cpus=cpus, max_workers=cap, executors=BOTH)
    assert d.chunksize >= 1
    if d.executor == "thread":
        assert scaling is not None
        assert scaling >= THREAD_SCALING_MIN, "GIL-bound work never goes to threads"
        waits = min(1.0, w.cpu_fraction) < IO_BOUND_CPU_FRACTION
        assert 2 <= d.n_jobs <= thread_limit(cpus, cap, io_bound=waits)
        if w.n_items is not None:
            assert d.n_jobs <= w.n_items
        assert d.estimated_speedup >= MIN_SPEEDUP
    if d.executor == "serial":
        assert d.n_jobs == 1


@given(s.workloads, scalings, s.costs, s.cpus)
@settings(max_examples=200, deadline=None)
def test_processes_only_never_gives_threads(w: Workload, scaling: float | None, c: Costs, cpus: int) -> None:
    w = dataclasses.replace(w, thread_scaling=scaling)
    assert choose_plan(w, c, usable_cpus=cpus, executors=("process",)).executor != "thread"
    assert choose_plan(w, c, usable_cpus=cpus, executors=("thread",)).executor != "process"


@given(s.workloads, s.costs, s.cpus)
@settings(max_examples=200, deadline=None)
def test_allowing_threads_never_makes_the_prediction_worse(w: Workload, c: Costs, cpus: int) -> None:
    w = dataclasses.replace(w, thread_scaling=2.0)
    alone = choose_plan(w, c, usable_cpus=cpus, executors=("process",))
    both = choose_plan(w, c, usable_cpus=cpus, executors=BOTH)
    # Threads win only when predicted as fast as processes, within the model's tie band.
    assert both.predicted_s <= alone.predicted_s * 1.03 + 1e-12


@given(st.floats(min_value=0.5, max_value=3.0), st.floats(min_value=0.0, max_value=1.0))
def test_the_gil_share_follows_amdahl_on_two_threads(scaling: float, cpu: float) -> None:
    g = gil_share(scaling)
    assert 0.0 <= g <= 1.0
    if 1.0 <= scaling <= 2.0:
        assert 1 / (g + (1 - g) / 2) == pytest.approx(scaling)


@pytest.mark.parametrize("scaling", [1.0, 1.3, 1.5, 1.8, 2.0])
def test_two_threads_are_predicted_at_the_measured_speedup(scaling: float) -> None:
    w = Workload(n_items=10_000, item_s=1e-3, cv=0.0, cpu_fraction=1.0, thread_scaling=scaling)
    serial = 10_000 * 1e-3
    predicted = predict_threads(w, 2, 100, cores=2, warm=2)
    assert serial / predicted == pytest.approx(scaling, rel=0.02)


def test_large_inputs_that_release_the_gil_go_to_threads() -> None:
    # 1 MiB items, a 0.5 ms checksum each: pickling them to workers costs more than the work.
    w = Workload(n_items=300, item_s=5e-4, cv=0.1, cpu_fraction=1.0, in_bytes=2**20, out_bytes=8, thread_scaling=1.9)
    d = choose_plan(w, prior_costs("fork"), usable_cpus=2, executors=BOTH)
    assert (d.executor, d.n_jobs) == ("thread", 2), d.reason
    assert "releases the GIL: 1.90x on 2 threads" in d.reason
    assert "no pickling of" in d.reason
    assert choose_plan(w, prior_costs("fork"), usable_cpus=2, executors=("process",)).executor == "serial"


def test_waiting_work_gets_many_threads() -> None:
    w = Workload(n_items=200, item_s=0.01, cv=0.05, cpu_fraction=0.01, thread_scaling=1.98)
    d = choose_plan(w, prior_costs("fork"), usable_cpus=2, executors=BOTH)
    assert d.executor == "thread", d.reason
    assert d.n_jobs >= 32, d.reason
    assert "overlap the waits" in d.reason


def test_gil_bound_work_stays_off_threads_and_says_why() -> None:
    w = Workload(n_items=300, item_s=1e-3, cv=0.1, cpu_fraction=1.0, thread_scaling=1.05)
    d = choose_plan(w, prior_costs("fork"), usable_cpus=2, executors=BOTH)
    assert d.executor == "process", d.reason
    assert "holds the GIL: 1.05x on 2 threads" in d.reason
    threads_only = choose_plan(w, prior_costs("fork"), usable_cpus=2, executors=("thread",))
    assert threads_only.executor == "serial"
    assert "does not scale on them" in threads_only.reason


def test_cpu_work_gets_no_more_threads_than_cpus() -> None:
    w = Workload(n_items=10_000, item_s=1e-3, cv=0.0, cpu_fraction=1.0, thread_scaling=2.0)
    d = choose_plan(w, Costs(1.0, 1.0, 1.0), usable_cpus=4, executors=BOTH)
    assert (d.executor, d.n_jobs) == ("thread", 4)


def test_thread_counts_and_limits() -> None:
    assert thread_limit(2, None, io_bound=False) == 2
    assert thread_limit(2, None, io_bound=True) == MAX_THREADS
    assert thread_limit(2, 100, io_bound=True) == 100
    assert thread_limit(8, 3, io_bound=False) == 3
    counts = thread_counts(64, 200)
    assert all(2 <= n <= 64 for n in counts)
    assert 50 in counts, "200 items finish in 4 even rounds on 50 threads"


def test_gil_enabled_reads_the_interpreter() -> None:
    import sys

    check = getattr(sys, "_is_gil_enabled", None)
    assert gil_enabled() is (True if check is None else bool(check()))


def test_a_stored_thread_plan_is_read_back_and_clamped() -> None:
    import json

    from autopar._version import CACHE_FORMAT
    from autopar.plan import read_plan_record

    def record(n_jobs: int, cpu_fraction: float) -> str:
        plan = {"executor": "thread", "n_jobs": n_jobs, "chunksize": 1, "estimated_speedup": 9.0}
        plan |= {"reason": "threads", "warnings": []}
        system = {"usable_cpus": 2, "start_method": "fork"}
        body = {"format": CACHE_FORMAT, "kind": "plan", "function": "m.f", "created": 1.0, "system": system}
        return json.dumps(body | {"plan": plan, "workload": {"cpu_fraction": cpu_fraction}})

    waits = read_plan_record(record(10_000, 0.01), usable_cpus=2, max_workers=None)
    assert waits is not None
    assert (waits.executor, waits.n_jobs) == ("thread", MAX_THREADS)
    cpu = read_plan_record(record(10_000, 1.0), usable_cpus=2, max_workers=None)
    assert cpu is not None
    assert cpu.n_jobs == 2, "CPU work: no more threads than CPUs"
