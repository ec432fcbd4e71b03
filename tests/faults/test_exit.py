"""Issue 10, cases 5-11: processes that exit, stop promptly and leave nothing behind.

Exit and Ctrl-C cases run a real script in a child interpreter (its own session,
so Ctrl-C reaches its whole process group, as a terminal sends it) and check that
it ends and that every worker it printed is gone.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.pool
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from autopar import TaskTimeoutError, WorkerCrashedError, auto_parallel
from autopar.backends import ProcessBackend
from tests.faults import faulty, nesting, stateful

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["fork", "forkserver", "spawn"]


@pytest.fixture(autouse=True)
def _kill_scripts() -> Any:
    """Whatever a failed test left of its script's process group is killed."""
    yield
    for proc in _started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    _started.clear()


_started: list[subprocess.Popen[str]] = []


def _start(tmp_path: Path, body: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    _started.append(proc)
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float, hung: str) -> tuple[str, str]:
    """The script's output once it ends; its whole group is killed and the test
    fails with ``hung`` if it has not ended within ``timeout`` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(hung)


def _gone(pids: list[int], within: float = 5.0) -> list[int]:
    """The pids among ``pids`` still running (zombies count as gone) after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            return alive
        time.sleep(0.05)


IMAP_AT_EXIT = """
    import json, multiprocessing, sys
    from tests.faults import stateful

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[1])
        results = stateful.slow.imap(range(10_000), n_jobs=2, chunksize=1)
        for value in results:
            if value >= 5:
                break
        print(json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)
        # the script ends here with `results` still referenced
"""


@pytest.mark.parametrize("method", METHODS)
def test_a_started_imap_referenced_at_exit_does_not_hang(tmp_path: Path, method: str) -> None:
    proc = _start(tmp_path, IMAP_AT_EXIT, method)
    out, err = _finish(proc, 30, "the script never exited")
    assert proc.returncode == 0, err
    assert "can't create new thread" not in err
    workers = json.loads(out.strip().splitlines()[-1])
    assert workers, "the stream should have had workers running"
    assert _gone(workers) == []


CTRL_C = """
    import json, multiprocessing, sys
    from tests.faults import stateful

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[1])
        print("started", flush=True)
        stateful.stuck_all.map(range(8), n_jobs=2, chunksize=1)
"""


@pytest.mark.parametrize("presses", [1, 2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c_pressed_repeatedly_stops_fast_and_leaves_no_worker(tmp_path: Path, method: str, presses: int) -> None:
    proc = _start(tmp_path, CTRL_C, method)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 30
    while len(_workers_of(me)) < 2 and time.monotonic() < deadline:  # the items are running
        time.sleep(0.05)
    workers = _workers_of(me)
    assert len(workers) >= 2
    time.sleep(0.3)
    t0 = time.monotonic()
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    _, err = _finish(proc, 20, f"the script hung after {presses} Ctrl-C")
    assert "KeyboardInterrupt" in err
    assert time.monotonic() - t0 < 10
    assert _gone(workers) == []


def _workers_of(parent: psutil.Process) -> list[int]:
    """The script's pool workers: its descendants with no children of their own (the
    forkserver has the workers as children), the resource tracker excepted."""
    found = []
    for child in parent.children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()) or child.children():
                continue
        except psutil.Error:
            continue
        found.append(child.pid)
    return found


def test_interrupt_while_the_pool_starts_leaves_no_worker(start_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = multiprocessing.pool.Pool._repopulate_pool  # type: ignore[attr-defined]
    started: list[int] = []

    def interrupted(self: Any) -> Any:
        original(self)
        started.extend(p.pid for p in self._pool)
        raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing.pool.Pool, "_repopulate_pool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stateful.scaled.map(range(100), n_jobs=2, chunksize=10)
    assert len(started) == 2
    assert _gone(started, within=0) == []
    monkeypatch.undo()
    assert stateful.scaled.map(range(100), n_jobs=2, chunksize=10) == list(range(100))


def test_map_inside_the_users_own_pool_and_executor_runs_serially(start_method: str) -> None:
    expected = list(range(30))
    pool = multiprocessing.Pool(2)
    try:
        assert pool.map(nesting.inner_map, [30, 30]) == [expected, expected]
    finally:
        pool.close()
        pool.join()
    with ProcessPoolExecutor(2) as executor:
        assert list(executor.map(nesting.inner_map, [30, 30])) == [expected, expected]


SIGCHLD_IGNORED = """
    import multiprocessing, signal, sys
    from autopar import WorkerCrashedError
    from tests.faults import faulty

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[1])
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        try:
            faulty.exits.map(range(40), n_jobs=2, chunksize=1)
        except WorkerCrashedError as exc:
            print("crashed:", exc, flush=True)
        print(faulty.exits.map(range(faulty.TARGET), n_jobs=2, chunksize=1) == list(range(faulty.TARGET)))
"""


@pytest.mark.parametrize("method", METHODS)
def test_a_dead_worker_is_seen_when_the_program_ignores_sigchld(tmp_path: Path, method: str) -> None:
    proc = _start(tmp_path, SIGCHLD_IGNORED, method)
    out, err = _finish(proc, 40, "a dead worker hung the map")
    assert proc.returncode == 0, err
    assert f"held item {faulty.TARGET}" in out
    assert out.strip().splitlines()[-1] == "True"


class _Counted:
    """An item whose pickling (in the parent) is counted, and optionally slow."""

    pickled = 0
    delay = 0.0

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        _Counted.pickled += 1
        time.sleep(_Counted.delay)
        return (int, (self.value,))


def test_map_pickles_only_a_few_chunks_ahead_of_the_results(start_method: str) -> None:
    _Counted.pickled, _Counted.delay = 0, 0.0
    items = [_Counted(i) for i in range(400)]
    seen_at_first_result: list[int] = []

    def progress(n: int) -> None:
        if not seen_at_first_result:
            seen_at_first_result.append(_Counted.pickled)

    backend = ProcessBackend(start_method)
    out = backend.map(faulty.identity_slow, items, start=0, n_jobs=2, chunksize=4, progress=progress)
    assert out == list(range(400))
    # 100 chunks; at most 2 per worker are out before a result is read (plus the one
    # pickled first, before any worker starts), each of 4 items.
    assert seen_at_first_result[0] <= 4 * (2 * 2 + 1)


def test_timeout_is_checked_while_sending(start_method: str) -> None:
    _Counted.pickled, _Counted.delay = 0, 0.05
    items = [_Counted(i) for i in range(200)]  # 10 s of pickling in all
    try:
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            ProcessBackend(start_method).map(faulty.identity_slow, items, start=0, n_jobs=2, chunksize=1, timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        _Counted.delay = 0.0


def test_timeout_with_one_job_runs_on_a_worker_that_can_be_stopped(start_method: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        faulty.stuck.map(range(faulty.TARGET + 3), n_jobs=1, timeout=1)
    assert time.monotonic() - t0 < 10


@auto_parallel
def _nap(x: int) -> int:
    time.sleep(0.2)
    return x


def test_timeout_with_the_serial_backend_is_checked_between_items() -> None:
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="before item"):
        _nap.map(range(30), backend="serial", timeout=0.5)  # 6 s of items
    assert time.monotonic() - t0 < 4
    assert _nap.map(range(3), backend="serial", timeout=30) == [0, 1, 2]


def test_crashed_worker_error_still_names_the_exit_code(start_method: str) -> None:
    with pytest.raises(WorkerCrashedError, match="exited with code 3"):
        faulty.exits.map(range(40), n_jobs=2, chunksize=1)
