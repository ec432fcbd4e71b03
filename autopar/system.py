"""What this machine offers: usable CPUs, start method, memory, worker detection.

Nothing here starts a process. Reading cgroup files and ``/proc/meminfo`` costs tens
of microseconds, so both are kept for a short while; CPU affinity is read every time
because it is cheap and changes under us (``taskset``, ``os.sched_setaffinity``).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._version import CACHE_FORMAT, __version__

__all__ = [
    "SystemInfo",
    "available_memory",
    "current_system",
    "default_start_method",
    "in_worker",
    "mark_thread_worker",
    "mark_worker",
    "on_fork_in_child",
    "usable_cpus",
]

#: Environment variables that size native thread pools (OpenMP, OpenBLAS, MKL,
#: BLIS, Accelerate, numexpr), read when such a library loads.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: Modules whose presence means a native thread pool may already be loaded.
NATIVE_POOL_MODULES = ("numpy", "scipy", "torch", "sklearn", "numexpr", "cv2", "tensorflow", "jax")

#: Seconds a cgroup CPU quota reading is trusted: quotas change only when an
#: operator resizes the container, and re-reading costs ~20 us per call.
_CGROUP_REFRESH_S = 30.0
#: Seconds an available-memory reading is trusted: psutil reads /proc/meminfo
#: (~20 us); plans tolerate a 20 % drift, so a one-second-old value is plenty.
_MEMORY_REFRESH_S = 1.0

_lock = threading.Lock()
_cgroup_cache: tuple[float, int | None] = (-math.inf, None)
_memory_cache: tuple[float, int] = (-math.inf, 0)
_in_worker: bool | None = None  # None: not yet known (worked out once per process)
#: Set in autopar's worker threads (see :mod:`autopar.backends.thread`).
_thread_worker = threading.local()


@dataclass(frozen=True)
class SystemInfo:
    """The facts a stored plan depends on; a plan made under other facts is stale."""

    usable_cpus: int
    start_method: str
    available_memory: int
    python: str
    autopar: str
    cache_format: int


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 cfs files), if any.

    A quota of 150000 per 100000 us period allows 1.5 CPUs: rounded up to 2,
    since a second worker still gets half a CPU of useful time.
    """
    v2 = root / "cpu.max"
    try:
        quota_s, period_s = v2.read_text().split()[:2]
        if quota_s == "max":
            return None
        return max(1, math.ceil(int(quota_s) / int(period_s)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cpus() -> int:
    """CPUs this process may really use: affinity mask and cgroup quota, not cpu_count."""
    global _cgroup_cache
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    now = time.monotonic()
    stamp, limit = _cgroup_cache
    if now - stamp > _CGROUP_REFRESH_S:
        limit = _cgroup_cpu_limit()
        _cgroup_cache = (now, limit)
    if limit is not None:
        count = min(count, limit)
    return max(1, count)


def available_memory() -> int:
    """Bytes of memory available to new processes (psutil), read at most once a second."""
    global _memory_cache
    now = time.monotonic()
    with _lock:
        stamp, value = _memory_cache
        if now - stamp <= _MEMORY_REFRESH_S:
            return value
    import psutil  # imported late: workers never need it, and it costs ~10 ms

    value = int(psutil.virtual_memory().available)
    with _lock:
        _memory_cache = (now, value)
    return value


def default_start_method() -> str:
    """The start method a new Pool would use, without fixing the global default.

    ``multiprocessing.get_context().get_start_method()`` would *set* the default as a
    side effect, breaking a later ``set_start_method`` in the user's program.
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is not None:
        return chosen
    # The documentation promises the platform default comes first.
    return multiprocessing.get_all_start_methods()[0]


def current_system(start_method: str | None = None) -> SystemInfo:
    """The fingerprint stored with each plan and compared on every lookup."""
    return SystemInfo(
        usable_cpus=usable_cpus(),
        start_method=start_method or default_start_method(),
        available_memory=available_memory(),
        python=platform.python_version(),
        autopar=__version__,
        cache_format=CACHE_FORMAT,
    )


def mark_worker() -> None:
    """Pool initializer: note that this process is an autopar worker."""
    global _in_worker
    _in_worker = True


#: Functions that are the main loop of a process pool's worker: a ``.map`` inside
#: such a worker runs serially (the pool already uses the CPUs, and a daemonic
#: ``multiprocessing.Pool`` worker may not start processes at all).
_POOL_WORKER_LOOPS = frozenset(
    {
        ("multiprocessing.pool", "worker"),
        ("concurrent.futures.process", "_process_worker"),
        ("loky.process_executor", "_process_worker"),
        ("joblib.externals.loky.process_executor", "_process_worker"),
    }
)


def _in_foreign_worker() -> bool:
    """True in a daemonic process or any known pool's worker (Pool, ProcessPoolExecutor, loky)."""
    process = multiprocessing.current_process()
    if process.daemon:
        return True
    target = getattr(process, "_target", None)
    return (getattr(target, "__module__", None), getattr(target, "__name__", None)) in _POOL_WORKER_LOOPS


def mark_thread_worker() -> None:
    """Mark the calling thread as one of autopar's worker threads (for :func:`in_worker`)."""
    _thread_worker.active = True


def in_worker() -> bool:
    """True inside a worker of autopar (process or thread) or of another process pool,
    where ``.map`` must run serially: nested pools oversubscribe the CPUs, and
    daemonic processes may not have children (``AssertionError`` from multiprocessing)."""
    if getattr(_thread_worker, "active", False):
        return True
    global _in_worker
    if _in_worker is None:
        _in_worker = _in_foreign_worker()
    return _in_worker


def _forget_parents_forkserver() -> None:
    """In a child made by ``os.fork()``: start a forkserver of its own when needed.

    The child inherits its parent's forkserver handle, and multiprocessing checks
    that server with ``os.waitpid`` on a process that is not the child's own, which
    raises ChildProcessError: any forkserver pool in a forked child would fail. The
    child closes its copy of the server's "alive" pipe, so the parent's server still
    exits with the parent.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")  # not imported: no server to forget
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive = server._forkserver_alive_fd
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None
    server._lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock, _in_worker
    _lock = threading.Lock()
    if not _in_worker:
        _in_worker = None  # a forked child may be some pool's worker: look again
    _forget_parents_forkserver()


_fork_hooks: list[Callable[[], None]] = [_after_fork_in_child]


def on_fork_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in a child made by ``os.fork()``: the one place autopar's modules
    say what a child must forget of its parent (locks held mid-fork, pools, stores)."""
    _fork_hooks.append(hook)


def _run_fork_hooks() -> None:
    for hook in _fork_hooks:
        hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_fork_hooks)
