"""The thread backend: a serial loop's results, errors that name their item, timeouts
and Ctrl-C that stop handing out work, warm threads kept, nothing left at exit.

No assertion reads the clock. Items that must still be running when something
happens block on an Event the test sets afterwards, and "afterwards" is waited
for as an event too (the call's threads back in their pool), never as a delay.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopar import TaskTimeoutError, auto_parallel
from autopar.backends import SerialBackend, ThreadBackend
from autopar.backends import thread as thread_backend
from autopar.backends.thread import CHUNKS_PER_THREAD, STREAM_BUFFER_PER_THREAD, WarmThreads, warm_threads
from autopar.run import Target
from autopar.system import in_worker
from tests import thread_helpers
from tests.thread_helpers import Boom

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
#: How long a test waits for something that must happen (threads handing
#: themselves back): a bound on a hang, never a measurement.
PATIENCE_S = 20.0


def _triple(x: int) -> int:
    return 3 * x + 1


def _serial(func: Callable[[Any], Any], items: list[Any], start: int = 0, skip: list[int] | None = None) -> list[Any]:
    """What the serial loop gives: the reference every thread result is held to."""
    return SerialBackend().map(func, items, start=start, skip=skip or ())


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {PATIENCE_S:g} s for {what}"
        time.sleep(0.01)


@pytest.fixture
def own_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[WarmThreads]:
    """A pool of the test's own in place of the process's: the threads it counts
    are the ones its calls started, whatever other tests left warm."""
    pool = WarmThreads()
    monkeypatch.setattr(thread_backend, "_threads", pool)
    yield pool
    pool.close()


class Blocked:
    """A function whose items wait for :attr:`release`, recording which ones started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.first = threading.Event()
        self.started: list[int] = []

    def __call__(self, x: int) -> int:
        self.started.append(x)
        self.first.set()
        self.release.wait(PATIENCE_S)
        return x


def _run(kind: str, func: Callable[[Any], Any], items: list[Any], **options: Any) -> list[Any]:
    """``ThreadBackend().map`` or an ordered ``imap`` drained into a list."""
    if kind == "map":
        return ThreadBackend().map(func, items, **options)
    return list(ThreadBackend().imap(func, iter(items), offset=0, ordered=True, **options))


# -- results -------------------------------------------------------------------------


@pytest.mark.parametrize(("n_jobs", "chunksize"), [(1, 1), (2, 1), (2, 3), (3, 7), (4, 100)])
def test_map_equals_the_serial_loop(n_jobs: int, chunksize: int) -> None:
    items = list(range(57))
    assert ThreadBackend().map(_triple, items, n_jobs=n_jobs, chunksize=chunksize) == [_triple(x) for x in items]


@pytest.mark.parametrize(
    ("start", "skip"),
    [(5, []), (0, [0]), (0, [3, 4, 20]), (7, [2, 7, 8, 29]), (10, [39])],
    ids=["start", "first-skipped", "skips", "start-and-skips", "last-skipped"],
)
def test_map_from_start_leaves_none_at_skipped_positions(start: int, skip: list[int]) -> None:
    """What the run path hands over after sampling: items before ``start`` and at
    ``skip`` were evaluated already, so their places stay None, as serially."""
    items = list(range(40))
    expected = [None if i in skip else _triple(x) for i, x in enumerate(items)][start:]
    assert _serial(_triple, items, start, skip) == expected
    for n_jobs, chunksize in [(2, 1), (3, 4)]:
        got = ThreadBackend().map(_triple, items, start=start, skip=skip, n_jobs=n_jobs, chunksize=chunksize)
        assert got == expected


def test_nothing_to_run_gives_an_empty_list() -> None:
    backend = ThreadBackend()
    assert backend.map(_triple, [], n_jobs=3) == []
    assert backend.map(_triple, range(0), n_jobs=3) == []
    assert backend.map(_triple, [1, 2, 3], start=3, n_jobs=3) == [], "every item before start"
    assert list(backend.imap(_triple, iter([]), offset=0, n_jobs=3, chunksize=2, ordered=True)) == []


