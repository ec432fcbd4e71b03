"""Properties of the pure cost model (no processes, no clocks)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from autopar.model import (
    IO_BOUND_CPU_FRACTION,
    MEMORY_SHARE,
    MIN_SPEEDUP,
    Costs,
    Workload,
    choose_plan,
    memory_needed,
    predict_parallel,
    prior_costs,
    worker_limit,
)
from tests import strategies as s


@given(s.workloads, s.costs, s.cpus, st.none() | st.integers(min_value=1, max_value=64))
@settings(max_examples=300, deadline=None)
def test_plan_respects_items_cpus_and_caps(w: Workload, c: Costs, cpus: int, cap: int | None) -> None:
    d = choose_plan(w, c, usable_cpus=cpus, max_workers=cap)
    assert d.chunksize >= 1
    waits = min(1.0, w.cpu_fraction) < IO_BOUND_CPU_FRACTION
    assert 1 <= d.n_jobs <= worker_limit(cpus, cap, io_bound=waits)
    if not waits:
        assert d.n_jobs <= cpus, "CPU work never gets more workers than CPUs"
    if cap is not None:
        assert d.n_jobs <= cap
    if w.n_items is not None:
        assert d.n_jobs <= max(1, w.n_items)
    if d.executor == "serial":
        assert d.n_jobs == 1
        assert d.estimated_speedup == 1.0
    else:
        assert d.n_jobs >= 2
        assert d.estimated_speedup >= MIN_SPEEDUP
    assert d.reason


@given(s.workloads, s.costs, s.cpus)
@settings(max_examples=200, deadline=None)
def test_serial_when_all_work_is_below_starting_two_workers(w: Workload, c: Costs, cpus: int) -> None:
    n = w.n_items if w.n_items is not None else 10_000
    if n * w.item_s < 2 * c.worker_start_s:
        assert choose_plan(w, c, usable_cpus=cpus).executor == "serial"


@given(s.workloads, s.costs, s.cpus, st.floats(min_value=1.0, max_value=100.0))
@settings(max_examples=200, deadline=None)
def test_heavier_items_never_turn_parallel_into_serial(w: Workload, c: Costs, cpus: int, factor: float) -> None:
    heavier = dataclasses.replace(w, item_s=w.item_s * factor)
    if choose_plan(w, c, usable_cpus=cpus).executor == "process":
        assert choose_plan(heavier, c, usable_cpus=cpus).executor == "process"


@given(
    st.integers(min_value=1, max_value=10**7),
    s.costs,
    st.integers(min_value=2, max_value=64),
    st.integers(min_value=1, max_value=2**20),
    st.integers(min_value=1, max_value=64),
)
@settings(max_examples=200, deadline=None)
def test_prediction_is_positive_and_at_least_the_start_cost(
    n: int, c: Costs, cpus: int, chunk: int, n_jobs: int
) -> None:
    w = Workload(n_items=n, item_s=1e-4)
    predicted = predict_parallel(w, c, n_jobs, chunk, cpus)
    assert predicted >= n_jobs * c.worker_start_s
    assert predicted >= n * 1e-4 / max(n_jobs, cpus)


def test_one_cpu_is_serial() -> None:
    d = choose_plan(Workload(n_items=1000, item_s=0.01), prior_costs("fork"), usable_cpus=1)
    assert d.executor == "serial"
    assert "1 CPU" in d.reason


def test_heavy_uniform_work_uses_every_core_with_several_chunks_each() -> None:
    w = Workload(n_items=1000, item_s=0.002, cv=0.01)
    d = choose_plan(w, prior_costs("fork"), usable_cpus=2)
    assert (d.executor, d.n_jobs) == ("process", 2)
    assert d.chunksize <= 1000 // (2 * 4)
    assert d.estimated_speedup > 1.8


def test_uneven_items_get_smaller_chunks_than_even_ones() -> None:
    even = choose_plan(Workload(n_items=20_000, item_s=1e-3, cv=0.0), prior_costs("fork"), usable_cpus=2)
    uneven = choose_plan(Workload(n_items=20_000, item_s=1e-3, cv=3.0), prior_costs("fork"), usable_cpus=2)
    assert uneven.chunksize < even.chunksize


def test_large_transfers_with_cheap_work_stay_serial() -> None:
    w = Workload(n_items=200, item_s=2e-4, in_bytes=1e6, out_bytes=1e6, pickle_s=1e-3)
    assert choose_plan(w, prior_costs("fork"), usable_cpus=2).executor == "serial"


def test_stream_chunks_are_short() -> None:
    d = choose_plan(Workload(n_items=None, item_s=0.001, cv=0.1), prior_costs("fork"), usable_cpus=2)
    assert d.executor == "process"
    assert d.chunksize * 0.001 <= 0.05 + 1e-9


def test_huge_known_length_still_bounds_chunk_work() -> None:
    d = choose_plan(Workload(n_items=10**9, item_s=0.002, cv=0.1), prior_costs("fork"), usable_cpus=2)
    assert d.executor == "process"
    assert d.chunksize * 0.002 <= 0.2 + 1e-9


def test_waiting_work_gets_more_workers_than_cpus_and_says_why() -> None:
    sleepy = Workload(n_items=200, item_s=0.005, cv=0.05, cpu_fraction=0.02)
    d = choose_plan(sleepy, prior_costs("fork"), usable_cpus=2)
    assert d.executor == "process"
    assert 2 < d.n_jobs <= worker_limit(2, None, io_bound=True) == 8
    assert "I/O-bound" in d.reason
    cheap_start = dataclasses.replace(prior_costs("fork"), worker_start_s=1e-3)
    assert choose_plan(sleepy, cheap_start, usable_cpus=2, max_workers=16).n_jobs > 8, "max_workers raises it"
    assert choose_plan(sleepy, prior_costs("fork"), usable_cpus=2, max_workers=3).n_jobs == 3
    busy = dataclasses.replace(sleepy, cpu_fraction=1.0)
    d = choose_plan(busy, prior_costs("fork"), usable_cpus=2)
    assert d.n_jobs == 2
    assert "I/O-bound" not in d.reason


@given(st.floats(min_value=0.0, max_value=1.0), s.cpus)
def test_more_waiting_never_means_fewer_workers(cpu_fraction: float, cpus: int) -> None:
    w = Workload(n_items=10_000, item_s=0.01, cv=0.1, cpu_fraction=cpu_fraction)
    lower = dataclasses.replace(w, cpu_fraction=cpu_fraction / 2)
    c = prior_costs("fork")
    assert choose_plan(lower, c, usable_cpus=cpus).n_jobs >= choose_plan(w, c, usable_cpus=cpus).n_jobs


@given(s.workloads, s.costs, s.cpus, st.floats(min_value=1e6, max_value=1e12))
@settings(max_examples=200, deadline=None)
def test_workers_and_their_chunks_fit_in_memory(w: Workload, c: Costs, cpus: int, memory: float) -> None:
    d = choose_plan(w, c, usable_cpus=cpus, memory_bytes=memory)
    if d.executor == "process":
        assert memory_needed(w, d.n_jobs, d.chunksize) <= MEMORY_SHARE * memory


def test_memory_caps_the_workers_and_big_results_warn() -> None:
    w = Workload(n_items=1000, item_s=0.01, cv=0.1, worker_bytes=100 * 2**20, out_bytes=2**20)
    roomy = choose_plan(w, prior_costs("fork"), usable_cpus=8, memory_bytes=64 * 2**30)
    assert roomy.n_jobs == 8
    assert not roomy.warnings
    tight = choose_plan(w, prior_costs("fork"), usable_cpus=8, memory_bytes=2**30)
    assert 2 <= tight.n_jobs < 8
    assert "memory allows at most" in tight.reason
    assert tight.warnings, "1000 x 1 MiB results do not fit in half of 1 GiB"
    assert ".imap" in tight.warnings[0]
    starved = choose_plan(w, prior_costs("fork"), usable_cpus=8, memory_bytes=300 * 2**20)
    assert starved.executor == "serial"
    assert "not enough for two workers" in starved.reason
