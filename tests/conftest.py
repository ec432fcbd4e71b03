"""Shared fixtures: a private plan store per test, start methods, and a child check."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

START_METHODS = ("fork", "forkserver", "spawn")

# multiprocessing keeps one forkserver and one resource tracker per interpreter for
# its whole life; they are infrastructure, not processes a test left behind (the
# workers the forkserver forks are still counted, as its children).
_INFRASTRUCTURE = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def worker_children() -> list[psutil.Process]:
    """Live child processes of this test run, multiprocessing's infrastructure excluded."""
    return _leftover_children()


@dataclass
class ChildWatch:
    """What :func:`watch_children` saw: the most children alive at once, and every pid."""

    peak: int = 0
    seen: set[int] = field(default_factory=set)


@contextlib.contextmanager
def watch_children() -> Iterator[ChildWatch]:
    """Sample this run's child processes every 5 ms while the block runs."""
    watch = ChildWatch()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            children = worker_children()
            watch.peak = max(watch.peak, len(children))
            watch.seen.update(p.pid for p in children)
            time.sleep(0.005)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        yield watch
    finally:
        stop.set()
        watcher.join()


def _leftover_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if any(marker in cmdline for marker in _INFRASTRUCTURE):
            continue
        found.append(child)
    return found


@pytest.fixture(autouse=True)
def no_child_left_behind() -> Iterator[None]:
    """Fail any test that leaves a worker process running (after a 5 s grace).

    Pools autopar keeps warm between calls are shut first: they are meant to live
    until idle or exit, not beyond the test that made them.
    """
    yield
    import autopar

    autopar.shutdown()
    deadline = time.monotonic() + 5.0
    left = _leftover_children()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _leftover_children()
    if left:
        for child in left:
            child.kill()
        pytest.fail(f"test left {len(left)} child process(es) behind: {[c.pid for c in left]}")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test plans against its own, empty, real on-disk store."""
    path = tmp_path / "autopar-cache"
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    """Hit/miss counters live in the process; zero them so each test counts its own.

    (``cache_clear()`` would also zero them, but it opens the store, and some tests
    must create the cache directory themselves.)
    """
    from autopar import AutoParallel
    from tests import workloads

    for obj in vars(workloads).values():
        if isinstance(obj, AutoParallel):
            obj._hits = obj._misses = obj._learned = 0


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test under each start method, set the way users set it."""
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(request.param, force=True)
    try:
        yield request.param
    finally:
        multiprocessing.set_start_method(previous, force=True)


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    """A file every call of ``tests.workloads.logged`` appends its item to."""
    path = tmp_path / "calls.log"
    path.touch()
    return path


def logged_items(path: Path) -> list[int]:
    """The items ``tests.workloads.logged`` was called with, in call order."""
    return [int(line) for line in path.read_text().split()]


def affinity_available() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
