"""The thread backend: chunks on warm threads in this process.

For work that releases the GIL (native code, compression, hashing, waiting on
disks and networks) threads beat worker processes: nothing starts, nothing is
pickled, nothing is copied. The planner chooses them only when the sample measured
that the work scales on them (:mod:`autopar.thread_model`).

A call takes ``n_jobs`` idle threads (starting any that are missing) for itself and
gets them back before it returns; threads idle for :data:`THREAD_IDLE_TIMEOUT_S`
end. ``map`` shares its input and results list with the threads: each takes the
next chunk's bounds and writes its results in place, so the caller wakes once,
not once per chunk (a queue round trip per chunk cost ~14 us against
``ThreadPool``'s ~2 us). ``imap`` streams through the shared chunk pipeline
(:mod:`.chunks`), reading its input only a few chunks ahead. A running Python thread
cannot be killed: a timeout, Ctrl-C or a failure stops handing out chunks and tells
running ones to stop at their next item, but an item already running finishes in
the background. Use ``backend="process"`` for work that must be stoppable.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import TaskTimeoutError
from ..notes import add_item_note
from ..system import mark_thread_worker, on_fork_in_child, usable_cpus
from .base import Sendable
from .chunks import chunk_bounds, span, stream, stream_chunks
from .serial import _callable

__all__ = ["THREAD_IDLE_TIMEOUT_S", "ThreadBackend", "WarmThreads"]

logger = logging.getLogger("autopar")

#: A thread left idle this long ends: as warm process pools do (30 s), a program
#: between bursts of work keeps its threads warm, and no longer.
THREAD_IDLE_TIMEOUT_S = 30.0
#: How often a caller waiting for a chunk looks at its deadline.
POLL_S = 0.05
#: Chunks in flight per thread: one running and one queued keeps a thread busy.
CHUNKS_PER_THREAD = 2
#: Results held for ordered streams beyond those in flight, per thread.
STREAM_BUFFER_PER_THREAD = 16
#: At interpreter exit, how long idle threads are given to end.
EXIT_JOIN_S = 1.0
#: How long a call that ended well waits for its threads to be back in the pool
#: (they are on their way: only a bound on a thread that hangs in give_back).
RETURN_WAIT_S = 1.0

_STOP = object()


class _Lent:
    """What every call lent threads has: the caller's context (each thread runs in a
    copy of it: ``decimal`` settings and other context variables follow the work),
    and a count of the threads back in the pool."""

    def __init__(self) -> None:
        self.context = contextvars.copy_context()
        self.returned = threading.Semaphore(0)

    def run(self, serve: Callable[[], None]) -> None:
        """In a worker thread: ``serve`` in a copy of the caller's context."""
        self.context.copy().run(serve)


