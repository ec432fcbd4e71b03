"""``on_error="return"``: exceptions take their items' places in the results.

Every backend and start method, ``map``/``starmap``/``imap``/``istarmap``, ordered and
unordered; ``BaseException``, crashed workers and the default still raise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from autopar import RemoteError, RemoteTraceback, WorkerCrashedError, auto_parallel
from autopar.on_error import Raised
from tests import on_error_helpers as helpers
from tests.conftest import worker_children

pytestmark = pytest.mark.timeout(120)

N = 40
ITEMS = list(range(N))
FAILING = [x for x in ITEMS if helpers.fails(x)]  # 3, 10, 17, 24, 31, 38
WORKERS = {"n_jobs": 2, "chunksize": 3}


def note(index: int, item: object) -> str:
    return f"autopar: raised while processing item {index}: {item!r}"


def check_results(results: list[Any], items: list[Any], *, star: bool = False) -> None:
    """``results`` are ``[f(x) or its exception for x in items]``: type, message and the
    note naming each failing item's index."""
    assert len(results) == len(items)
    for index, (item, result) in enumerate(zip(items, results, strict=True)):
        x = item[0] if star else item
        if not helpers.fails(x):
            assert result == (sum(item) if star else 2 * x), f"item {index}"
            continue
        assert type(result) is helpers.Bad, f"item {index}: {result!r}"
        message = f"bad pair {item[0]}, {item[1]}" if star else f"bad item {x}"
        assert result.args == (message, x)
        assert note(index, item) in result.__notes__


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "autopar" and r.levelno == logging.WARNING]


def count_message(name: str, failed: int, total: int) -> str:
    return f"autopar: {name}: {failed} of {total} items raised; their exceptions are in the results"


@pytest.fixture(autouse=True)
def warnings_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="autopar")


# -- in this process ------------------------------------------------------------------------


def test_default_still_raises_naming_the_item() -> None:
    with pytest.raises(helpers.Bad, match="bad item 3") as info:
        helpers.flaky.map(ITEMS)
    assert note(3, 3) in info.value.__notes__


def test_map_returns_exceptions_in_place_and_logs_the_count(caplog: pytest.LogCaptureFixture) -> None:
    results = helpers.flaky.map(ITEMS, on_error="return")
    check_results(results, ITEMS)
    assert warnings_of(caplog) == [count_message("flaky", len(FAILING), N)]
    assert results[3].__traceback__ is not None, "raised here: the exception keeps its own traceback"


def test_a_call_with_no_failure_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert helpers.flaky.map([0, 1, 2], on_error="return") == [0, 2, 4]
    assert warnings_of(caplog) == []


def test_decorator_option_and_per_call_override(caplog: pytest.LogCaptureFixture) -> None:
    assert helpers.flaky_returning.cache_parameters()["on_error"] == "return"
    check_results(helpers.flaky_returning.map(ITEMS, n_jobs=1), ITEMS)
    assert warnings_of(caplog) == [count_message("flaky_returning", len(FAILING), N)]
    with pytest.raises(helpers.Bad, match="bad item 3"):
        helpers.flaky_returning.map(ITEMS, on_error="raise", n_jobs=1)
    with pytest.raises(helpers.Bad, match="bad item 3"):
        list(helpers.flaky_returning.imap(ITEMS, on_error="raise", n_jobs=1))


def test_returned_exception_values_are_not_failures(caplog: pytest.LogCaptureFixture) -> None:
    results = helpers.gives_exceptions.map(range(6), on_error="return")
    assert [type(r) for r in results] == [ValueError, int] * 3
    assert [str(r) for r in results[::2]] == ["value 0", "value 2", "value 4"]
    assert all(not getattr(r, "__notes__", None) for r in results)
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("value", ["ignore", "RETURN", 1, True])
def test_bad_values_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=r"on_error must be 'raise' or 'return'"):
        auto_parallel(on_error=value)(helpers.expected)
    with pytest.raises(ValueError, match=r"on_error must be 'raise' or 'return', or None for the decorator's"):
        helpers.flaky.map(ITEMS, on_error=value)
    with pytest.raises(ValueError, match="on_error must be"):
        helpers.flaky.imap(ITEMS, on_error=value)
    with pytest.raises(ValueError, match="on_error must be"):
        helpers.flaky_add.starmap([(1, 2)], on_error=value)
    with pytest.raises(ValueError, match="on_error must be"):
        helpers.flaky_add.istarmap([(1, 2)], on_error=value)


def test_starmap_and_several_iterables(caplog: pytest.LogCaptureFixture) -> None:
    pairs = [(a, 100 + a) for a in ITEMS]
    check_results(helpers.flaky_add.starmap(pairs, on_error="return"), pairs, star=True)
    check_results(helpers.flaky_add.map(ITEMS, [b for _, b in pairs], on_error="return"), pairs, star=True)
    assert warnings_of(caplog) == [count_message("flaky_add", len(FAILING), N)] * 2


