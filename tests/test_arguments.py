"""Several arguments per call: ``.map(xs, ys)``, ``.starmap``, ``.istarmap``; signature
checks before any worker starts; ``n_jobs`` counted back from the usable CPUs."""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from autopar import NotIterableError, auto_parallel
from autopar import arguments as arguments_module
from autopar.arguments import Star, worker_count
from autopar.backends import process
from autopar.store import get_store
from tests import arguments_helpers as helpers
from tests.conftest import watch_children, worker_children

pytestmark = pytest.mark.timeout(90)

PAIRS = [(a, 10 * a) for a in range(40)]


def _values(results: list[tuple[int, int]]) -> list[int]:
    return [value for value, _ in results]


def _pids(results: list[tuple[int, int]]) -> set[int]:
    return {pid for _, pid in results}


# -- several iterables, as the builtin map ------------------------------------------------------


def test_map_with_several_iterables_is_the_builtin_map() -> None:
    xs, ys = range(50), [3 * y for y in range(37)]  # the shortest ends it
    assert helpers.add.map(xs, ys) == list(map(helpers.add.__wrapped__, xs, ys))
    assert helpers.add.map(iter(xs), (y for y in ys)) == list(map(helpers.add.__wrapped__, xs, ys))
    assert helpers.add3.map([1, 2], [3, 4], [5, 6, 7]) == [9, 12]
    assert helpers.add.map([], ys) == []
    assert list(helpers.add.imap(xs, ys)) == list(map(helpers.add.__wrapped__, xs, ys))


def test_map_keeps_its_keyword_options_with_several_iterables() -> None:
    xs, ys = range(30), range(30, 60)
    expected = [x + y for x, y in zip(xs, ys, strict=True)]
    assert helpers.add.map(xs, ys, n_jobs=1, chunksize=4, timeout=30, progress=False) == expected
    assert helpers.add.map(xs, ys, backend="serial") == expected


def test_a_second_argument_that_is_not_iterable_is_named() -> None:
    with pytest.raises(NotIterableError, match="argument 2 is int"):
        helpers.add.map(range(3), 7)  # type: ignore[arg-type]


def test_starmap_is_pool_starmap() -> None:
    assert helpers.add.starmap(PAIRS) == [a + b for a, b in PAIRS]
    assert helpers.add.starmap(iter(PAIRS)) == [a + b for a, b in PAIRS]
    assert helpers.add3.starmap([(1, 2), [3, 4, 5]]) == [3, 12]  # lists are argument tuples too
    assert helpers.total.starmap([(), (1,), (1, 2, 3)]) == [0, 1, 6]
    assert helpers.add.starmap([]) == []
    assert list(helpers.add.istarmap(iter(PAIRS))) == [a + b for a, b in PAIRS]


def test_starmap_equals_the_serial_map_when_planned() -> None:
    pairs = [(a, a % 7) for a in range(3000)]
    assert helpers.add.starmap(pairs) == [a + b for a, b in pairs]
    plan = helpers.add.plan([a for a, _ in pairs], [b for _, b in pairs])
    assert plan.executor in ("serial", "process")
    assert list(plan.data) == pairs


def test_starmap_on_workers_equals_the_serial_map(start_method: str) -> None:
    results = helpers.add_pid.starmap(PAIRS, n_jobs=2, chunksize=3)
    assert _values(results) == [a + b for a, b in PAIRS]
    assert os.getpid() not in _pids(results), "explicit n_jobs and chunksize: every item runs in a worker"


def test_map_of_several_iterables_on_workers(start_method: str) -> None:
    xs, ys = list(range(41)), list(range(100, 130))
    results = helpers.add_pid.map(xs, ys, n_jobs=2, chunksize=4)
    assert _values(results) == [x + y for x, y in zip(xs, ys, strict=False)]
    assert os.getpid() not in _pids(results)