def test_more_threads_than_items() -> None:
    assert ThreadBackend().map(_triple, [4, 5, 6], n_jobs=8, chunksize=1) == [13, 16, 19]
    stream = ThreadBackend().imap(_triple, iter([4, 5]), offset=0, n_jobs=8, chunksize=3, ordered=False)
    assert sorted(stream) == [13, 16]


@given(
    st.integers(min_value=0, max_value=40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(min_value=0, max_value=n),
            st.lists(st.integers(min_value=0, max_value=max(0, n - 1)), max_size=5, unique=True).map(sorted),
        )
    ),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=9),
)
@settings(max_examples=50, deadline=None)
def test_map_is_the_serial_loop_for_any_cut(case: tuple[int, int, list[int]], n_jobs: int, chunksize: int) -> None:
    n_items, start, skip = case
    items = list(range(n_items))
    got = ThreadBackend().map(_triple, items, start=start, skip=skip, n_jobs=n_jobs, chunksize=chunksize)
    assert got == _serial(_triple, items, start, skip)


@given(
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=9),
    st.booleans(),
)
@settings(max_examples=30, deadline=None)
def test_imap_is_the_serial_stream_for_any_cut(
    n_items: int, offset: int, n_jobs: int, chunksize: int, ordered: bool
) -> None:
    source = (x for x in range(n_items))
    got = list(
        ThreadBackend().imap(_triple, source, offset=offset, n_jobs=n_jobs, chunksize=chunksize, ordered=ordered)
    )
    expected = [_triple(x) for x in range(n_items)]
    assert got == expected if ordered else sorted(got) == expected


# -- streams -------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 4])
def test_imap_ordered_keeps_input_order_and_unordered_the_same_results(chunksize: int) -> None:
    expected = [_triple(x) for x in range(101)]
    ordered = ThreadBackend().imap(
        _triple, (x for x in range(101)), offset=0, n_jobs=3, chunksize=chunksize, ordered=True
    )
    assert list(ordered) == expected
    unordered = ThreadBackend().imap(
        _triple, (x for x in range(101)), offset=0, n_jobs=3, chunksize=chunksize, ordered=False
    )
    assert sorted(unordered) == expected


def test_ordered_imap_waits_for_a_slow_first_item() -> None:
    """Item 0 finishes only after item 5 started on the other thread: its result
    still comes first."""
    fifth = threading.Event()

    def func(x: int) -> int:
        if x == 0:
            assert fifth.wait(PATIENCE_S), "item 5 never started while item 0 waited"
        if x == 5:
            fifth.set()
        return x

    stream = ThreadBackend().imap(func, iter(range(12)), offset=0, n_jobs=2, chunksize=1, ordered=True)
    assert list(stream) == list(range(12))


def test_unordered_imap_yields_results_as_they_finish() -> None:
    """Item 0 is held until every other result reached the caller: an unordered
    stream must not wait for it."""
    gate = threading.Event()

    def func(x: int) -> int:
        if x == 0:
            gate.wait(PATIENCE_S)
        return x

    got = []
    for result in ThreadBackend().imap(func, iter(range(10)), offset=0, n_jobs=2, chunksize=1, ordered=False):
        got.append(result)
        if len(got) == 9:
            gate.set()
    assert got[-1] == 0, f"item 0 was held back, yet came before the others: {got}"
    assert sorted(got) == list(range(10))


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_imap_reads_an_endless_stream_only_a_few_chunks_ahead(own_threads: WarmThreads, ordered: bool) -> None:
    read = 0

    def endless() -> Iterator[int]:
        nonlocal read
        for x in itertools.count():
            read += 1  # only the caller's thread reads the source
            yield x

    n_jobs, chunksize, taken = 2, 3, 5
    stream = ThreadBackend().imap(_triple, endless(), offset=0, n_jobs=n_jobs, chunksize=chunksize, ordered=ordered)
    assert isinstance(stream, Generator)
    first = [next(stream) for _ in range(taken)]
    stream.close()
    _wait_until(lambda: own_threads.size() == n_jobs, "the closed stream's threads back in their pool")
    if ordered:
        assert first == [_triple(x) for x in range(taken)]
    else:
        assert len(set(first)) == taken
    # At most the chunks in flight and held for order, beyond those taken.
    held = n_jobs * (CHUNKS_PER_THREAD + STREAM_BUFFER_PER_THREAD)
    assert read <= taken + (held + 1) * chunksize, f"read {read} items of an endless stream to give {taken}"


