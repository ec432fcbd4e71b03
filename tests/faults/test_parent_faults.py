"""Issue 4, the parent's own fate: Ctrl-C, and being SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def _start(scenario: str, log: Path, method: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.parent_main", scenario, str(log), method],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal job would be
    )


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_alive(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and _alive(proc.pid):
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_ctrl_c_interrupts_within_2s_and_no_queued_task_starts(method: str, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    proc = _start("interrupt", log, method)
    try:
        assert _wait_for(lambda: log.exists() and len(log.read_text().split("\n")) > 6, 30), "workers never started"
        sent = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=2.5)
        waited = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "KeyboardInterrupt" in stderr, stderr[-2000:]
    assert waited < 2.0, f"took {waited:.2f} s to stop"
    starts = [line.split() for line in log.read_text().splitlines() if line]
    late = [s for s in starts if float(s[1]) > sent + 0.02]
    assert not late, f"items started after Ctrl-C: {late}"
    assert _wait_for(lambda: not _group_alive(proc.pid), 5), f"left alive: {_group_alive(proc.pid)}"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.parametrize("scenario", ["idle", "busy"])
def test_workers_exit_when_the_parent_is_sigkilled(method: str, scenario: str, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    proc = _start(scenario, log, method)
    marker = Path(str(log) + ".workers")
    try:
        assert _wait_for(marker.exists, 30), proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.1)
        workers = [int(pid) for pid in marker.read_text().split()]
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # idle workers see their task pipe close; busy ones stop after the current item
        # (0.1 s), long before the 30-item chunk they hold would end
        assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 5), [p for p in workers if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _group_alive(proc.pid):
            os.kill(pid, signal.SIGKILL)
