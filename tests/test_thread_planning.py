"""Planning with threads: measured while sampling, chosen by the model, opted out of.

Tests about a decision inject the two-thread measurement (the clock would decide
otherwise); tests about the measurement use bounds no busy machine can cross:
pure Python on two threads cannot use more than one CPU, and sleeps overlap.
"""

from __future__ import annotations

import decimal
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import autopar.measuring
from autopar import auto_parallel
from autopar.measuring import thread_scaling
from autopar.sampling import Sampler
from autopar.thread_model import THREAD_SCALING_MIN
from tests import workloads
from tests.conftest import logged_items

pytestmark = pytest.mark.timeout(120)


def _naps(x: int) -> tuple[int, int, int]:
    """2 ms of waiting; the item, and the process and thread that ran it."""
    time.sleep(0.002)
    return x, os.getpid(), threading.get_ident()


naps = auto_parallel(_naps)
naps_in_processes = auto_parallel(backend="process")(_naps)


def _nap(x: int) -> int:
    time.sleep(0.002)
    return x


def _python(x: int) -> int:
    total = 0
    for i in range(20_000):
        total += i ^ x
    return total


@pytest.fixture
def measured_as(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Replace the two-thread measurement with a given speedup; counts its calls."""
    calls: list[int] = []

    def inject(speedup: float) -> list[int]:
        def fake(n_items: int | None, sampler: Sampler, source: Iterator[Any], items: Any) -> bool:
            calls.append(1)
            sampler.thread_scaling = speedup
            return False

        monkeypatch.setattr(autopar.measuring, "thread_scaling", fake)
        return calls

    return inject


def test_work_that_scales_on_threads_runs_on_threads_here(measured_as: Any) -> None:
    calls = measured_as(1.95)
    items = list(range(300))
    results = naps.map(items)
    assert [x for x, _, _ in results] == items
    plan = naps.plan(items)
    assert plan.executor == "thread", plan.reason
    assert plan.n_jobs > 2, "waiting work: more threads than CPUs"
    assert "releases the GIL: 1.95x on 2 threads" in plan.reason
    assert {pid for _, pid, _ in results} == {os.getpid()}, "threads of this process, no workers"
    assert len({ident for _, _, ident in results}) > 2
    assert calls, "the measurement was asked for"


def test_work_that_does_not_scale_never_runs_on_threads(measured_as: Any) -> None:
    measured_as(1.02)
    items = list(range(300))
    results = naps.map(items)
    assert [x for x, _, _ in results] == items
    plan = naps.plan(items)
    assert plan.executor != "thread", plan.reason
    assert "holds the GIL: 1.02x on 2 threads" in plan.reason


def test_backend_process_opts_out_of_threads(measured_as: Any) -> None:
    calls = measured_as(2.0)
    items = list(range(300))
    results = naps_in_processes.map(items)
    assert [x for x, _, _ in results] == items
    assert naps_in_processes.plan(items).executor == "process"
    assert [x for x, _, _ in naps.map(items, backend="process")] == items  # the .map override too
    assert naps.plan(items, backend="process").executor == "process"
    assert not calls, "no item ever runs on two threads when threads are not allowed"


def test_backend_thread_plans_threads_only(measured_as: Any) -> None:
    measured_as(1.9)
    items = list(range(300))
    assert naps.plan(items, backend="thread").executor == "thread"
    measured_as(1.0)
    naps.cache_clear()
    plan = naps.plan(items, backend="thread")
    assert plan.executor == "serial", plan.reason
    assert "does not scale on them" in plan.reason


def test_pure_python_measures_as_holding_the_gil() -> None:
    sampler = Sampler(_python)
    sampler.run(iter(range(5)), max_items=5, budget_s=1.0)
    thread_scaling(None, sampler, iter(range(5, 200)), None)
    # No reading at all is possible too: the second thread may not start before the first ends.
    scaling = sampler.thread_scaling
    assert scaling is None or scaling < THREAD_SCALING_MIN, "two threads cannot run Python on two CPUs"
    assert sampler.results == [_python(x) for x in sampler.items], "results kept, in order"


def test_sleeps_measure_as_overlapping() -> None:
    sampler = Sampler(_nap)
    sampler.run(iter(range(5)), max_items=5, budget_s=1.0)
    thread_scaling(None, sampler, iter(range(5, 200)), None)
    assert sampler.thread_scaling is not None
    assert sampler.thread_scaling >= THREAD_SCALING_MIN
    assert sampler.items == list(range(len(sampler.items))), "the stream's prefix, in order"
    assert sampler.results == sampler.items


def test_items_run_on_two_threads_while_sampling_are_evaluated_once(call_log: Path) -> None:
    logged = auto_parallel(workloads.logged)
    items = [(x, str(call_log)) for x in range(400)]
    assert logged.map(items) == [x * x for x in range(400)]
    calls = logged_items(call_log)
    assert sorted(calls) == list(range(400)), "every item evaluated exactly once"


def _fails_from_200(x: int) -> int:
    time.sleep(0.0005)
    if x >= 200:
        raise ValueError(f"bad {x}")
    return x


def test_the_first_failure_is_raised_whatever_sampled_it() -> None:
    func = auto_parallel(_fails_from_200)
    with pytest.raises(ValueError, match="bad 200") as info:
        func.map(list(range(400)))
    assert "item 200: 200" in "\n".join(getattr(info.value, "__notes__", []))


def _fails_from_30(x: int) -> int:
    time.sleep(0.0005)
    if x >= 30:
        raise ValueError(f"bad {x}")
    return x


def test_a_stream_failing_on_the_sampling_threads_names_the_first_item() -> None:
    def stream() -> Iterator[int]:
        yield from range(10_000)

    func = auto_parallel(_fails_from_30)
    with pytest.raises(ValueError, match="bad 30") as info:
        list(func.imap(stream()))
    assert "item 30: 30" in "\n".join(getattr(info.value, "__notes__", []))


def _slow_first_failure(x: int) -> int:
    if x == 1:
        time.sleep(0.3)
        raise ValueError("first in order")
    if x >= 2:
        raise ValueError(f"later {x}")
    return x


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_parallel_run_raises_the_first_failing_item_in_order(backend: str) -> None:
    """Item 2 fails at once, item 1 only after 0.3 s: a serial loop raises item 1's
    exception, and so does the map, whichever arrives first."""
    func = auto_parallel(_slow_first_failure)
    with pytest.raises(ValueError, match="first in order") as info:
        func.map(list(range(8)), n_jobs=2, chunksize=1, backend=backend)
    assert "item 1: 1" in "\n".join(getattr(info.value, "__notes__", []))


def _third(x: int) -> decimal.Decimal:
    time.sleep(0.001)
    return decimal.Decimal(x) / 3


def test_context_variables_follow_the_work_onto_threads(measured_as: Any) -> None:
    """decimal's precision lives in a context variable: items on the sampling threads
    and on a thread plan see the caller's, as the serial loop does."""
    measured_as(1.9)
    func = auto_parallel(_third)
    items = list(range(200))
    with decimal.localcontext(decimal.Context(prec=5)):
        expected = [_third(x) for x in items]
        assert func.map(items) == expected
        assert func.map(items, backend="thread", n_jobs=3) == expected
        func.cache_clear()
    assert func.map(items[:60]) != expected[:60], "outside the context, the default precision"


def test_the_sampling_threads_take_a_contiguous_run_from_across_the_input() -> None:
    """Holes in the run's input end its chunks: a scattered batch of hundreds of items
    turned 16 chunks into 8,000 (cheap items ran 4x slower)."""
    items = list(range(10_000))
    sampler = Sampler(_nap)
    sampler.run(iter(items), max_items=5, budget_s=1.0)
    sampler.positions = autopar.measuring.spread_positions(5, len(items))
    thread_scaling(len(items), sampler, iter(items[5:]), items)
    taken = sorted(sampler.scattered)
    assert len(taken) >= 2
    breaks = sum(1 for a, b in itertools.pairwise(taken) if b != a + 1)
    assert breaks == 0, f"one run of positions, not {breaks + 1}"
    assert all(sampler.scattered[p] == p for p in taken), "results kept at their positions"


_called: list[int] = []


def _fails_at_some(x: int) -> int:
    _called.append(x)
    time.sleep(0.001)
    if x in (5003, 5008):
        raise ValueError(f"bad {x}")
    return x


@pytest.mark.parametrize("second", [5008, 5003 + 100])
def test_every_item_evaluated_on_the_sampling_threads_is_kept_even_when_two_fail(second: int) -> None:
    """Items the run skips are exactly those evaluated here: a failure after the
    first (on the other thread) was evaluated too, and must not be again."""
    items = list(range(10_000))
    _called.clear()
    sampler = Sampler(_fails_at_some)
    sampler.run(iter(items), max_items=3, budget_s=1.0)
    sampler.positions = iter([5000, 20, 30])
    thread_scaling(len(items), sampler, iter(items[3:]), items)
    assert sampler.failed is not None
    assert sampler.failed[0] == 5003, "the first failure in input order is held for its turn"
    assert "item 5003" in "\n".join(getattr(sampler.failed[1], "__notes__", []))
    evaluated_here = {x for x in _called if x >= 5000}
    assert evaluated_here == set(sampler.scattered) | {sampler.failed[0]}, "skipped by the run iff evaluated"


def test_a_stored_plan_naming_an_executor_not_allowed_is_not_used(measured_as: Any) -> None:
    import json

    from autopar.store import get_store

    measured_as(2.0)
    items = list(range(300))
    assert naps_in_processes.plan(items).executor == "process"
    store = get_store()
    for key in store.list_keys():
        if key.startswith("plan:"):
            record = json.loads(store.get(key) or "{}")
            record["plan"]["executor"] = "thread"  # forged, or corrupt
            store.set(key, json.dumps(record))
    plan = naps_in_processes.plan(items)
    assert plan.executor == "process"
    assert not plan.from_cache


def _with_connection(connection: object, x: int) -> int:
    time.sleep(0.002)
    return x


def test_a_function_with_per_worker_setup_is_planned_for_processes(measured_as: Any) -> None:
    calls = measured_as(2.0)
    func = auto_parallel(setup=object)(_with_connection)
    items = list(range(300))
    assert func.map(items) == items
    assert func.plan(items).executor == "process"
    assert not calls, "never run on the sampling threads either"


@pytest.mark.parametrize(
    ("n_items", "item_s", "worth"),
    [
        (6, 0.25, False),  # two of six heavy items on threads: a third of the run at 1x if GIL-bound
        (600, 0.25, True),
        (400, 0.002, True),
        (10, 0.001, False),  # a 10 ms run: threads could save 5 ms at most
        (None, 2e-6, False),  # a stream of tiny items: assumed 10,000 of them, 20 ms
    ],
)
def test_threads_are_measured_only_where_it_pays(n_items: int | None, item_s: float, worth: bool) -> None:
    sampler = Sampler(abs)
    sampler.times = [item_s] * 3
    assert autopar.measuring.threads_worth_measuring(n_items, sampler) is worth