# -- progress ------------------------------------------------------------------------


def test_progress_counts_sum_to_the_items() -> None:
    items = list(range(45))
    counts: list[int] = []
    ThreadBackend().map(_triple, items, n_jobs=3, chunksize=4, progress=counts.append)
    assert sum(counts) == len(items)
    assert all(count > 0 for count in counts), counts  # map reports finished items in batches

    counts.clear()
    stream = ThreadBackend().imap(
        _triple, iter(items), offset=0, n_jobs=3, chunksize=4, ordered=False, progress=counts.append
    )
    assert len(list(stream)) == len(items)
    assert sum(counts) == len(items)


def test_progress_counts_only_the_items_run_as_serially() -> None:
    """Items before ``start`` and at ``skip`` were counted by the sampler already."""
    items = list(range(40))
    start, skip = 3, [5, 9, 39]
    serial: list[int] = []
    SerialBackend().map(_triple, items, start=start, skip=skip, progress=serial.append)
    threaded: list[int] = []
    ThreadBackend().map(_triple, items, start=start, skip=skip, n_jobs=2, chunksize=3, progress=threaded.append)
    assert sum(threaded) == sum(serial) == len(items) - start - len(skip)


# -- errors --------------------------------------------------------------------------


def _fails_at_7(x: str) -> str:
    if x == "s7":
        raise Boom(f"bad {x}")
    return x.upper()


def _item_notes(exc: BaseException) -> list[str]:
    return [note for note in getattr(exc, "__notes__", []) if "item" in note]


@pytest.mark.parametrize(("chunksize", "start"), [(1, 0), (3, 0), (4, 2), (20, 7)])
def test_map_raises_the_functions_exception_naming_the_item(chunksize: int, start: int) -> None:
    items = [f"s{i}" for i in range(20)]
    backend = ThreadBackend()
    with pytest.raises(Boom, match="bad s7") as info:
        backend.map(_fails_at_7, items, start=start, n_jobs=2, chunksize=chunksize)
    assert _item_notes(info.value) == ["autopar: raised while processing item 7: 's7'"]
    # The same object and its threads serve the next call.
    assert backend.map(_triple, list(range(30)), n_jobs=2, chunksize=chunksize) == [_triple(x) for x in range(30)]


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_imap_raises_the_functions_exception_naming_the_item(ordered: bool) -> None:
    items = [f"s{i}" for i in range(20)]
    backend = ThreadBackend()
    stream = backend.imap(_fails_at_7, iter(items[4:]), offset=4, n_jobs=2, chunksize=2, ordered=ordered)
    with pytest.raises(Boom, match="bad s7") as info:
        list(stream)
    assert _item_notes(info.value) == ["autopar: raised while processing item 7: 's7'"], "numbered from offset"
    again = backend.imap(_triple, iter(range(30)), offset=0, n_jobs=2, chunksize=2, ordered=ordered)
    assert sorted(again) == [_triple(x) for x in range(30)]


def test_system_exit_in_an_item_reaches_the_caller_and_spares_the_thread(own_threads: WarmThreads) -> None:
    """A serial loop would raise it: so does the thread, which goes on serving."""

    def exits(x: int) -> int:
        if x == 4:
            sys.exit(3)
        return x

    with pytest.raises(SystemExit) as info:
        ThreadBackend().map(exits, list(range(8)), n_jobs=1, chunksize=1)
    assert info.value.code == 3
    assert _item_notes(info.value) == ["autopar: raised while processing item 4: 4"]
    _wait_until(lambda: own_threads.size() == 1, "the thread back in its pool")
    assert ThreadBackend().map(exits, [1, 2], n_jobs=1, chunksize=1) == [1, 2]