def test_guarded_plans_are_their_own() -> None:
    plain, guarded = helpers.flaky.call(), helpers.flaky.call(on_error="return")
    indexed = helpers.flaky.call(on_error="return", indexed=True)
    assert len({plain.digest, guarded.digest, indexed.digest}) == 3
    assert guarded.name == plain.name
    assert guarded.digest != helpers.flaky_add.call(star=True, on_error="return").digest
    assert isinstance(guarded.func(3), Raised), "the guarded function returns a marker"
    assert guarded.func(2) == 4


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_in_this_process(ordered: bool, caplog: pytest.LogCaptureFixture) -> None:
    results = list(helpers.flaky.imap(iter(ITEMS), ordered=ordered, on_error="return", backend="serial"))
    check_results(results, ITEMS)
    assert warnings_of(caplog) == [count_message("flaky", len(FAILING), N)]


def test_a_stream_closed_early_logs_what_it_saw(caplog: pytest.LogCaptureFixture) -> None:
    stream = helpers.flaky.imap(iter(ITEMS), on_error="return", n_jobs=1)
    seen = [next(stream) for _ in range(12)]
    stream.close()  # type: ignore[attr-defined]
    check_results(seen, ITEMS[:12])
    assert warnings_of(caplog) == [count_message("flaky", 2, 12)]


def test_a_method_with_its_instance(caplog: pytest.LogCaptureFixture) -> None:
    model = helpers.Model(7)
    results = model.predict.map(ITEMS, on_error="return", **WORKERS)
    assert [r for r in results if not isinstance(r, Exception)] == [7 * x for x in ITEMS if x % 5]
    failed = [index for index, r in enumerate(results) if isinstance(r, ZeroDivisionError)]
    assert failed == list(range(0, N, 5))
    assert note(5, 5) in results[5].__notes__
    assert warnings_of(caplog) == [count_message("Model.predict", 8, N)]


# -- on workers, under every start method ---------------------------------------------------


def test_map_on_workers(start_method: str, caplog: pytest.LogCaptureFixture) -> None:
    results = helpers.flaky.map(ITEMS, on_error="return", **WORKERS)
    check_results(results, ITEMS)
    assert isinstance(results[3].__cause__, RemoteTraceback)
    assert "bad item 3" in str(results[3].__cause__), "the worker's traceback text rides along"
    assert warnings_of(caplog) == [count_message("flaky", len(FAILING), N)]


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_on_workers(start_method: str, ordered: bool, caplog: pytest.LogCaptureFixture) -> None:
    results = list(helpers.flaky.imap(iter(ITEMS), ordered=ordered, on_error="return", **WORKERS))
    if ordered:
        check_results(results, ITEMS)
    else:
        assert sorted(r for r in results if isinstance(r, int)) == [2 * x for x in ITEMS if not helpers.fails(x)]
        failed = {r.args[1]: r for r in results if isinstance(r, Exception)}
        assert sorted(failed) == FAILING
        for x, exc in failed.items():
            assert type(exc) is helpers.Bad
            assert note(x, x) in exc.__notes__, "an unordered result still names its item's index"
    assert warnings_of(caplog) == [count_message("flaky", len(FAILING), N)]


@pytest.mark.parametrize("ordered", [True, False])
def test_starmap_and_istarmap_on_workers(start_method: str, ordered: bool, caplog: pytest.LogCaptureFixture) -> None:
    pairs = [(a, 100 + a) for a in ITEMS]
    check_results(helpers.flaky_add.starmap(pairs, on_error="return", **WORKERS), pairs, star=True)
    streamed = list(helpers.flaky_add.istarmap(iter(pairs), ordered=ordered, on_error="return", **WORKERS))
    if ordered:
        check_results(streamed, pairs, star=True)
    else:
        failed = sorted((r.args[1], r.__notes__[-1]) for r in streamed if isinstance(r, Exception))
        assert failed == [(a, note(a, (a, 100 + a))) for a in FAILING]
    assert warnings_of(caplog) == [count_message("flaky_add", len(FAILING), N)] * 2


def test_planned_map_returns_exceptions_too(caplog: pytest.LogCaptureFixture) -> None:
    """Items probed and sampled here and those sent to workers alike."""
    items = list(range(400))
    results = helpers.flaky.map(items, on_error="return")
    check_results(results, items)
    failed = sum(helpers.fails(x) for x in items)
    assert warnings_of(caplog) == [count_message("flaky", failed, len(items))]


