"""``.map`` and ``.imap`` on real pools: results, ordering, each item once, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from autopar import NotIterableError, RemoteTraceback, UnpicklableError, auto_parallel
from autopar.backends import process
from autopar.measuring import SAMPLE_MAX_ITEMS
from tests import workloads
from tests.conftest import logged_items

pytestmark = pytest.mark.timeout(60)


def test_decorated_function_calls_as_itself() -> None:
    assert workloads.add_one(41) == 42
    assert workloads.add_one.__name__ == "add_one"
    assert workloads.add_one.__wrapped__(1) == 2
    assert pickle.loads(pickle.dumps(workloads.add_one)) is workloads.add_one


def _pool_pids() -> set[int]:
    """The workers of the pool the last parallel map left warm."""
    idle = process.WarmPools.idle()
    assert len(idle) == 1, f"the map's pool should be kept warm, found {idle}"
    return {p.pid for p in idle[0].workers}


def test_heavy_map_equals_serial_on_real_workers(start_method: str) -> None:
    items = list(range(300))
    # Planned first: after a run slower than predicted (a busy machine), the stored
    # plan is rightly corrected, and this test is about the plan the map runs.
    plan = workloads.heavy.plan(items)
    assert plan.executor == "process"
    assert plan.start_method == start_method
    results = workloads.heavy.map(items)
    assert [value for value, _ in results] == [2 * x for x in items]
    pool = _pool_pids()
    assert len(pool) == plan.n_jobs
    # Which of them drew chunks is the scheduler's business: on a busy machine one
    # worker can take every chunk before the other has started.
    ran_on = {pid for _, pid in results[len(items) // 2 :]}
    assert ran_on, "the items after the sample ran on the pool's workers"
    assert ran_on <= pool, f"items after the sample ran off the pool: {ran_on - pool}"


def test_tiny_function_runs_serially_and_correctly() -> None:
    items = range(20_000)
    assert workloads.add_one.map(items) == [x + 1 for x in items]
    plan = workloads.add_one.plan(items)
    assert plan.executor == "serial"
    assert plan.n_jobs == 1
    assert plan.reason.startswith("serial")


@pytest.mark.parametrize(
    "make",
    [list, tuple, lambda xs: xs, lambda xs: (x for x in xs), iter, lambda xs: dict.fromkeys(xs)],
    ids=["list", "tuple", "range", "generator", "iterator", "dict"],
)
def test_every_iterable_kind_gives_the_serial_result(make: object) -> None:
    items = range(200)
    expected = [3 * x for x in items]
    assert workloads.heavy_plain.map(make(items)) == expected  # type: ignore[operator]


def test_each_item_runs_exactly_once_from_a_generator(start_method: str, call_log: Path) -> None:
    n = 400
    results = workloads.logged.map((x, str(call_log)) for x in range(n))
    assert results == [x * x for x in range(n)]
    calls = logged_items(call_log)
    assert sorted(calls) == list(range(n)), "an item was evaluated twice or never"


def test_imap_streams_in_order_and_unordered(start_method: str, call_log: Path) -> None:
    n = 300
    ordered = list(workloads.logged.imap((x, str(call_log)) for x in range(n)))
    assert ordered == [x * x for x in range(n)]
    unordered = list(workloads.logged.imap([(x, str(call_log)) for x in range(n)], ordered=False))
    assert sorted(unordered) == [x * x for x in range(n)]
    assert sorted(logged_items(call_log)) == sorted(list(range(n)) * 2)


def test_imap_stopped_early_leaves_no_worker() -> None:
    stream = workloads.heavy_plain.imap(iter(range(10**9)))  # endless for practical purposes
    first = [next(stream) for _ in range(50)]
    assert first == [3 * x for x in range(50)]
    stream.close()  # the no_child_left_behind fixture checks the pool is gone


def test_explicit_arguments_override_the_plan(start_method: str) -> None:
    before = workloads.add_one.cache_info()
    results = workloads.add_one.map(range(1000), n_jobs=2, chunksize=7)
    assert results == [x + 1 for x in range(1000)]
    after = workloads.add_one.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses), "explicit args must skip planning"


def test_n_jobs_one_is_the_serial_loop() -> None:
    assert workloads.heavy.map(range(30), n_jobs=1) == [(2 * x, os.getpid()) for x in range(30)]


def test_max_workers_one_plans_serial() -> None:
    plan = workloads.capped.plan(range(500))
    assert plan.executor == "serial"
    assert "one worker" in plan.reason
    assert workloads.capped.map(range(50)) == list(range(50))


def test_map_inside_a_worker_runs_serially() -> None:
    results = workloads.nested.map(range(120), n_jobs=2, chunksize=4)
    assert all(flag for flag, _ in results), "in_worker() was False inside a worker"
    assert [inner for _, inner in results] == [[y + 1 for y in range(x % 5 + 20)] for x in range(120)]


def test_worker_exception_keeps_its_type_and_names_the_item(start_method: str) -> None:
    with pytest.raises(workloads.ItemError) as info:
        workloads.fails_on_13.map(range(400), n_jobs=2, chunksize=5)
    exc = info.value
    assert exc.args == ("bad item 13", 13)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "fails_on_13" in str(exc.__cause__)
    assert any("item 13" in note for note in getattr(exc, "__notes__", []))


def test_exception_while_sampling_is_the_serial_one() -> None:
    with pytest.raises(workloads.ItemError) as info:
        workloads.fails_on_13.map(range(14, 0, -1))  # 13 is the second item: hit while probing
    assert any("item 1" in note for note in getattr(info.value, "__notes__", []))


def test_not_iterable_input_is_a_clear_error() -> None:
    with pytest.raises(NotIterableError, match=r"iterable.*int"):
        workloads.add_one.map(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # NotIterableError is also a TypeError
        workloads.add_one.imap(3.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 2.5, True])
def test_bad_n_jobs_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="n_jobs"):
        workloads.add_one.map(range(3), n_jobs=bad)  # type: ignore[arg-type]


def test_bad_decorator_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="start_method"):
        auto_parallel(start_method="thread")(len)
    with pytest.raises(ValueError, match="ttl"):
        auto_parallel(ttl=0)(len)
    with pytest.raises(TypeError, match="callable"):
        auto_parallel(42)  # type: ignore[call-overload]


def test_local_functions_and_closures_run_on_workers(start_method: str) -> None:
    offset = 1000

    @auto_parallel
    def local_heavy(x: int) -> tuple[int, int]:
        workloads.spin(0.002)
        return x + offset, os.getpid()

    results = local_heavy.map(range(300))
    assert [value for value, _ in results] == [x + offset for x in range(300)]
    here = [index for index, (_, pid) in enumerate(results) if pid == os.getpid()]
    assert len(here) <= SAMPLE_MAX_ITEMS, "only the sample runs in this process"
    assert {pid for _, pid in results} - {os.getpid()} <= _pool_pids(), "the rest, on the pool's workers"
    lam = auto_parallel(lambda x: x * 7)
    assert lam.map(range(50), n_jobs=2, chunksize=5) == [x * 7 for x in range(50)]


INTERACTIVE = """
import multiprocessing, os, sys
multiprocessing.set_start_method(sys.argv[1])
from autopar import auto_parallel