# -- timeout -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["map", "imap"])
@pytest.mark.parametrize("chunksize", [1, 5])
def test_a_timeout_raises_and_no_queued_item_starts(own_threads: WarmThreads, kind: str, chunksize: int) -> None:
    """With 2 threads and 4 chunks in flight, the 2 queued chunks are dropped and a
    running chunk stops at its next item: at most the 2 blocked items ever ran."""
    blocked = Blocked()
    try:
        with pytest.raises(TaskTimeoutError) as info:
            _run(kind, blocked, list(range(50)), n_jobs=2, chunksize=chunksize, timeout=0.2)
    finally:
        blocked.release.set()
    assert isinstance(info.value, TimeoutError)
    message = str(info.value)
    assert "timed out with" in message
    assert "items already running on threads finish in the background" in message
    assert "a Python thread cannot be stopped" in message
    assert 'backend="process"' in message
    _wait_until(lambda: own_threads.size() == 2, "the call's threads back in their pool")
    assert len(blocked.started) <= 2, f"items started after the timeout: {sorted(blocked.started)}"
    # The threads that ran the timed-out items serve the next call.
    assert ThreadBackend().map(_triple, list(range(10)), n_jobs=2, chunksize=1) == [_triple(x) for x in range(10)]


def test_a_timeout_through_the_public_api_uses_the_threads(own_threads: WarmThreads) -> None:
    blocked = Blocked()

    def blocks(x: int) -> int:
        return blocked(x)

    func = auto_parallel(blocks)
    try:
        with pytest.raises(TaskTimeoutError, match="cannot be stopped"):
            func.map(list(range(30)), backend="thread", n_jobs=2, chunksize=1, timeout=0.2)
    finally:
        blocked.release.set()
    _wait_until(lambda: own_threads.size() == 2, "the call's threads back in their pool")
    assert len(blocked.started) <= 2


# -- Ctrl-C --------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["map", "imap"])
def test_ctrl_c_while_waiting_stops_the_call(own_threads: WarmThreads, kind: str) -> None:
    """SIGINT reaches the caller while its items block; the rest never start.

    The signal is sent once an item has started (not after a delay): by then the
    call has its threads and waits for results.
    """
    blocked = Blocked()

    def interrupt() -> None:
        blocked.first.wait(PATIENCE_S)
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter = threading.Thread(target=interrupt)
    interrupter.start()  # it waits for the first item: the signal comes inside the block
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(kind, blocked, list(range(50)), n_jobs=2, chunksize=1)
    finally:
        blocked.release.set()
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    _wait_until(lambda: own_threads.size() == 2, "the call's threads back in their pool")
    assert len(blocked.started) <= 2, f"items started after Ctrl-C: {sorted(blocked.started)}"


# -- nested maps and in_worker() -------------------------------------------------------


def test_a_map_inside_a_thread_worker_runs_serially_on_that_thread() -> None:
    assert not in_worker()
    results = thread_helpers.outer.map(list(range(6)), backend="thread", n_jobs=2, chunksize=1)
    me = threading.get_ident()
    for x, (inside, ident, nested, in_processes) in enumerate(results):
        assert inside, "in_worker() is True on autopar's threads"
        assert ident != me
        assert nested == [(y, ident, True) for y in range(x, x + 4)], "planned inner map: serial, right here"
        assert in_processes == [(y, os.getpid(), ident) for y in range(x, x + 4)], "explicit workers: still here"
    assert not in_worker(), "the caller's thread is no worker"


