"""Plans corrected by what real runs measured, and kept on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import workloads

pytestmark = pytest.mark.timeout(60)


def test_a_run_that_disagrees_with_the_sample_corrects_the_stored_plan() -> None:
    items = range(300)
    first_plan = workloads.ramp.plan(items)
    assert first_plan.executor == "serial", "the sample sees only the cheap first items"
    assert workloads.ramp.map(items) == [x * 5 for x in items]
    assert workloads.ramp.cache_info().learned == 1
    learned = workloads.ramp.plan(items)
    assert learned.from_cache
    assert learned.learned == 1
    assert learned.executor == "process"
    assert "learned from a run" in learned.reason
    assert workloads.ramp.map(items) == [x * 5 for x in items]


def test_a_run_that_agrees_with_the_plan_changes_nothing() -> None:
    items = range(200)
    workloads.heavy_plain.map(items)
    workloads.heavy_plain.map(items)
    info = workloads.heavy_plain.cache_info()
    assert (info.hits, info.misses, info.learned) == (1, 1, 0)
    assert workloads.heavy_plain.plan(items).learned == 0


def test_explicit_arguments_teach_nothing() -> None:
    workloads.ramp.map(range(300), n_jobs=2)
    assert workloads.ramp.cache_info().learned == 0


def _calls(log: Path) -> list[tuple[int, int]]:
    return [(int(x), int(pid)) for x, pid in (line.split() for line in log.read_text().splitlines())]


def test_heavy_items_skip_the_probe_once_a_plan_sends_them_to_workers(call_log: Path) -> None:
    items = [(x, str(call_log)) for x in range(12)]
    expected = list(range(12))
    assert workloads.logged_heavy.map(items) == expected
    assert any(pid == os.getpid() for _, pid in _calls(call_log)), "the first call probes here"
    before = len(_calls(call_log))
    assert workloads.logged_heavy.map(items) == expected
    assert workloads.logged_heavy.cache_info().hits == 1
    second = _calls(call_log)[before:]
    assert sorted(x for x, _ in second) == expected, "each item exactly once"
    assert all(pid != os.getpid() for _, pid in second), "no item probed here on a hit"


def test_clearing_the_cache_forgets_the_heavy_hint(call_log: Path) -> None:
    items = [(x, str(call_log)) for x in range(12)]
    workloads.logged_heavy.map(items)
    workloads.logged_heavy.cache_clear()
    workloads.logged_heavy.map(items)
    assert workloads.logged_heavy.cache_info().misses == 1


def test_results_too_big_for_memory_warn_and_say_so_in_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    import autopar
    from autopar import system

    monkeypatch.setattr(system, "available_memory", lambda: 64 * 2**20)  # 64 MiB "available"
    with pytest.warns(autopar.AutoparWarning, match=r"use \.imap"):
        plan = workloads.big_result.plan(range(100))  # 100 x 1 MiB results
    assert any(".imap" in w for w in plan.warnings)