@auto_parallel
def triple(x):
    return x * 3, os.getpid()

out = triple.map(range(40), n_jobs=2, chunksize=5)
assert [v for v, _ in out] == [x * 3 for x in range(40)], out
print(len({pid for _, pid in out} - {os.getpid()}))
"""


def test_function_defined_in_an_interactive_main_runs_on_workers(start_method: str, tmp_path: Path) -> None:
    """``python -c``, a REPL or a notebook: no ``__main__`` file for spawn/forkserver to import."""
    import subprocess
    import sys

    env = {**os.environ, "AUTOPAR_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", INTERACTIVE, start_method], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) >= 1, "ran on worker processes"


def test_truly_unpicklable_function_fails_before_any_worker_starts() -> None:
    import threading

    lock = threading.Lock()

    @auto_parallel
    def holds_lock(x: int) -> int:
        with lock:
            workloads.spin(0.002)
        return x

    with pytest.raises(UnpicklableError, match=r"holds_lock cannot be sent.*lock"):
        holds_lock.map(range(100), n_jobs=2)
    plan = holds_lock.plan(range(300))
    assert plan.executor == "serial"
    assert plan.warnings
    assert "lock" in plan.warnings[0]
    assert holds_lock.map(range(300)) == list(range(300))


def test_empty_and_single_inputs() -> None:
    assert workloads.heavy_plain.map([]) == []
    assert workloads.heavy_plain.map([5]) == [15]
    assert list(workloads.heavy_plain.imap([])) == []