def test_istarmap_ordered_and_unordered_on_workers(start_method: str) -> None:
    expected = [a + b for a, b in PAIRS]
    ordered = helpers.add_pid.istarmap(iter(PAIRS), n_jobs=2, chunksize=3)
    assert _values(list(ordered)) == expected
    unordered = helpers.add_pid.istarmap((p for p in PAIRS), ordered=False, n_jobs=2, chunksize=3)
    assert sorted(_values(list(unordered))) == sorted(expected)
    several = helpers.add_pid.imap(iter(range(25)), range(25), n_jobs=2, chunksize=4)
    assert _values(list(several)) == [2 * x for x in range(25)]


def test_an_error_names_the_argument_tuple(start_method: str) -> None:
    pairs = [(1, 2), (2, 3), (5, 6), (3, 4), (7, 8)]
    with pytest.raises(helpers.PairError) as here:
        helpers.fails_on_pair.starmap(pairs)
    with pytest.raises(helpers.PairError) as there:
        helpers.fails_on_pair.starmap(pairs, n_jobs=2, chunksize=2)
    for info in (here, there):
        notes = getattr(info.value, "__notes__", [])
        assert any("item 3" in note and "(3, 4)" in note for note in notes), notes
    with pytest.raises(helpers.PairError) as zipped:
        helpers.fails_on_pair.map([1, 2, 3], [9, 9, 4], n_jobs=2, chunksize=1)
    assert any("item 2" in note and "(3, 4)" in note for note in zipped.value.__notes__)


# -- plans and state of the starred form ---------------------------------------------------------


def test_starred_plans_are_their_own() -> None:
    one, starred = helpers.total.call(), helpers.total.call(star=True)
    assert starred.name == one.name == "tests.arguments_helpers.total"
    assert starred.digest != one.digest
    # Two functions that differ in a constant never share a plan, starred or not.
    assert helpers.times2.call(star=True).digest != helpers.times3.call(star=True).digest
    assert helpers.times2.call().digest != helpers.times3.call().digest
    # Both forms of one function plan under their own keys.
    helpers.total.map(range(3000))
    helpers.total.starmap([(x,) for x in range(3000)])
    digests = {
        key.split(":")[3] for key in get_store().list_keys() if key.startswith("plan:") and f":{one.name}:" in key
    }
    assert {one.digest, starred.digest} <= digests
    assert helpers.total.cache_info().currsize >= 2


def test_star_pickles_as_the_function_it_wraps() -> None:
    import pickle

    star = Star(helpers.add)
    assert star((2, 3)) == 5
    copy = pickle.loads(pickle.dumps(star))
    assert copy.func is helpers.add
    assert copy([4, 5]) == 9
    assert Star(helpers.add.__wrapped__).__module__ == "tests.arguments_helpers"


