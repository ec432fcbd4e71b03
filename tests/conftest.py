"""Shared fixtures: a private plan store per test, start methods, and a child check."""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from autopar.model import Costs

START_METHODS = ("fork", "forkserver", "spawn")

# multiprocessing keeps one forkserver and one resource tracker per interpreter for
# its whole life; they are infrastructure, not processes a test left behind. Both
# are started by this process, so they are its direct children; the workers the
# forkserver forks share its command line but are *its* children, and count.
_INFRASTRUCTURE = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")

#: The machine costs every test plans from: about what a quiet 2-core Linux machine
#: measures (fork starts a worker in ~20 ms, forkserver and spawn in ~50 ms, a chunk
#: round trip is ~60 us, a byte ~1 ns). Measured ones would make a decision depend
#: on how busy the machine was when the calibration pool was timed; a test marked
#: ``real_costs`` times the real pool instead.
MACHINE_COSTS = {
    "fork": Costs(worker_start_s=0.02, chunk_s=60e-6, byte_s=1e-9, measured=True),
    "forkserver": Costs(worker_start_s=0.05, chunk_s=60e-6, byte_s=1e-9, measured=True),
    "spawn": Costs(worker_start_s=0.05, chunk_s=60e-6, byte_s=1e-9, measured=True),
}


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
    me = os.getpid()
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            infrastructure = child.ppid() == me and any(m in " ".join(child.cmdline()) for m in _INFRASTRUCTURE)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if not infrastructure:
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
def machine_costs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Costs]:
    """Plans are made from :data:`MACHINE_COSTS`, not from a pool timed on a busy machine.

    Only the timing is replaced: the costs still go through the real store (written
    under their ``costs:`` key on first need, read back, re-measured when stale).
    """
    if request.node.get_closest_marker("real_costs") is None:
        from autopar.backends import calibration

        monkeypatch.setattr(calibration, "measure_costs", lambda method, keep=None: MACHINE_COSTS[method])
    return MACHINE_COSTS


@pytest.fixture(autouse=True)
def open_store(request: pytest.FixtureRequest, cache_dir: Path) -> None:
    """Open the test's store before the test, however long a loaded machine takes.

    ``.map`` waits only ~0.1 s for a store to open, then plans in memory until it
    has (a plan made meanwhile is not on disk, and is missed later): right for
    users, noise for a test that is not about the store. A test that takes
    ``cache_dir`` as an argument manages the directory itself (creates it with odd
    modes, corrupts it) and is left alone.
    """
    function = getattr(request, "function", None)
    if function is None or "cache_dir" in inspect.signature(function).parameters:
        return
    from autopar import CacheWarning
    from autopar.store import get_store

    store = get_store()
    deadline = time.monotonic() + 30.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # a slow open is waited for here, not reported
        while not store.persistent and time.monotonic() < deadline:
            time.sleep(0.01)
    assert store.persistent, f"the test store at {cache_dir} did not open in 30 s"


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
