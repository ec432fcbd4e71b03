"""Code that runs inside worker processes: one chunk at a time, failures captured.

Under spawn and forkserver every worker imports it (and with it the autopar package).

Each worker, set up by :func:`init_worker`:

* ignores SIGINT, so Ctrl-C reaches only the parent, which then cancels the pool;
* records in a shared array which chunk it holds, so a crash names its items;
* skips chunks once the shared cancel flag is set, so no queued task starts after
  the parent gave up;
* stops between items when its parent has died (its parent pid changes), instead
  of computing results nobody will read.

Chunks arrive pickled by the parent and results leave pickled by the worker, so a
pickling failure on either side is reported with the items it concerns rather
than killing one of Pool's handler threads (CPython gh-79492).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from ..depot import Deposit, load
from ..errors import UnpicklableError
from ..sampling import runnable_seconds
from ..system import NATIVE_POOL_MODULES as _NATIVE
from ..system import THREAD_VARS, mark_worker
from .chunks import RESULT_CANNOT, evaluate, pickle_values
from .failures import ItemFailure, dumps_exception

__all__ = [
    "SLOT_FIELDS",
    "THREAD_VARS",
    "apply_overlay",
    "echo",
    "init_worker",
    "limit_threads",
    "load_function",
    "pid_after",
    "run_chunk",
]

#: Each worker's slot in the shared array: its pid, the first item and the count
#: of the chunk it is running (count 0 when idle). Slot 0 of the array is a counter.
SLOT_FIELDS = 3

_slots: Any = None
_slot_base = -1
_cancel: Any = None
_parent_pid = -1




def limit_threads(threads: int | None) -> None:
    """Give each worker's native thread pools ``threads`` threads, unless the user chose.

    Without this, ``n`` workers each running a BLAS with one thread per core put
    ``n x cores`` threads on ``cores`` CPUs (oversubscription: often several times
    slower). The environment variables cover libraries loaded later in this worker;
    threadpoolctl resizes those already loaded (inherited through fork, or imported
    with the main module under spawn). A value set in the environment wins.
    """
    if threads is None or any(var in os.environ for var in THREAD_VARS):
        return
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if any(name in sys.modules for name in _NATIVE):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def init_worker(
    slots: Any, cancel: Any, threads: int | None = None, overlay: dict[str, dict[str, Any]] | None = None
) -> None:
    """Pool initializer: mark the process, ignore SIGINT, claim a slot, note the parent,
    size native thread pools, take the caller's simple globals.

    Nothing here may raise: a Pool whose initializer raises respawns workers forever
    (CPython gh-87472).
    """
    global _slots, _slot_base, _cancel, _parent_pid
    if overlay:
        apply_overlay(overlay)
    with contextlib.suppress(Exception):
        _release_forkserver()
    mark_worker()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # default thread pools still compute right
        limit_threads(threads)
    _cancel = cancel
    _parent_pid = os.getppid()
    with slots.get_lock():
        index = slots[0]
        slots[0] = index + 1
    base = 1 + index * SLOT_FIELDS
    raw = slots.get_obj()
    if base + SLOT_FIELDS <= len(raw):
        raw[base] = os.getpid()
        _slots, _slot_base = raw, base


def _release_forkserver() -> None:
    """In a forkserver worker: close the copy of the server's "alive" pipe it inherits.

    CPython hands every forkserver child that pipe's write end, and the server lives
    until every holder closes it. A worker holding it keeps its own parent (the
    server) alive after the caller is SIGKILLed, so it would never see its parent
    change and would compute its whole chunk for nobody. Workers start no processes
    of their own (a nested map runs serially), so they need no forkserver.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")  # not imported: nothing inherited
    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # not a forkserver child (a client that started its own server keeps it)
    with contextlib.suppress(OSError):
        os.close(alive)
    server._forkserver_alive_fd = None  # type: ignore[union-attr]


def apply_overlay(overlay: dict[str, dict[str, Any]]) -> None:
    """Set the caller's current simple globals in this (spawn/forkserver) worker.

    Such a worker imported the function's module afresh, so a global the caller
    rebound since (``mymod.SCALE = 10``, or a value set under
    ``if __name__ == "__main__"``) would otherwise have its import-time value.
    A module that fails to import here is left alone: loading the function then
    reports the real error, naming it.
    """
    for name, values in overlay.items():
        module = sys.modules.get(name)
        if module is None and name not in ("__main__", "__mp_main__"):
            try:
                module = importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - reported when the function loads
                continue
        if module is not None:
            namespace = vars(module)
            for key, value in values.items():
                _set_global(namespace, key, value)


