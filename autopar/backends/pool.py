"""One real ``multiprocessing.Pool``, watched so that it cannot hang, and its end.

Chunks go out with ``apply_async``, pickled in the caller first (so an unpicklable
item is named before it can break Pool's task thread); completions come back
through a queue. While waiting, the caller checks every worker (its exit code and
its pipe, which closes even when SIGCHLD is ignored) and Pool's result thread, so a
worker killed mid-chunk (which a bare Pool silently replaces, losing the chunk:
CPython gh-66587) raises :class:`~autopar.errors.WorkerCrashedError` naming the
items it held, instead of hanging forever.

On any failure the pool is cancelled (workers skip queued chunks), terminated, and
whatever survives a grace period is SIGKILLed, with Pool's own teardown run in a
helper thread so that even a Pool wedged on a dead worker's lock cannot hang the
caller; a further Ctrl-C kills at once. Pools still in use at interpreter exit are
stopped by an exit hook that starts no thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.pool
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import depot
from ..depot import Deposit
from ..errors import TaskTimeoutError, UnpicklableError, WorkerCrashedError
from ..serialization import Shipment
from ..state import known_simple_globals, known_states
from ..system import usable_cpus
from ._worker import SLOT_FIELDS, init_worker, run_chunk
from .chunks import pickle_chunk, span, translate_failure
from .failures import ItemFailure
from .lifecycle import TEARDOWN_WAIT_S, exiting, hurry_on_interrupt, new_pool, stop_respawning, track, untrack

__all__ = ["TEARDOWN_WAIT_S", "PoolRun", "as_shipment"]

logger = logging.getLogger("autopar")

#: How often the parent checks worker exit codes while no result arrives. A dead
#: worker is reported within this delay; each check is one waitpid per worker.
POLL_S = 0.05
#: How long a worker whose pipe closed is given for its exit status to be readable
#: (never, when the program ignores SIGCHLD: the error then says so).
EXIT_STATUS_WAIT_S = 0.2
#: After a failure, workers get this long to exit on SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 1.0

# Raised by a Pool worker whose result cannot be pickled (missing from typeshed).
_MaybeEncodingError: type[Exception] = getattr(multiprocessing.pool, "MaybeEncodingError")  # noqa: B009


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (its exit status could not be read)"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def as_shipment(func: Callable[[Any], Any] | Shipment) -> Shipment:
    """``func`` pickled for workers, unless it already is."""
    return func if isinstance(func, Shipment) else Shipment.of(func)


class PoolRun:
    """A pool and the call it serves now: submit chunks, receive them, detect dead workers.

    Between calls a healthy pool is kept warm (:mod:`.warm`). It records the
    state every decorated function had when its workers started (see
    :mod:`autopar.state`), and serves a function later only while that is unchanged.
    """

    def __init__(self, ctx: Any, n_jobs: int, *, deadline: float | None = None) -> None:
        # Room for every worker the Pool may start, replacements included.
        self._slots = ctx.Array("q", 1 + SLOT_FIELDS * (4 * n_jobs + 8))
        self._cancel = ctx.Value("b", 0, lock=False)
        self.start_method: str = ctx.get_start_method()
        #: What each decorated function read when the workers started (their view).
        self.known, self._keep = known_states()
        #: Large functions this pool's workers were sent (see :mod:`autopar.depot`).
        self._deposits: dict[str, Deposit] = {}
        # Spawn and forkserver workers import modules afresh: send the caller's
        # current simple globals. Fork workers hold this process's memory already.
        overlay = known_simple_globals() if self.start_method != "fork" else None
        threads = max(1, usable_cpus() // n_jobs)
        initargs = (self._slots, self._cancel, threads, overlay)
        self.pool: multiprocessing.pool.Pool = new_pool(ctx, n_jobs, init_worker, initargs)
        track(self)
        # Private, but the only way to see a dead worker: Pool replaces it silently.
        self.workers: list[Any] = list(getattr(self.pool, "_pool"))  # noqa: B009
        self.done: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
        self.pending: dict[int, int] = {}
        #: Seconds each worker (by pid) spent computing, for reports.
        self.busy: dict[int, float] = {}
        self.deadline = deadline
        self.n_jobs = n_jobs
        self.owner_pid = os.getpid()
        #: Calls served by this pool, for tests and reports (1 on the first call).
        self.calls = 1
        self._next_check = time.monotonic() + POLL_S
        self._closed = False
        self._reusable = False
        #: Where a healthy pool goes after its call (the warm pools), if anywhere.
        self.release: Callable[[PoolRun], None] | None = None

    def healthy(self) -> bool:
        """Every original worker alive, nothing in flight: safe to serve another call."""
        return (
            not self._closed
            and not self.pending
            and self.done.empty()
            and os.getpid() == self.owner_pid
            and list(getattr(self.pool, "_pool", ())) == self.workers
            and not self._dead()
        )

    def serves(self, shipment: Shipment) -> bool:
        """True when this pool's workers see what ``shipment``'s function reads now.

        A function unknown to the pool (defined, or decorated, after its workers
        started) or one whose state changed since is not served: under fork the
        workers hold the old module state, under spawn and forkserver the old
        simple globals. A fresh pool is cheaper than a wrong answer.
        """
        if shipment.key is None:
            return True
        return self.known.get(shipment.key) == shipment.token

    def _dead(self) -> list[Any]:
        """Workers that have exited. Their sentinels say so even when the program
        ignores SIGCHLD, where the exit code is never collected and reads None."""
        gone = [p for p in self.workers if p.exitcode is not None]
        if gone:
            return gone
        try:
            ready = multiprocessing.connection.wait([p.sentinel for p in self.workers], timeout=0)
        except (OSError, ValueError):  # a closed sentinel: that worker was joined, so it is gone
            return list(self.workers)
        dead = [p for p in self.workers if p.sentinel in ready]
        if dead:
            # Its pipe closes a moment before its exit status can be collected; give
            # that moment, so the error can name the code or signal.
            deadline = time.monotonic() + EXIT_STATUS_WAIT_S
            while dead[0].exitcode is None and time.monotonic() < deadline:
                time.sleep(0.005)
        return dead

    def reset(self, deadline: float | None) -> None:
        """Start a new call on this (healthy, idle) pool."""
        self.deadline = deadline
        self.busy = {}
        self.calls += 1
        self._next_check = time.monotonic() + POLL_S

    # -- sending and receiving ---------------------------------------------------------

    def submit(self, func: Callable[[Any], Any] | Shipment, start: int, chunk: Sequence[Any]) -> int:
        """Send one chunk (its first item's index is ``start``); returns its pickled size."""
        return self.submit_blob(as_shipment(func), start, pickle_chunk(chunk, start), len(chunk))

    def submit_blob(self, shipment: Shipment, start: int, blob: bytes, count: int) -> int:
        """Send one chunk already pickled by :func:`pickle_chunk`; returns its size."""
        made = shipment.deposit
        if made is not None and made.path not in self._deposits:
            self._deposits[made.path] = made
            depot.hold(made)  # its files stay while this pool lives
        self.pending[start] = count
        self.pool.apply_async(
            run_chunk,
            (shipment.digest, shipment.payload, start, blob),
            callback=self._succeeded,
            error_callback=functools.partial(self._failed, start),
        )
        return len(blob)

    def _succeeded(self, result: tuple[int, bytes | None, int, float, bytes | None]) -> None:
        start, payload, pid, busy, failure = result
        self.busy[pid] = self.busy.get(pid, 0.0) + busy
        if failure is None:
            self.done.put((start, True, payload))
            return
        try:
            exc: BaseException = pickle.loads(failure)
        except Exception as err:  # noqa: BLE001 - described below, never lost
            exc = UnpicklableError(f"the failure of a chunk cannot be unpickled here: {type(err).__name__}: {err}")
        self.done.put((start, False, exc))

    def _failed(self, start: int, exc: BaseException) -> None:
        self.done.put((start, False, exc))

    def receive(self) -> tuple[int, list[Any]]:
        """The next finished chunk as ``(start, results)``; raises its failure.

        Workers are checked every POLL_S on the clock, not only when results stop
        coming: the other workers keep results flowing after one dies, and waiting
        for silence would report the crash only at the end of the whole map.
        """
        while True:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + POLL_S
                self._check()
            timeout = max(0.0, self._next_check - now)
            if self.deadline is not None:
                timeout = min(timeout, max(0.0, self.deadline - now))
            try:
                start, ok, payload = self.done.get(timeout=timeout)
            except queue.Empty:
                continue
            count = self.pending.pop(start, 0)
            if not ok:
                raise self._translate(payload, start, count)
            try:
                return start, pickle.loads(payload)
            except Exception as exc:
                msg = f"the results of {span(start, count)} cannot be unpickled here: {type(exc).__name__}: {exc}"
                raise UnpicklableError(msg) from exc

    def check_deadline(self) -> None:
        """Raise :class:`TaskTimeoutError` once the call's time is up (checked while sending)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._check()

    def _held(self, pid: int | None) -> str:
        raw = self._slots.get_obj()
        for base in range(1, len(raw) - SLOT_FIELDS + 1, SLOT_FIELDS):
            if raw[base] == pid and raw[base + 2] > 0:
                return f"it held {span(raw[base + 1], raw[base + 2])}"
        return "it held no chunk"

    def _check(self) -> None:
        """Raise if a worker died, Pool's result thread died, or time ran out."""
        for process in self._dead():
            code = process.exitcode
            msg = (
                f"worker pid {process.pid} {_describe_exit(code)}; {self._held(process.pid)}, "
                f"and {len(self.pending)} chunk(s) were unfinished"
            )
            raise WorkerCrashedError(msg)
        handler = getattr(self.pool, "_result_handler", None)
        if handler is not None and not handler.is_alive():
            msg = "multiprocessing's result thread died; results in flight are lost"
            raise WorkerCrashedError(msg)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            spans = ", ".join(span(s, c) for s, c in sorted(self.pending.items())[:5])
            msg = f"timed out with {len(self.pending)} chunk(s) unfinished ({spans})"
            raise TaskTimeoutError(msg)

    @staticmethod
    def _translate(exc: BaseException, start: int, count: int) -> BaseException:
        """The exception the caller should see for a failed chunk."""
        if isinstance(exc, (ItemFailure, UnpicklableError)):
            return translate_failure(exc)
        if isinstance(exc, _MaybeEncodingError):
            msg = f"a result of {span(start, count)} cannot be sent back from the worker: {exc.args[0]}"
        else:
            msg = f"{span(start, count)} could not be run in a worker: {type(exc).__name__}: {exc}"
        err = UnpicklableError(msg)
        err.__cause__ = exc
        return err

    # -- shutting down -----------------------------------------------------------------

    def close(self, *, abort: bool) -> None:
        """After success, keep the pool warm (if reusable) or join it; after a failure,
        cancel, terminate, then kill."""
        if self._closed:
            return
        if not abort and self._reusable and self.release is not None and self.healthy():
            self.release(self)
            return
        self._closed = True
        untrack(self)
        try:
            if not abort:
                self.pool.close()
                self.pool.join()
                return
            self._cancel.value = 1
            with hurry_on_interrupt(self):
                self._abort()
        finally:
            for made in self._deposits.values():
                depot.let_go(made)
            self._deposits.clear()

    def everyone(self) -> list[Any]:
        """Every worker process this pool started, replacements included."""
        return list({id(p): p for p in [*self.workers, *getattr(self.pool, "_pool", [])]}.values())

    def kill(self) -> None:
        """SIGKILL every worker now (no grace): the fastest stop there is. Pool is told
        first to stop replacing workers, so none is started after the kill."""
        stop_respawning(self.pool)
        for process in self.everyone():
            if process.exitcode is None:
                with contextlib.suppress(Exception):
                    process.kill()

    def _abort(self) -> None:
        everyone = self.everyone()
        if exiting():
            # No thread may start now (3.12+ raises, 3.10/3.11 can hang in final
            # garbage collection): kill the workers, and drop Pool's own teardown,
            # which could wait on a lock a killed worker held.
            self.kill()
            for process in {*everyone, *self.everyone()}:
                process.join(TEARDOWN_WAIT_S)
            finalizer = getattr(self.pool, "_terminate", None)
            if finalizer is not None:
                finalizer.cancel()
            return
        teardown = threading.Thread(target=self.pool.terminate, name="autopar-terminate", daemon=True)
        teardown.start()
        teardown.join(TERMINATE_GRACE_S)
        self.kill()
        for process in {*everyone, *self.everyone()}:
            process.join(TEARDOWN_WAIT_S)
        teardown.join(TEARDOWN_WAIT_S)
        if teardown.is_alive():
            logger.debug("autopar: multiprocessing's teardown is wedged; workers were killed")