def test_unpicklable_exception_arrives_as_remote_error(caplog: pytest.LogCaptureFixture) -> None:
    results = helpers.raises_unpicklable.map(range(6), on_error="return", n_jobs=2, chunksize=2)
    assert results[:2] == [0, 1]
    assert results[3:] == [3, 4, 5]
    error = results[2]
    assert type(error) is RemoteError
    assert error.type_name == "tests.on_error_helpers.Locked"
    assert error.message == "locked 2"
    assert "it could not be pickled in the worker" in error.reason
    assert str(error).startswith("tests.on_error_helpers.Locked: locked 2 (it could not be pickled in the worker: ")
    assert "Locked: locked 2" in error.tb
    assert isinstance(error.__cause__, RemoteTraceback)
    assert note(2, 2) in error.__notes__
    assert warnings_of(caplog) == [count_message("raises_unpicklable", 1, 6)]


def test_exception_that_does_not_round_trip_arrives_as_remote_error() -> None:
    results = helpers.raises_two_arguments.map(range(3), on_error="return", n_jobs=2, chunksize=1)
    assert [results[0], results[2]] == [0, 2]
    error = results[1]
    assert type(error) is RemoteError
    assert (error.type_name, error.message) == ("tests.on_error_helpers.TwoArguments", "two 1")
    assert error.reason.startswith("it pickles but cannot be unpickled: TypeError: ")
    assert note(1, 1) in error.__notes__


def test_exception_that_cannot_be_unpickled_here_arrives_as_remote_error() -> None:
    results = helpers.raises_ghost.map(range(4), on_error="return", n_jobs=2, chunksize=1)
    assert [results[0], results[1], results[3]] == [0, 1, 3]
    error = results[2]
    assert type(error) is RemoteError
    assert (error.type_name, error.message) == ("tests.on_error_helpers.Ghost", "ghost 2")
    assert error.reason.startswith("it could not be unpickled here: ")
    assert note(2, 2) in error.__notes__


def test_remote_error_pickles() -> None:
    import pickle

    error = RemoteError("mod.E", "message", "Traceback ...", "why")
    again = pickle.loads(pickle.dumps(error))
    assert (again.type_name, again.message, again.tb, again.reason) == ("mod.E", "message", "Traceback ...", "why")
    assert str(again) == "mod.E: message (why)"


# -- what still raises ----------------------------------------------------------------------


@pytest.mark.parametrize("where", [{"n_jobs": 1}, WORKERS])
def test_keyboard_interrupt_still_propagates(where: dict[str, int]) -> None:
    with pytest.raises(KeyboardInterrupt):
        helpers.interrupts.map(ITEMS, on_error="return", **where)
    with pytest.raises(KeyboardInterrupt):
        list(helpers.interrupts.imap(ITEMS, on_error="return", ordered=False, **where))


@pytest.mark.parametrize("where", [{"n_jobs": 1}, WORKERS])
def test_system_exit_still_propagates(where: dict[str, int]) -> None:
    with pytest.raises(SystemExit) as info:
        helpers.exits.map(ITEMS, on_error="return", **where)
    assert info.value.code == 3
    assert note(5, 5) in info.value.__notes__


def test_a_crashed_worker_still_raises() -> None:
    with pytest.raises(WorkerCrashedError):
        helpers.dies.map(ITEMS, on_error="return", **WORKERS)


def test_a_timeout_still_raises() -> None:
    from autopar import TaskTimeoutError

    @auto_parallel
    def slow(x: float) -> float:
        time.sleep(x)
        return x

    with pytest.raises(TaskTimeoutError):
        slow.map([0.0, 30.0, 30.0], on_error="return", timeout=0.5, n_jobs=2, chunksize=1)


# -- on a Dask cluster ----------------------------------------------------------------------


@pytest.fixture
def dask_client() -> Iterator[Any]:
    """A two-worker LocalCluster for one test; none of its processes may survive it."""
    distributed = pytest.importorskip("distributed")
    before = {child.pid for child in worker_children()}
    environ = dict(os.environ)  # the Nanny sets OMP_NUM_THREADS and others in os.environ
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)
        deadline = time.monotonic() + 10.0
        while [c for c in worker_children() if c.pid not in before] and time.monotonic() < deadline:
            time.sleep(0.05)


def test_dask_backend(dask_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    results = helpers.flaky.map(ITEMS, on_error="return", backend="dask", **WORKERS)
    check_results(results, ITEMS)
    assert isinstance(results[3].__cause__, RemoteTraceback)
    pairs = [(a, 100 + a) for a in ITEMS]
    streamed = list(helpers.flaky_add.istarmap(pairs, ordered=False, on_error="return", backend="dask", **WORKERS))
    failed = sorted((r.args[1], r.__notes__[-1]) for r in streamed if isinstance(r, Exception))
    assert failed == [(a, note(a, (a, 100 + a))) for a in FAILING]
    assert warnings_of(caplog) == [count_message("flaky", 6, N), count_message("flaky_add", 6, N)]