def test_in_worker_is_true_only_on_autopar_threads() -> None:
    flags = ThreadBackend().map(lambda _: in_worker(), list(range(8)), n_jobs=2, chunksize=1)
    assert flags == [True] * 8
    assert not in_worker()
    elsewhere: list[bool] = []
    other = threading.Thread(target=lambda: elsewhere.append(in_worker()))
    other.start()
    other.join()
    assert elsewhere == [False], "a thread of the user's own is no worker"


# -- warm threads ---------------------------------------------------------------------


def test_warm_threads_are_kept_and_reused(own_threads: WarmThreads) -> None:
    """Each call's 3 items meet at a barrier: all 3 threads ran one, and the second
    call's are the first's, none started anew."""

    def meet(barrier: threading.Barrier) -> Callable[[int], tuple[int, str, bool]]:
        def func(x: int) -> tuple[int, str, bool]:
            barrier.wait(PATIENCE_S)
            here = threading.current_thread()
            return threading.get_ident(), here.name, here.daemon

        return func

    assert warm_threads() == 0
    first = ThreadBackend().map(meet(threading.Barrier(3)), [0, 1, 2], n_jobs=3, chunksize=1)
    assert {(name, daemon) for _, name, daemon in first} == {("autopar-thread", True)}
    idents = {ident for ident, _, _ in first}
    assert len(idents) == 3
    assert threading.get_ident() not in idents
    _wait_until(lambda: warm_threads() >= 3, "the threads back in their pool")
    assert warm_threads() == 3
    second = ThreadBackend().map(meet(threading.Barrier(3)), [0, 1, 2], n_jobs=3, chunksize=1)
    assert {ident for ident, _, _ in second} == idents, "the warm threads ran the second call"
    _wait_until(lambda: warm_threads() >= 3, "the threads back in their pool")
    assert warm_threads() == 3, "no thread was started for the second call"


# -- the public API --------------------------------------------------------------------


def test_target_thread_plans_threads_only() -> None:
    thread = Target.named("thread", "fork")
    assert thread.executors == ("thread",)
    assert thread.explicit == "thread"
    assert isinstance(thread.backend_for("thread"), ThreadBackend)
    auto = Target.named("auto", "fork")
    assert auto.executors == ("thread", "process")
    assert auto.explicit == "process", "explicit n_jobs without a plan: processes, as before threads"


def test_map_backend_thread_runs_here_on_worker_threads() -> None:
    items = list(range(40))
    squares = [x * x for x in items]
    planned = thread_helpers.where.map(items, backend="thread")
    assert [value for value, _, _, _ in planned] == squares
    assert {pid for _, pid, _, _ in planned} == {os.getpid()}
    fixed = thread_helpers.where.map(items, backend="thread", n_jobs=3, chunksize=2)
    assert [value for value, _, _, _ in fixed] == squares
    assert {pid for _, pid, _, _ in fixed} == {os.getpid()}, "threads of this process"
    assert threading.get_ident() not in {ident for _, _, ident, _ in fixed}, "none on the caller's thread"
    assert {name for _, _, _, name in fixed} == {"autopar-thread"}


def test_map_backend_process_never_runs_on_threads_here() -> None:
    results = thread_helpers.where.map(list(range(8)), backend="process", n_jobs=2, chunksize=1)
    assert [value for value, _, _, _ in results] == [x * x for x in range(8)]
    assert os.getpid() not in {pid for _, pid, _, _ in results}


def test_imap_backend_thread() -> None:
    items = list(range(40))
    squares = [x * x for x in items]
    planned = list(thread_helpers.where.imap(iter(items), backend="thread", n_jobs=2))
    assert [value for value, _, _, _ in planned] == squares
    assert {pid for _, pid, _, _ in planned} == {os.getpid()}
    fixed = list(thread_helpers.where.imap(iter(items), backend="thread", n_jobs=2, chunksize=1, ordered=False))
    assert sorted(value for value, _, _, _ in fixed) == squares
    assert {pid for _, pid, _, _ in fixed} == {os.getpid()}
    assert threading.get_ident() not in {ident for _, _, ident, _ in fixed}


