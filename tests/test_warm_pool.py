"""Pools kept warm between ``.map`` calls: reused, replaced, expired, never inherited."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import autopar
from autopar.backends import process, warm
from tests import workloads
from tests.conftest import worker_children

pytestmark = pytest.mark.timeout(60)


def _pids(results: list[tuple[int, int]]) -> set[int]:
    return {pid for _, pid in results} - {os.getpid()}


def test_a_second_map_reuses_the_warm_workers(start_method: str) -> None:
    first = workloads.heavy.map(range(100), n_jobs=2, chunksize=5)
    idle = process.WarmPools.idle()
    assert len(idle) == 1
    assert idle[0].start_method == start_method
    second = workloads.heavy.map(range(100, 200), n_jobs=2, chunksize=5)
    assert second == [(2 * x, pid) for x, (_, pid) in zip(range(100, 200), second, strict=True)]
    # Both maps ran on this pool's workers (which of them drew chunks is the scheduler's business).
    assert _pids(first) | _pids(second) <= {p.pid for p in idle[0].workers}
    assert process.WarmPools.idle()[0].calls == 2


def test_another_worker_count_replaces_the_warm_pool() -> None:
    workloads.heavy.map(range(60), n_jobs=2, chunksize=5)
    old = process.WarmPools.idle()[0]
    old_pids = {p.pid for p in old.workers}
    workloads.heavy.map(range(60), n_jobs=3, chunksize=5)
    (new,) = process.WarmPools.idle()
    assert new is not old
    assert new.n_jobs == 3
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in old_pids)


def test_a_failed_call_never_leaves_its_pool_warm() -> None:
    workloads.heavy.map(range(60), n_jobs=2, chunksize=5)
    with pytest.raises(workloads.ItemError):
        workloads.fails_on_13.map(range(100), n_jobs=2, chunksize=5)
    assert process.WarmPools.idle() == []
    assert workloads.heavy.map(range(60), n_jobs=2, chunksize=5)[0][0] == 0


def test_an_idle_pool_shuts_down_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "POOL_IDLE_TIMEOUT_S", 0.2)
    workloads.heavy.map(range(60), n_jobs=2, chunksize=5)
    assert worker_children()
    deadline = time.monotonic() + 5
    while worker_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker_children()
    assert process.WarmPools.idle() == []


def test_a_forkserver_pool_left_running_is_seen_by_the_leak_check() -> None:
    """Forkserver workers share the server's command line; the check must still count them."""
    import multiprocessing
    from multiprocessing import forkserver

    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        workloads.heavy.map(range(60), n_jobs=2, chunksize=5)  # its pool stays warm: "left running"
    finally:
        multiprocessing.set_start_method(previous, force=True)
    (pool,) = process.WarmPools.idle()
    workers = {p.pid for p in pool.workers}
    assert len(workers) == 2
    server = forkserver._forkserver._forkserver_pid
    assert server is not None
    assert all(psutil.Process(pid).ppid() == server for pid in workers), "forked by the forkserver"
    assert {p.pid for p in worker_children()} == workers, "the workers, not the server nor the tracker"
    # no_child_left_behind shuts the pool and checks, with worker_children(), that it is gone.


def test_shutdown_stops_the_warm_pools() -> None:
    workloads.heavy.map(range(60), n_jobs=2, chunksize=5)
    assert autopar.shutdown() == 1
    assert autopar.shutdown() == 0
    assert process.WarmPools.idle() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_uses_its_parents_pool() -> None:
    parent_pids = _pids(workloads.heavy.map(range(60), n_jobs=2, chunksize=5))
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            got = _pids(workloads.heavy.map(range(60), n_jobs=2, chunksize=5))
            os.write(write_end, ",".join(map(str, sorted(got))).encode())
            autopar.shutdown()
            import multiprocessing.util

            multiprocessing.util._exit_function()  # what a normal interpreter exit runs
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 20
    status = None
    while status is None and time.monotonic() < deadline:
        pid, raw = os.waitpid(child, os.WNOHANG)
        status = raw if pid else None
        time.sleep(0.02)
    if status is None:
        os.kill(child, 9)
        os.waitpid(child, 0)
        pytest.fail("the forked child hung at exit on its parent's workers")
    with os.fdopen(read_end) as pipe:
        child_pids = {int(p) for p in pipe.read().split(",") if p}
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_pids, "the child ran on its own workers"
    assert not child_pids & parent_pids
    (pool,) = process.WarmPools.idle()
    assert pool.healthy(), "the child's exit must not stop the parent's workers"
    assert _pids(workloads.heavy.map(range(60), n_jobs=2, chunksize=5)) <= parent_pids


EXITS_WITH_A_WARM_POOL = """
import os, sys
sys.path.insert(0, sys.argv[1])
from tests import workloads
print(",".join(str(pid) for _, pid in workloads.heavy.map(range(60), n_jobs=2, chunksize=5)), flush=True)
"""


def test_interpreter_exit_stops_the_warm_pool(tmp_path: Path) -> None:
    env = {**os.environ, "AUTOPAR_CACHE_DIR": str(tmp_path)}
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXITS_WITH_A_WARM_POOL, str(Path(__file__).resolve().parent.parent)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - began < 10
    pids = {int(p) for p in done.stdout.strip().split(",")}
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(pid) for pid in pids), "no worker outlives the interpreter"
