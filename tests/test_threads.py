"""No oversubscription: native thread pools in workers are sized to share the CPUs."""

from __future__ import annotations

import os

import pytest

from autopar.system import usable_cpus

numeric = pytest.importorskip("tests.numeric")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_thread_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start as a user who set no thread counts (a distributed Nanny sets some in
    os.environ when it starts workers, and another test module starts one)."""
    from autopar.backends._worker import THREAD_VARS

    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)


def test_workers_get_a_share_of_the_cpus_for_their_blas(start_method: str) -> None:
    parent_threads = numeric.blas_threads_here()
    results = numeric.blas_threads.map(range(8), n_jobs=2, chunksize=1)
    share = max(1, usable_cpus() // 2)
    assert {threads for threads, _, _ in results} == {share}
    assert {omp for _, _, omp in results} == {str(share)}
    assert {pid for _, pid, _ in results}.isdisjoint({os.getpid()})
    assert numeric.blas_threads_here() == parent_threads, "the caller's own pools are untouched"


def test_a_thread_count_the_user_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # not the share autopar would give (1 of 2 CPUs each)
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)  # fresh workers load numpy under this env
    try:
        results = numeric.blas_threads.map(range(4), n_jobs=2, chunksize=1)
    finally:
        multiprocessing.set_start_method(previous, force=True)
    assert {threads for threads, _, _ in results} == {2}
    assert {omp for _, _, omp in results} == {None}, "autopar set nothing"


def test_importing_numpy_does_not_force_serial() -> None:
    plan = numeric.heavy_numpy.plan(range(300))
    assert plan.executor == "process", plan.reason
    assert numeric.heavy_numpy.map(range(300)) == [2.0 * x for x in range(300)]


def test_the_sample_times_native_work_as_a_worker_runs_it() -> None:
    """Items sampled past the probe run with the BLAS thread count a worker gets (1
    of 2 CPUs each); the probe, which times the serial loop, with the caller's."""
    parent_threads = numeric.blas_threads_here()
    if parent_threads < 2:
        pytest.skip("the caller's BLAS runs one thread: nothing to limit")
    items = list(range(300))
    results = numeric.blas_threads_light.map(items)
    assert {pid for _, pid in results} == {os.getpid()}, "max_workers=1: every item here"
    counts = [threads for threads, _ in results]
    assert counts[0] == parent_threads, "the probe times the serial loop with the caller's threads"
    assert 1 in counts, "items sampled across the input ran as a worker would"
    assert counts.count(1) <= 64, "only the sample"
    assert numeric.blas_threads_here() == parent_threads, "the caller's own pools are restored"


def test_a_thread_speedup_is_believed_only_for_clear_cpu_work() -> None:
    from autopar.measuring import native_threads
    from autopar.measuring import thread_speedup as _thread_speedup

    assert _thread_speedup([1e-3] * 3, [1.1e-3] * 3, 1.0) == 1.0, "within noise"
    assert _thread_speedup([1e-3] * 3, [2e-3] * 3, 0.1) == 1.0, "waiting work: threads do not matter"
    assert _thread_speedup([1e-6] * 3, [2e-6] * 3, 1.0) == 1.0, "too short to time"
    assert _thread_speedup([1e-3] * 3, [2e-3] * 3, 1.0) == min(2.0, native_threads())
    assert _thread_speedup([1e-3] * 3, [9e-3] * 3, 1.0) <= max(1.0, native_threads()), "never above the thread count"


def test_the_callers_threads_are_restored_when_sampling_stops_early() -> None:
    """An input that runs out while the thread counts are compared, or a function
    that raises then, leaves the caller's native pools as they were."""
    parent_threads = numeric.blas_threads_here()
    if parent_threads < 2:
        pytest.skip("the caller's BLAS runs one thread: nothing to limit")
    assert len(numeric.blas_threads_light.map(list(range(20)))) == 20
    assert numeric.blas_threads_here() == parent_threads
    with pytest.raises(ZeroDivisionError):
        numeric.blas_threads_failing.map(list(range(200)))
    assert numeric.blas_threads_here() == parent_threads