def test_a_changed_global_is_seen_by_the_next_starmap_on_a_warm_pool(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = [(a, 1) for a in range(12)]
    first = helpers.scaled_add.starmap(pairs, n_jobs=2, chunksize=2)
    assert _values(first) == [a + 1 for a, _ in pairs]
    (pool,) = process.WarmPools.idle()
    second = helpers.scaled_add.starmap(pairs, n_jobs=2, chunksize=2)
    assert _values(second) == _values(first)
    assert process.WarmPools.idle() == [pool], "an unchanged function is served by the warm pool"
    assert pool.calls == 2
    monkeypatch.setattr(helpers, "SCALE", 10)
    third = helpers.scaled_add.starmap(pairs, n_jobs=2, chunksize=2)
    assert _values(third) == [10 * (a + 1) for a, _ in pairs]
    monkeypatch.setattr(helpers, "SCALE", 3)
    streamed = helpers.scaled_add.istarmap(iter(pairs), n_jobs=2, chunksize=2)
    assert _values(list(streamed)) == [3 * (a + 1) for a, _ in pairs]


# -- what the function can take, checked first ---------------------------------------------------

MISFITS: list[tuple[str, Callable[[], Any], str]] = [
    (
        "one item to two arguments",
        lambda: helpers.add.map(range(5)),
        "add() takes 2 positional arguments; .map passes one item at a time: "
        "use add.starmap(pairs) or add.map(xs, ys), or functools.partial to fix all but one",
    ),
    (
        "one item to three",
        lambda: helpers.add3.imap(range(5)),
        "add3() takes 2 to 3 positional arguments; .map passes one item at a time: "
        "use add3.starmap(pairs) or add3.map(xs, ys), or functools.partial to fix all but one",
    ),
    (
        "too many iterables",
        lambda: helpers.add.map(range(3), range(3), range(3)),
        "add() takes 2 positional arguments, but .map was given 3 iterables (each call takes one argument from each)",
    ),
    (
        "a tuple of the wrong length",
        lambda: helpers.add.starmap([(1, 2, 3), (4, 5)]),
        "add() takes 2 positional arguments, but starmap's item 0 has 3: (1, 2, 3); "
        "each item is one call's argument tuple",
    ),
    (
        "items that are not tuples",
        lambda: helpers.add.starmap([1, 2]),
        "add.starmap needs an iterable of argument tuples, but item 0 is 1 (int): "
        "use add.map(items) to pass one argument per call",
    ),
    (
        "a required keyword-only argument",
        lambda: helpers.needs_scale.map(range(3)),
        "needs_scale() needs the keyword argument scale; .map passes only positional arguments: "
        "give scale a default, or decorate a function that passes it",
    ),
    (
        "no parameter at all",
        lambda: helpers.no_arguments.map(range(3)),
        "no_arguments() takes no arguments; .map passes one item at a time: give it a parameter for the item",
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), MISFITS, ids=[case for case, _, _ in MISFITS])
def test_a_misfit_is_refused_before_any_worker_starts(case: str, call: Callable[[], Any], message: str) -> None:
    with watch_children() as watch, pytest.raises(TypeError) as info:
        call()
    assert str(info.value) == message, case
    assert watch.peak == 0, "no worker process started"
    assert process.WarmPools.idle() == []


def test_fitting_calls_are_not_refused() -> None:
    assert helpers.add3.map(range(3), range(3)) == [0, 2, 4]  # the default fills the third
    assert helpers.total.map(range(3), range(3), range(3)) == [0, 3, 6]  # *args takes any count
    assert helpers.square.map([1, 2, 3]) == [1, 4, 9]  # a partial with one argument left
    biggest = auto_parallel(max)  # a builtin with no signature to read: not checked, and works
    assert biggest.map([1, 5, 3], [4, 2, 6]) == [4, 5, 6]
    assert auto_parallel(pow).starmap([(2, 3), (3, 2)]) == [8, 9]


def test_the_misfit_check_runs_on_every_start_method_with_workers_asked(start_method: str) -> None:
    with watch_children() as watch, pytest.raises(TypeError, match=re.escape("add.starmap(pairs)")):
        helpers.add.map(range(100), n_jobs=2, chunksize=1)
    assert watch.peak == 0


def test_istarmap_checks_its_first_tuple_before_any_worker_starts() -> None:
    stream = helpers.add.istarmap(iter([(1, 2, 3), (4, 5, 6)]), n_jobs=2, chunksize=1)
    with watch_children() as watch, pytest.raises(TypeError, match="starmap's item 0 has 3"):
        next(stream)
    assert watch.peak == 0


def test_the_check_is_cached_and_does_not_consume_a_stream() -> None:
    pulled: list[int] = []

    def pairs() -> Iterator[tuple[int, int]]:
        for a in range(5):
            pulled.append(a)
            yield a, a

    stream = helpers.add.istarmap(pairs())
    assert pulled == [], "nothing is read before the first result is asked for"
    assert list(stream) == [0, 2, 4, 6, 8]
    assert pulled == [0, 1, 2, 3, 4]


# -- n_jobs counted back from the usable CPUs -----------------------------------------------------


def test_worker_count_has_joblibs_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arguments_module, "usable_cpus", lambda: 4)
    assert [worker_count(n) for n in (None, 3, 9, -1, -2, -4, -5, -100)] == [None, 3, 9, 4, 3, 1, 1, 1]
    with pytest.raises(ValueError, match=r"n_jobs=0 would run no worker: pass None .* or -1 for every usable CPU"):
        worker_count(0)
    for bad in (2.5, True, "2"):
        with pytest.raises(ValueError, match="n_jobs must be an int or None"):
            worker_count(bad)  # type: ignore[arg-type]


