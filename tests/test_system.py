"""Usable CPUs, start methods and the fingerprint."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from autopar import costs, system
from autopar.backends import ProcessBackend
from autopar.store import get_store
from tests.conftest import START_METHODS


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert system._cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert system._cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert system._cgroup_cpu_limit(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert system._cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert system._cgroup_cpu_limit(tmp_path) is None


def test_usable_cpus_follows_affinity() -> None:
    expected = len(os.sched_getaffinity(0))
    assert 1 <= system.usable_cpus() <= expected


def test_default_start_method_does_not_fix_the_global_default() -> None:
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(None, force=True)
    try:
        assert system.default_start_method() in multiprocessing.get_all_start_methods()
        assert multiprocessing.get_start_method(allow_none=True) is None
        multiprocessing.set_start_method("spawn")  # still allowed: nothing was fixed
        assert system.default_start_method() == "spawn"
    finally:
        multiprocessing.set_start_method(previous, force=True)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fingerprint_names_the_start_method(method: str) -> None:
    info = system.current_system(method)
    assert info.start_method == method
    assert info.available_memory > 0
    assert info.usable_cpus == system.usable_cpus()


@pytest.mark.real_costs
@pytest.mark.parametrize("method", START_METHODS)
def test_this_machines_costs_are_timed_on_a_real_pool_once(method: str) -> None:
    info = system.current_system(method)
    measure = ProcessBackend(method).measure_costs
    measured = costs.load_or_measure_costs(get_store(), info, measure)
    assert measured.measured
    assert measured.worker_start_s > 0
    assert measured.chunk_s > 0
    assert measured.byte_s > 0
    assert costs.load_or_measure_costs(get_store(), info, measure) == measured, "read back, not timed again"


@pytest.mark.real_costs
@pytest.mark.timeout(120)
def test_the_pool_that_measured_the_costs_runs_the_first_call(start_method: str) -> None:
    """Measuring the machine's costs starts two workers; the call that needed the
    measurement runs on them instead of starting its own."""
    from autopar.backends.warm import WarmPools
    from tests import workloads

    items = list(range(300))
    results = workloads.heavy.map(items)
    assert [value for value, _ in results] == [2 * x for x in items]
    assert get_store().get(f"costs:v{system.CACHE_FORMAT}:{start_method}:c{system.usable_cpus()}") is not None
    idle = WarmPools.idle()
    assert len(idle) == 1
    pool = idle[0]
    ran_on = {pid for _, pid in results} - {os.getpid()}
    assert ran_on <= {p.pid for p in pool.workers}
    if pool.n_jobs == 2:  # the plan used as many workers as the measurement started
        assert pool.calls == 2, "one pool: the measurement's, then the call's"
