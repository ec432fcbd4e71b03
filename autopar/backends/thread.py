"""The thread backend: chunks on warm threads in this process.

For work that releases the GIL (native code, compression, hashing, waiting on
disks and networks) threads beat worker processes: nothing starts, nothing is
pickled, nothing is copied. The planner chooses them only when the sample measured
that the work scales on them (:mod:`autopar.thread_model`).

A call takes ``n_jobs`` idle threads (starting any that are missing) for itself,
drives them through the shared chunk pipeline (:mod:`.chunks`), and gives them
back; threads idle for :data:`THREAD_IDLE_TIMEOUT_S` end. A running Python thread
cannot be killed: a timeout, Ctrl-C or a failure stops handing out chunks and tells
running ones to stop at their next item, but an item already running finishes in
the background. Use ``backend="process"`` for work that must be stoppable.
"""

from __future__ import annotations

import atexit
import contextlib
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
from .chunks import chunk_slices, collect, span, stream, stream_chunks
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

_STOP = object()


class _Call:
    """One call's chunks on its threads: the :class:`~.base.Run` the drivers use."""

    def __init__(self, func: Callable[[Any], Any], deadline: float | None) -> None:
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
            msg = (
                f"timed out with {len(self.pending)} chunk(s) unfinished ({spans}); items already "
                "running on threads finish in the background (a Python thread cannot be stopped: "
                'use backend="process" for work that must be)'
            )
            raise TaskTimeoutError(msg)

    def run_chunk(self, start: int, items: list[Any]) -> None:
        """In a worker thread: the chunk's items, stopping early once the call is cancelled."""
        func = self.func
        results: list[Any] = []
        append = results.append
        began = time.perf_counter()
        index = start
        try:
            for item in items:
                if self.cancelled:
                    return
                try:
                    append(func(item))
                except BaseException as exc:  # noqa: BLE001 - SystemExit too goes to the caller
                    self.done.put((start, False, (exc, index, item)))
                    return
                index += 1
            self.done.put((start, True, results))
        finally:
            ident = threading.get_ident()
            self.busy[ident] = self.busy.get(ident, 0.0) + time.perf_counter() - began


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
            self._serve(call)
            self.pool.give_back(self)

    @staticmethod
    def _serve(call: _Call) -> None:
        while (task := call.tasks.get()) is not None:
            if not call.cancelled:
                call.run_chunk(*task)


class WarmThreads:
    """The idle threads of this process, lent to calls and kept for the next ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False

    def lend(self, n: int, call: _Call) -> int:
        """Give ``call`` to ``n`` threads (idle ones first); returns how many were new."""
        with self._lock:
            taken = [self._idle.pop() for _ in range(min(n, len(self._idle)))]
        new = n - len(taken)
        taken += [_Worker(self) for _ in range(new)]
        for worker in taken:
            worker.inbox.put(call)
        return new

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
        """Results of ``func`` on ``items[start:]`` in order (None at ``skip`` positions)."""
        total = len(items) - start
        if total <= 0:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        call = _Call(_callable(func), deadline)
        chunks = chunk_slices(items, start, chunksize, skip)
        with self._lent(call, n_jobs):
            results = collect(
                call,
                call.submit,
                chunks,
                start=start,
                total=total,
                in_flight=n_jobs * CHUNKS_PER_THREAD,
                bytes_in_flight=1,  # nothing is pickled: only the chunk count bounds it
                progress=progress,
                before_send=call.check_deadline,
            )
        if busy is not None:
            busy.update(call.busy)
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
    def _lent(call: _Call, n_jobs: int) -> Iterator[None]:
        """``n_jobs`` threads serve ``call`` while the block runs; however it ends,
        queued chunks are dropped and running ones stop at their next item."""
        n_jobs = max(1, n_jobs)
        with _native_share(n_jobs):
            _threads.lend(n_jobs, call)
            try:
                yield
            finally:
                if call.pending:
                    call.cancelled = True
                for _ in range(n_jobs):
                    call.tasks.put(None)
