"""``optimize`` and the module-level helpers."""

from __future__ import annotations

import dataclasses

import pytest

import autopar
from autopar import Plan, optimize
from autopar.model import IO_BOUND_CPU_FRACTION, MIN_SPEEDUP, worker_limit
from autopar.store import get_store
from tests import workloads
from tests.conftest import MACHINE_COSTS


def _cubes(x: int) -> int:
    workloads.spin(0.002)
    return x**3


def test_public_api_is_exported() -> None:
    for name in autopar.__all__:
        assert hasattr(autopar, name), name
    assert autopar.__all__ == sorted(autopar.__all__)
    assert issubclass(autopar.WorkerCrashedError, autopar.AutoparError)
    assert issubclass(autopar.NotIterableError, TypeError)


def test_optimize_plans_a_plain_function_and_keeps_every_item() -> None:
    items = (x for x in range(300))
    plan = optimize(_cubes, items)
    assert isinstance(plan, Plan)
    assert plan.executor == "process"
    # At most one worker per CPU for CPU work (test_model); 2 ms of spinning that a
    # busy machine kept waiting for a CPU can measure as waiting work, which may have more.
    assert 2 <= plan.n_jobs <= worker_limit(autopar.system.usable_cpus(), None, io_bound=True)
    assert plan.chunksize >= 1
    assert plan.estimated_speedup >= MIN_SPEEDUP
    assert plan.reason
    assert not plan.from_cache
    assert list(plan.data) == list(range(300)), "a sampled item was lost"
    assert optimize(_cubes, range(300)).from_cache


def test_optimize_profile_bypasses_the_cache_and_attaches_measurements() -> None:
    plan = optimize(_cubes, list(range(300)), profile=True)
    assert plan.profile is not None
    sample = plan.profile["sample"]
    assert sample["n_timed"] == len(plan.profile["times"]) >= 1
    assert sample["mean_s"] > 0
    assert sample["cpu_fraction"] >= 0.0
    waits = sample["cpu_fraction"] < IO_BOUND_CPU_FRACTION
    assert 2 <= plan.n_jobs <= worker_limit(autopar.system.usable_cpus(), None, io_bound=waits)
    assert plan.profile["costs"] == dataclasses.asdict(MACHINE_COSTS[plan.start_method])
    assert plan.profile["candidates"]
    assert not [k for k in get_store().list_keys() if k.startswith("plan:")], "profile=True wrote a plan"


def test_optimize_without_cache_stores_nothing() -> None:
    optimize(_cubes, range(300), use_cache=False)
    assert not [k for k in get_store().list_keys() if k.startswith("plan:")]


def test_optimize_accepts_a_decorated_function() -> None:
    plan = optimize(workloads.heavy_plain, range(300))
    assert plan.executor == "process"
    assert workloads.heavy_plain.cache_info().misses == 1


def test_optimize_rejects_non_callables_and_non_iterables() -> None:
    with pytest.raises(TypeError, match="callable"):
        optimize(42, [1])  # type: ignore[arg-type]
    with pytest.raises(autopar.NotIterableError):
        optimize(_cubes, 42)  # type: ignore[arg-type]


def test_prune_rejects_negative_ttl() -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        autopar.prune_expired_cache(-1)