def _set_global(namespace: dict[str, Any], name: str, value: Any) -> None:
    """Rebind ``name``, or update a container in place so other references see it too."""
    current = namespace.get(name)
    if type(current) is type(value) and isinstance(value, (dict, list, set)):
        if isinstance(current, dict):
            current.clear()
            current.update(value)
        elif isinstance(current, list):
            current[:] = value
        elif isinstance(current, set):
            current.clear()
            current.update(value)
        return
    namespace[name] = value


_functions: dict[str, Callable[[Any], Any]] = {}
#: Functions kept unpickled per worker; a caller that keeps changing state makes
#: new versions, and the oldest are dropped past this many.
_FUNCTIONS_MAX = 64


def load_function(digest: str, blob: bytes | Deposit) -> Callable[[Any], Any]:
    """The function a chunk names, unpickled once per worker per version.

    Unpickled here rather than by Pool, whose worker dies on an exception while
    reading a task (the parent then sees only an exit code): here a function that
    cannot be loaded (``Can't get attribute 'step2'``) becomes an error naming it.
    """
    func = _functions.get(digest)
    if func is None:
        try:
            loaded = load(blob) if isinstance(blob, Deposit) else pickle.loads(blob)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never fatal
            msg = f"the function cannot be loaded in the worker: {type(exc).__name__}: {exc}"
            raise UnpicklableError(msg) from None
        func = getattr(loaded, "_autopar_raw", loaded)  # an @auto_parallel wrapper: the raw function
        if len(_functions) >= _FUNCTIONS_MAX:
            _functions.clear()
        _functions[digest] = func
    return func


ChunkResult = tuple[int, "bytes | None", int, float, "bytes | None"]


def run_chunk(digest: str, function: bytes | Deposit, start: int, blob: bytes) -> ChunkResult:
    """Evaluate one pickled chunk.

    Returns ``(start, pickled results, pid, busy seconds, None)``; the pid and busy
    time let reports show how evenly the work spread. Returns ``(start, None, pid,
    0, None)`` without running anything once the pool is cancelled. A failure comes
    back as a value, ``(start, None, pid, busy, pickled ItemFailure or
    UnpicklableError)``, pickled here with the standard reducers: raised, it would
    be pickled by multiprocessing with whatever reducers the process registered
    (tblib's, once ``distributed`` is imported, which also pickle ``__context__``:
    the very object that could not be pickled).
    """
    began = time.perf_counter()
    try:
        return _run_chunk(digest, function, start, blob)
    except (ItemFailure, UnpicklableError) as failure:
        failure.__context__ = None
        return start, None, os.getpid(), time.perf_counter() - began, dumps_exception(failure)


def _exit_if_orphaned() -> None:
    if os.getppid() != _parent_pid:  # the parent died: nobody will read the results
        os._exit(70)


def _run_chunk(digest: str, function: bytes | Deposit, start: int, blob: bytes) -> ChunkResult:
    pid = os.getpid()
    if _cancel is not None and _cancel.value:
        return start, None, pid, 0.0, None
    began = time.perf_counter()
    waited = runnable_seconds()  # busy time is net of waiting for a CPU, as the sampler's is
    func = load_function(digest, function)
    items = pickle.loads(blob)
    slots, base = _slots, _slot_base
    if slots is not None:
        slots[base + 1] = start
        slots[base + 2] = len(items)
    results = evaluate(func, items, start, _exit_if_orphaned)
    payload = pickle_values(results, start, RESULT_CANNOT)
    if slots is not None:
        slots[base + 2] = 0
    busy = time.perf_counter() - began
    return start, payload, pid, busy - min(max(0.0, runnable_seconds() - waited), 0.9 * busy), None


def echo(value: Any) -> Any:
    """Return the argument: used to measure transfer costs."""
    return value


def pid_after(seconds: float) -> int:
    """Sleep, then return this worker's pid: used to see every worker answer."""
    time.sleep(seconds)
    return os.getpid()