def _check_returned(results: list[Any], items: list[int]) -> None:
    assert len(results) == len(items)
    for x, result in zip(items, results, strict=True):
        if thread_helpers.fails(x):
            assert isinstance(result, Boom), (x, result)
            assert str(result) == f"bad item {x}"
            assert f"autopar: raised while processing item {x}: {x}" in getattr(result, "__notes__", [])
        else:
            assert result == x + 100


def test_on_error_return_puts_exceptions_in_their_places_on_threads() -> None:
    items = list(range(23))
    flaky = thread_helpers.flaky
    _check_returned(flaky.map(items, backend="thread", n_jobs=2, chunksize=3, on_error="return"), items)
    _check_returned(flaky.map(items, backend="thread", on_error="return"), items)
    ordered = list(flaky.imap(iter(items), backend="thread", n_jobs=2, chunksize=3, on_error="return"))
    _check_returned(ordered, items)
    unordered = flaky.imap(iter(items), backend="thread", n_jobs=2, chunksize=3, on_error="return", ordered=False)
    by_value = sorted(unordered, key=lambda r: r - 100 if isinstance(r, int) else int(str(r).split()[-1]))
    _check_returned(by_value, items)
    with pytest.raises(Boom) as info:
        flaky.map(items, backend="thread", n_jobs=2, chunksize=3)
    assert len(_item_notes(info.value)) == 1


# -- process exit and fork -------------------------------------------------------------


def _script(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter; the 30 s timeout is the assertion that it ends."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_program_exits_after_a_thread_map() -> None:
    done = _script(
        """
        from autopar import auto_parallel
        from autopar.backends import ThreadBackend

        def double(x):
            return 2 * x

        assert ThreadBackend().map(double, list(range(50)), n_jobs=4, chunksize=2) == [2 * x for x in range(50)]
        results = auto_parallel(double).map(list(range(50)), backend="thread", n_jobs=4, chunksize=3)
        assert results == [2 * x for x in range(50)]
        print("ok")
        """
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_a_program_exits_while_a_timed_out_item_still_runs() -> None:
    """The item sleeps an hour on a daemon thread: the program does not wait for it.

    The timeout grows until an item was running when it struck (on a loaded machine
    the threads may not have started one within the first).
    """
    done = _script(
        """
        import threading, time
        from autopar import TaskTimeoutError
        from autopar.backends import ThreadBackend

        running = threading.Event()

        def stuck(x):
            running.set()
            time.sleep(3600)

        for timeout in (0.2, 0.5, 1.0, 2.0, 4.0):
            try:
                ThreadBackend().map(stuck, [1, 2, 3], n_jobs=2, chunksize=1, timeout=timeout)
            except TaskTimeoutError:
                if running.is_set():
                    break
        print("running" if running.is_set() else "never started")
        """
    )
    assert (done.returncode, done.stdout.strip()) == (0, "running"), done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_a_thread_map_on_threads_of_its_own() -> None:
    """The parent's warm threads do not exist in the child: it must not lend them."""
    ThreadBackend().map(_triple, list(range(20)), n_jobs=2, chunksize=1)
    _wait_until(lambda: warm_threads() >= 2, "the parent's threads back in their pool")
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 3
        try:
            if warm_threads() != 0:
                code = 1
            else:
                got = ThreadBackend().map(_triple, list(range(20)), n_jobs=2, chunksize=1, timeout=PATIENCE_S)
                code = 0 if got == [_triple(x) for x in range(20)] else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    status = None
    while status is None and time.monotonic() < deadline:
        pid, raw = os.waitpid(child, os.WNOHANG)
        status = raw if pid else None
        time.sleep(0.02)
    if status is None:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked child hung on its parent's threads")
    code = os.waitstatus_to_exitcode(status)
    assert code == 0, {1: "the child saw its parent's warm threads", 2: "wrong results", 3: "the map raised"}.get(code)
    assert warm_threads() >= 2, "the parent's threads are untouched"
