"""Warm pools: workers kept between ``.map`` calls, and stopped when no longer wanted.

Starting workers costs 5-10 ms each under fork and more under spawn, which a loop
of short ``.map`` calls would otherwise pay every time. At most one idle pool per
start method is kept; it is shut after an idle timeout, at interpreter exit, or by
:func:`shutdown`. A child made by ``os.fork()`` forgets its parent's pools.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
from typing import Any, ClassVar

from ..system import on_fork_in_child
from .lifecycle import forget_active_in_child
from .pool import PoolRun

__all__ = ["POOL_IDLE_TIMEOUT_S", "WarmPools", "shutdown"]

logger = logging.getLogger("autopar")

#: A warm pool left unused this long is shut down: idle workers hold memory, and a
#: program between bursts of work should not keep processes it may never use again.
POOL_IDLE_TIMEOUT_S = 30.0


class WarmPools:
    """At most one idle pool per start method, kept for the next compatible call.

    A pool is taken out while a call uses it, so two threads never share one. It is
    shut down after :data:`POOL_IDLE_TIMEOUT_S` unused, at interpreter exit, or by
    :func:`shutdown`. A child made by ``os.fork()`` forgets its parent's pools
    without touching them: they belong to the parent.
    """

    _lock = threading.Lock()
    _idle: ClassVar[dict[str, PoolRun]] = {}
    _timers: ClassVar[dict[str, threading.Timer]] = {}
    _at_exit = False
    #: Pools inherited through os.fork(): kept referenced so that their finalizers
    #: never run here (they would signal the parent's workers).
    _inherited: ClassVar[list[PoolRun]] = []

    @classmethod
    def acquire(cls, start_method: str, n_jobs: int) -> PoolRun | None:
        """The idle pool for ``start_method`` if it has ``n_jobs`` healthy workers."""
        with cls._lock:
            run = cls._idle.pop(start_method, None)
            cls._cancel_timer(start_method)
        if run is None:
            return None
        if run.n_jobs == n_jobs and run.healthy():
            logger.debug("autopar: reusing a warm pool of %d %s workers", n_jobs, start_method)
            return run
        cls._shut(run)
        return None

    @classmethod
    def release(cls, run: PoolRun) -> None:
        """Keep ``run`` for the next call; an older idle pool of its kind is shut."""
        with cls._lock:
            older = cls._idle.pop(run.start_method, None)
            cls._cancel_timer(run.start_method)
            cls._idle[run.start_method] = run
            timer = threading.Timer(POOL_IDLE_TIMEOUT_S, cls._expire, (run,))
            timer.daemon = True
            timer.name = "autopar-idle-pool"
            cls._timers[run.start_method] = timer
            if not cls._at_exit:
                cls._at_exit = True
                atexit.register(shutdown)
        timer.start()
        if older is not None:
            cls._shut(older)

    @classmethod
    def retire(cls, run: PoolRun) -> None:
        """Stop a pool taken out for a call it cannot serve (its workers' view is old)."""
        cls._shut(run)

    @classmethod
    def size(cls, start_method: str) -> int:
        """Workers of the idle pool for ``start_method`` (0 when there is none)."""
        with cls._lock:
            run = cls._idle.get(start_method)
        return run.n_jobs if run is not None else 0

    @classmethod
    def idle(cls) -> list[PoolRun]:
        """The pools kept warm now."""
        with cls._lock:
            return list(cls._idle.values())

    @classmethod
    def _cancel_timer(cls, start_method: str) -> None:
        timer = cls._timers.pop(start_method, None)
        if timer is not None:
            timer.cancel()

    @classmethod
    def _expire(cls, run: PoolRun) -> None:
        with cls._lock:
            if cls._idle.get(run.start_method) is not run:
                return
            del cls._idle[run.start_method]
            cls._timers.pop(run.start_method, None)
        logger.debug("autopar: shutting down a pool idle for %.0f s", POOL_IDLE_TIMEOUT_S)
        cls._shut(run)

    @staticmethod
    def _shut(run: PoolRun) -> None:
        run._reusable = False
        if run.owner_pid == os.getpid():
            # A worker lost while idle may have died holding the task queue's lock:
            # a graceful join could then wait forever, so such a pool is killed.
            run.close(abort=not run.healthy())

    @classmethod
    def shutdown(cls) -> int:
        """Shut every idle pool now; returns how many were shut."""
        with cls._lock:
            runs = list(cls._idle.values())
            cls._idle.clear()
            for start_method in list(cls._timers):
                cls._cancel_timer(start_method)
        for run in runs:
            cls._shut(run)
        return len(runs)

    @classmethod
    def _forget_in_child(cls) -> None:
        """After os.fork(): the parent's pools are not ours to use or to stop."""
        cls._lock = threading.Lock()  # the parent's may have been held mid-fork
        children: set[Any] = getattr(multiprocessing.process, "_children", set())
        for run in {id(r): r for r in [*cls._idle.values(), *forget_active_in_child()]}.values():
            run._reusable = False
            run._closed = True
            finalizer = getattr(run.pool, "_terminate", None)
            if finalizer is not None:
                finalizer.cancel()
            # Nor are its workers our children: multiprocessing's exit hook would
            # SIGTERM them when this process exits normally.
            for worker in run.workers:
                children.discard(worker)
            cls._inherited.append(run)
        cls._idle = {}
        cls._timers = {}


def shutdown() -> int:
    """Stop the worker pools autopar keeps warm between ``.map`` calls.

    They also stop on their own after :data:`POOL_IDLE_TIMEOUT_S` unused and at
    interpreter exit; call this to free the processes sooner. Returns the number of
    pools stopped.
    """
    return WarmPools.shutdown()


on_fork_in_child(WarmPools._forget_in_child)
