"""``optimize`` and the module-level helpers."""

from __future__ import annotations

import pytest

import autopar
from autopar import Plan, optimize
from autopar.store import get_store
from tests import workloads


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
    assert 2 <= plan.n_jobs <= autopar.system.usable_cpus()
    assert plan.chunksize >= 1
    assert plan.estimated_speedup > 1.2
    assert plan.reason
    assert not plan.from_cache
    assert list(plan.data) == list(range(300)), "a sampled item was lost"
    assert optimize(_cubes, range(300)).from_cache


def test_optimize_profile_bypasses_the_cache_and_attaches_measurements() -> None:
    plan = optimize(_cubes, list(range(300)), profile=True)
    assert plan.profile is not None
    sample = plan.profile["sample"]
    assert sample["n_timed"] >= 3
    assert 0.0015 < sample["mean_s"] < 0.05
    assert sample["cpu_fraction"] > 0.5
    assert plan.profile["costs"]["measured"]
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
