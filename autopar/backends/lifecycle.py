"""Starting and ending pools safely: an interrupt while workers start, a second
Ctrl-C while they stop, and pools still in use when the interpreter exits.

``Pool.__init__`` cleans up after an ``Exception`` but not a ``KeyboardInterrupt``;
multiprocessing's exit hook waits forever on workers that ignore SIGTERM; and in
final garbage collection no thread may start (3.12+ raises, 3.10/3.11 hang). Each
case is handled here once, for :class:`~autopar.backends.pool.PoolRun`.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import PoolRun

__all__ = [
    "TEARDOWN_WAIT_S",
    "exiting",
    "forget_active_in_child",
    "hurry_on_interrupt",
    "new_pool",
    "stop_respawning",
    "track",
    "untrack",
]

#: Pool's own teardown gets this long after SIGKILL before it is abandoned.
TEARDOWN_WAIT_S = 2.0


def new_pool(
    ctx: Any, n_jobs: int, initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> multiprocessing.pool.Pool:
    """A Pool whose workers cannot outlive an interrupt that lands while it starts.

    ``Pool.__init__`` cleans up after an ``Exception`` but not after a
    ``KeyboardInterrupt``: workers already started would be left running. The object
    is made before ``__init__`` runs, so whatever it started can be found and killed.
    """
    before = set(getattr(multiprocessing.process, "_children", ()))
    pool = multiprocessing.pool.Pool.__new__(multiprocessing.pool.Pool)
    try:
        pool.__init__(n_jobs, initializer=initializer, initargs=initargs, context=ctx)  # type: ignore[misc]
    except BaseException:
        _kill_half_made(pool, before)
        raise
    return pool


def stop_respawning(pool: multiprocessing.pool.Pool) -> None:
    """Tell Pool's handler threads to stop, first: its worker handler replaces any
    worker that exits, so killing workers without this can leave a fresh one behind
    (forked after the kill, holding the program's stdout, outliving it)."""
    with contextlib.suppress(Exception):
        pool._state = multiprocessing.pool.TERMINATE  # type: ignore[attr-defined]
        for name in ("_worker_handler", "_task_handler", "_result_handler"):
            handler = getattr(pool, name, None)
            if handler is not None:
                handler._state = multiprocessing.pool.TERMINATE


def _kill_half_made(pool: multiprocessing.pool.Pool, before: set[Any]) -> None:
    """Stop what a Pool that failed to start had started: handler threads, workers."""
    stop_respawning(pool)
    started = list(getattr(pool, "_pool", ()))
    started += [p for p in getattr(multiprocessing.process, "_children", ()) if p not in before]
    for process in started:
        with contextlib.suppress(Exception):
            process.kill()
    for process in started:
        with contextlib.suppress(Exception):
            process.join(TEARDOWN_WAIT_S)
    finalizer = getattr(pool, "_terminate", None)
    if finalizer is not None:
        finalizer.cancel()


#: Runs in use or kept warm, to stop at interpreter exit before anything else.
_active: weakref.WeakSet[PoolRun] = weakref.WeakSet()
_exiting = False
_exit_hook = False


def track(run: PoolRun) -> None:
    """Note a new pool; the first one registers the exit hook (after multiprocessing's,
    so it runs before it)."""
    global _exit_hook
    _active.add(run)
    if not _exit_hook:
        _exit_hook = True
        atexit.register(_stop_all_at_exit)


@contextlib.contextmanager
def hurry_on_interrupt(run: PoolRun) -> Iterator[None]:
    """While a pool is being stopped, a further Ctrl-C kills its workers at once.

    The stop is already bounded (terminate, a grace period, SIGKILL); a second
    Ctrl-C must make it faster, never interrupt it halfway and leave workers behind
    (multiprocessing's exit hook would then wait forever on workers that ignore
    SIGTERM). The interrupt is raised once the workers are gone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def hurry(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        run.kill()

    try:
        previous = signal.signal(signal.SIGINT, hurry)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def _stop_all_at_exit() -> None:
    """At interpreter exit: stop pools still in use (a started ``imap`` left
    referenced) before multiprocessing's own exit hook and final garbage
    collection, where a generator's cleanup could not start a thread."""
    global _exiting
    _exiting = True
    for run in list(_active):
        with contextlib.suppress(Exception):
            run._reusable = False
            if run.owner_pid == os.getpid():
                run.close(abort=True)


def forget_active_in_child() -> list[PoolRun]:
    """After ``os.fork()``: the parent's pools, now listed nowhere (they are not ours)."""
    runs = list(_active)
    _active.clear()
    return runs


def untrack(run: PoolRun) -> None:
    """A pool that was closed: nothing to stop at exit."""
    _active.discard(run)


def exiting() -> bool:
    """True once the interpreter is exiting: no thread may be started."""
    return _exiting or sys.is_finalizing()