class _Call(_Lent):
    """One ``imap``'s chunks on its threads: the :class:`~.base.Run` the stream driver uses."""

    def __init__(self, func: Callable[[Any], Any], deadline: float | None) -> None:
        super().__init__()
        self.func = func
        self.deadline = deadline
        self.tasks: queue.SimpleQueue[tuple[int, list[Any]] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
        self.pending: dict[int, int] = {}
        self.cancelled = False
        #: Seconds each thread (by ident) spent on this call's chunks.
        self.busy: dict[int, float] = {}

    def submit(self, start: int, chunk: Sequence[Any]) -> int:
        """Queue a chunk for the call's threads; nothing is pickled (0 bytes sent)."""
        self.pending[start] = len(chunk)
        self.tasks.put((start, list(chunk)))
        return 0

    def receive(self) -> tuple[int, list[Any]]:
        """The next finished chunk; raises its item's exception, or at the deadline."""
        while True:
            wait = POLL_S
            if self.deadline is not None:
                wait = min(wait, max(0.0, self.deadline - time.monotonic()))
            try:
                start, ok, payload = self.done.get(timeout=wait)
            except queue.Empty:
                self.check_deadline()
                continue
            self.pending.pop(start, None)
            if ok:
                return start, payload
            exc, index, item = payload
            add_item_note(exc, index, item)
            raise exc

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            spans = ", ".join(span(s, c) for s, c in sorted(self.pending.items())[:5])
            raise TaskTimeoutError(_timed_out(len(self.pending), spans))

    def serve(self) -> None:
        """In a worker thread: the call's chunks until its end marker."""
        while (task := self.tasks.get()) is not None:
            if not self.cancelled:
                self._run_chunk(*task)

    def stop(self, n_threads: int) -> None:
        """No more chunks: each of the call's threads gets an end marker."""
        if self.pending:
            self.cancelled = True
        for _ in range(n_threads):
            self.tasks.put(None)

    def _run_chunk(self, start: int, items: list[Any]) -> None:
        func = self.func
        results: list[Any] = []
        append = results.append
        began = time.perf_counter()
        outcome: tuple[int, bool, Any] | None = None
        index = start
        for item in items:
            if self.cancelled:
                break
            try:
                append(func(item))
            except BaseException as exc:  # noqa: BLE001 - SystemExit too goes to the caller
                outcome = (start, False, (exc, index, item))
                break
            index += 1
        else:
            outcome = (start, True, results)
        ident = threading.get_ident()
        self.busy[ident] = self.busy.get(ident, 0.0) + time.perf_counter() - began  # before the caller hears
        if outcome is not None:
            self.done.put(outcome)


class _MapCall(_Lent):
    """One ``map``: its threads take chunk bounds in order and write results in place.

    The first failure in input order wins, as in a serial loop: once an item
    fails, chunks after it are skipped (and running ones stop at their next item),
    while chunks before it still run, since one of them may fail earlier.
    """

    def __init__(
        self,
        func: Callable[[Any], Any],
        items: Sequence[Any],
        bounds: list[tuple[int, int]],
        results: list[Any],
        offset: int,
    ) -> None:
        super().__init__()
        self.func, self.items, self.bounds, self.results, self.offset = func, items, bounds, results, offset
        self.lock = threading.Lock()
        self.next = 0
        self.finished = 0
        self.items_done = 0
        self.all_done = threading.Event()
        self.cancelled = False
        self.failure: tuple[int, BaseException] | None = None
        self.busy: dict[int, float] = {}
        if not bounds:
            self.all_done.set()

    def serve(self) -> None:
        """In a worker thread: chunks until none is left."""
        func, items, results, offset = self.func, self.items, self.results, self.offset
        ident = threading.get_ident()
        while not self.cancelled:
            with self.lock:
                if self.next >= len(self.bounds):
                    return
                begin, stop = self.bounds[self.next]
                self.next += 1
            began = time.perf_counter()
            index = begin
            while index < stop and not self.cancelled:
                failure = self.failure
                if failure is not None and index > failure[0]:
                    break  # an earlier item failed: this one's turn never comes
                try:
                    results[index - offset] = func(items[index])
                except BaseException as exc:  # noqa: BLE001 - SystemExit too goes to the caller
                    with self.lock:
                        if self.failure is None or index < self.failure[0]:
                            self.failure = (index, exc)
                    break
                index += 1
            with self.lock:
                self.busy[ident] = self.busy.get(ident, 0.0) + time.perf_counter() - began
                self.items_done += index - begin
                self.finished += 1
                if self.finished == len(self.bounds):
                    self.all_done.set()

    def stop(self, n_threads: int) -> None:
        """Unfinished chunks are dropped, running ones stop at their next item."""
        if not self.all_done.is_set():
            self.cancelled = True

    def unfinished(self) -> int:
        with self.lock:
            return len(self.bounds) - self.finished


def _timed_out(unfinished: int, spans: str = "") -> str:
    where = f" ({spans})" if spans else ""
    return (
        f"timed out with {unfinished} chunk(s) unfinished{where}; items already running on threads "
        'finish in the background (a Python thread cannot be stopped: use backend="process" for work '
        "that must be)"
    )


class _Worker:
    """One warm thread: serves the calls it is given, one at a time."""

    def __init__(self, pool: WarmThreads) -> None:
        self.pool = pool
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="autopar-thread", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        mark_thread_worker()  # a .map inside the function runs serially here
        while True:
            try:
                call = self.inbox.get(timeout=THREAD_IDLE_TIMEOUT_S)
            except queue.Empty:
                if self.pool.retire(self):
                    return
                continue  # taken for a call just as it timed out: its call is in the inbox
            if call is _STOP:
                return
            try:
                call.run(call.serve)
            finally:
                self.pool.give_back(self)
                call.returned.release()  # the caller may return: this thread is warm again
                del call  # an idle thread must not keep the last call's items and results alive


class WarmThreads:
    """The idle threads of this process, lent to calls and kept for the next ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False

    def lend(self, n: int, call: _Call | _MapCall) -> int:
        """Give ``call`` to ``n`` threads (idle ones first); returns how many it got.

        When a thread cannot be started, the call runs on the threads it has (at
        least one, or the error is raised); threads taken are never lost.
        """
        with self._lock:
            taken = [self._idle.pop() for _ in range(min(n, len(self._idle)))]
        taken = [worker for worker in taken if worker.thread.is_alive()]  # one killed mid-call serves none
        try:
            while len(taken) < n:
                taken.append(_Worker(self))
        except RuntimeError:  # "can't start new thread": go on with fewer
            if not taken:
                raise
            logger.warning("autopar: could only start %d of %d threads", len(taken), n)
        except BaseException:
            with self._lock:
                self._idle.extend(taken)
            raise
        for worker in taken:
            worker.inbox.put(call)
        return len(taken)

    def give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.inbox.put(_STOP)

    def retire(self, worker: _Worker) -> bool:
        """True when ``worker`` was idle and may end (not just lent to a call)."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False

    def size(self) -> int:
        """Threads idle now, ready for the next call."""
        with self._lock:
            return len(self._idle)

    def close(self, wait_s: float = EXIT_JOIN_S) -> None:
        """End the idle threads (at exit); threads still running an item are daemons."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.inbox.put(_STOP)
        deadline = time.monotonic() + wait_s
        for worker in idle:
            worker.thread.join(max(0.0, deadline - time.monotonic()))

    def forget(self) -> None:
        """In a child made by ``os.fork()``: the parent's threads do not exist here."""
        self._lock = threading.Lock()
        self._idle = []


_threads = WarmThreads()
atexit.register(_threads.close)
on_fork_in_child(_threads.forget)


def warm_threads() -> int:
    """Idle threads of this process a call could use without starting any."""
    return _threads.size()


@contextlib.contextmanager
def _native_share(n_jobs: int) -> Iterator[None]:
    """Native thread pools limited to a share of the CPUs while ``n_jobs`` threads run
    (each thread's BLAS using every core would oversubscribe them)."""
    from ..measuring import native_threads

    if native_threads() <= 1:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=max(1, usable_cpus() // n_jobs))
    except Exception:  # noqa: BLE001 - an odd native library must not stop the run
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            limits.restore_original_limits()


class ThreadBackend:
    """Runs chunks on threads in this process; exceptions name the failing item."""

    name = "thread"

    def warm_workers(self) -> int:
        """Idle threads ready for a call."""
        return warm_threads()

    def map(
        self,
        func: Sendable,
        items: Sequence[Any],
        *,
        start: int = 0,
        n_jobs: int = 2,
        chunksize: int = 1,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
        busy: dict[int, float] | None = None,
        skip: Sequence[int] = (),
    ) -> list[Any]:
        """Results of ``func`` on ``items[start:]`` in order (None at ``skip`` positions).

        The caller waits for the last chunk, waking every :data:`POLL_S` to report
        progress and check the deadline; the first failing item in input order is
        raised, with a note naming it.
        """
        total = len(items) - start
        if total <= 0:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        bounds = list(chunk_bounds(len(items), start, max(1, chunksize), skip))
        results: list[Any] = [None] * total
        call = _MapCall(_callable(func), items, bounds, results, start)
        reported = 0
        with self._lent(call, min(n_jobs, max(1, len(bounds)))):
            while not call.all_done.wait(POLL_S if deadline is None else min(POLL_S, _left(deadline))):
                if deadline is not None and time.monotonic() >= deadline:
                    raise TaskTimeoutError(_timed_out(call.unfinished()))
                reported = _report(progress, call.items_done, reported)
            _report(progress, call.items_done, reported)
        if busy is not None:
            busy.update(call.busy)
        if call.failure is not None:
            index, exc = call.failure
            add_item_note(exc, index, items[index])
            raise exc
        return results

    def imap(
        self,
        func: Sendable,
        source: Iterator[Any],
        *,
        offset: int,
        n_jobs: int,
        chunksize: int,
        ordered: bool,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Any]:
        """Stream results, reading ``source`` only a few chunks ahead of the threads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        call = _Call(_callable(func), deadline)
        with self._lent(call, n_jobs):
            yield from stream(
                call,
                call.submit,
                stream_chunks(source, offset, chunksize),
                in_flight=n_jobs * CHUNKS_PER_THREAD,
                held=n_jobs * (CHUNKS_PER_THREAD + STREAM_BUFFER_PER_THREAD),
                ordered=ordered,
                progress=progress,
            )

    @staticmethod
    @contextlib.contextmanager
    def _lent(call: _Call | _MapCall, n_jobs: int) -> Iterator[None]:
        """Threads serve ``call`` while the block runs. However it ends, unfinished
        chunks are dropped and running ones stop at their next item; when it ends
        well, the threads are back in the pool before the caller goes on (the next
        call finds them warm)."""
        n_jobs = max(1, n_jobs)
        with _native_share(n_jobs):
            lent = 0
            clean = False
            try:
                lent = _threads.lend(n_jobs, call)
                yield
                clean = True
            finally:
                call.stop(lent)
                if clean:
                    for _ in range(lent):
                        call.returned.acquire(timeout=RETURN_WAIT_S)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _report(progress: Callable[[int], None] | None, done: int, reported: int) -> int:
    """Tell ``progress`` about the items finished since the last report."""
    if progress is not None and done > reported:
        progress(done - reported)
    return done