RUNNERS: dict[str, Callable[..., list[tuple[int, int]]]] = {
    "map": lambda n_jobs: helpers.add_pid.map(range(20), range(20), n_jobs=n_jobs, chunksize=2),
    "imap": lambda n_jobs: list(helpers.add_pid.imap(range(20), range(20), n_jobs=n_jobs, chunksize=2)),
    "starmap": lambda n_jobs: helpers.add_pid.starmap([(x, x) for x in range(20)], n_jobs=n_jobs, chunksize=2),
    "istarmap": lambda n_jobs: list(
        helpers.add_pid.istarmap(iter([(x, x) for x in range(20)]), n_jobs=n_jobs, chunksize=2)
    ),
    "one-argument map": lambda n_jobs: helpers.Model(2).predict.map(range(20), n_jobs=n_jobs, chunksize=2),
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_negative_n_jobs_counts_back_from_the_usable_cpus(runner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RUNNERS[runner]
    monkeypatch.setattr(arguments_module, "usable_cpus", lambda: 3)
    assert _values(run(-2)) == [2 * x for x in range(20)]
    (pool,) = process.WarmPools.idle()
    assert pool.n_jobs == 2, "-2 on 3 usable CPUs: all but one"
    monkeypatch.setattr(arguments_module, "usable_cpus", lambda: 2)
    assert _values(run(-1)) == [2 * x for x in range(20)]
    assert [p.n_jobs for p in process.WarmPools.idle()] == [2]
    here = run(-3)  # never fewer than one worker: here, in a plain loop
    assert _values(here) == [2 * x for x in range(20)]
    assert _pids(here) == {os.getpid()}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_n_jobs_zero_is_refused_everywhere(runner: str) -> None:
    with pytest.raises(ValueError, match=r"n_jobs=0 would run no worker"):
        RUNNERS[runner](0)


# -- a cluster ------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_starmap_on_a_dask_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    environ = dict(os.environ)  # the Nanny sets OMP_NUM_THREADS and others in os.environ
    before = {child.pid for child in worker_children()}
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            cluster_pids = set(client.run(os.getpid).values())
            results = helpers.add_pid.starmap(PAIRS, backend="dask", n_jobs=2, chunksize=5)
            assert _values(results) == [a + b for a, b in PAIRS]
            assert _pids(results) <= cluster_pids
            zipped = helpers.add_pid.map(range(30), range(30), backend="dask", n_jobs=2, chunksize=4)
            assert _values(zipped) == [2 * x for x in range(30)]
            streamed = helpers.add_pid.istarmap(iter(PAIRS), backend="dask", n_jobs=2, chunksize=5, ordered=False)
            assert sorted(_values(list(streamed))) == sorted(a + b for a, b in PAIRS)
            with pytest.raises(helpers.PairError) as info:
                helpers.fails_on_pair.starmap([(1, 1), (3, 4)], backend="dask", n_jobs=2, chunksize=1)
            assert any("item 1" in note and "(3, 4)" in note for note in info.value.__notes__)
    finally:
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)
        deadline = time.monotonic() + 10.0
        while [c for c in worker_children() if c.pid not in before] and time.monotonic() < deadline:
            time.sleep(0.05)


def test_functools_partial_of_a_decorated_function_still_maps() -> None:
    # A partial of the undecorated function, decorated, leaves one argument per item.
    add_ten = auto_parallel(functools.partial(helpers.add.__wrapped__, 10))
    assert add_ten.map(range(4)) == [10, 11, 12, 13]
    assert add_ten.__name__ == "add"
