"""Planning with threads: measured while sampling, chosen by the model, opted out of.

Tests about a decision inject the two-thread measurement (the clock would decide
otherwise); tests about the measurement use bounds no busy machine can cross:
pure Python on two threads cannot use more than one CPU, and sleeps overlap.
"""

from __future__ import annotations

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
    assert "does not scale on threads" in plan.reason


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
