"""Samples from across the input: cost that grows along it is seen, and every item
is still evaluated exactly once, in order, with failures named by their position."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autopar import auto_parallel
from autopar.backends.chunks import chunk_slices
from autopar.backends.serial import SerialBackend
from autopar.measuring import SAMPLE_MAX_ITEMS, spread_positions
from tests import workloads
from tests.conftest import logged_items

late_heavy = auto_parallel(workloads.late_heavy)


@given(st.integers(0, 50), st.integers(0, 400))
def test_spread_positions_visit_each_position_once(low: int, span: int) -> None:
    positions = list(spread_positions(low, low + span))
    assert sorted(positions) == list(range(low, low + span))


@given(st.integers(0, 1000), st.integers(8, 5000), st.integers(1, 64))
def test_the_first_positions_cover_the_range_evenly(low: int, span: int, count: int) -> None:
    """Whatever number of items the budget allows, they come from all over the input."""
    count = min(count, span)
    first = sorted(list(spread_positions(low, low + span))[:count])
    edges = [low, *first, low + span]
    widest = max(b - a for a, b in itertools.pairwise(edges))
    assert widest <= 2 * span / count + 2


@given(
    st.lists(st.integers(), min_size=0, max_size=200),
    st.integers(0, 20),
    st.integers(1, 17),
    st.sets(st.integers(0, 210), max_size=30),
)
def test_chunks_never_span_a_sampled_position(items: list[int], start: int, size: int, skip: set[int]) -> None:
    chunks = list(chunk_slices(items, start, size, sorted(skip)))
    covered = [first + offset for first, chunk in chunks for offset in range(len(chunk))]
    assert covered == [i for i in range(start, len(items)) if i not in skip]
    for first, chunk in chunks:
        assert 1 <= len(chunk) <= size
        assert list(chunk) == items[first : first + len(chunk)]


def test_serial_backend_leaves_sampled_positions_empty_and_names_real_indices() -> None:
    backend = SerialBackend()
    assert backend.map(lambda x: x * 10, list(range(10)), start=2, skip=[4, 7]) == [
        20, 30, None, 50, 60, None, 80, 90
    ]  # fmt: skip
    with pytest.raises(ZeroDivisionError) as info:
        backend.map(lambda x: 1 // (x - 8), list(range(10)), start=2, skip=[4, 7])
    assert "item 8: 8" in "\n".join(info.value.__notes__)


@pytest.mark.timeout(120)
def test_cost_that_grows_along_the_input_is_planned_from_across_it(call_log: Path) -> None:
    """The first 100 items cost nothing, the rest 1.5 ms each: a prefix sample says
    serial; a sample across the input sees the work and plans workers."""
    items = [(x, str(call_log)) for x in range(600)]
    plan = late_heavy.plan(items)
    assert plan.executor == "process", plan.reason
    call_log.write_text("")
    assert late_heavy.map(items) == [x * x for x in range(600)]
    assert sorted(logged_items(call_log)) == list(range(600)), "every item evaluated exactly once"


@pytest.mark.timeout(120)
def test_items_sampled_across_the_input_keep_their_place(call_log: Path, start_method: str) -> None:
    items = [(x, str(call_log)) for x in range(400)]
    assert late_heavy.map(items) == [x * x for x in range(400)]
    calls = logged_items(call_log)
    assert sorted(calls) == list(range(400)), "every item evaluated exactly once"
    sampled_late = [x for x in calls[:SAMPLE_MAX_ITEMS] if x >= 200]
    assert sampled_late, f"the sample reached past the middle: first calls {calls[:20]}"


def _fails_from_100(x: int) -> int:
    if x >= 100:
        raise ValueError(f"bad {x}")
    return x


def test_a_failure_in_an_item_sampled_across_the_input_names_it() -> None:
    func = auto_parallel(functools.partial(_fails_from_100))
    with pytest.raises(ValueError, match="bad") as info:
        func.map(list(range(1000)))
    failed = int(str(info.value).split()[-1])
    assert failed >= 100
    assert f"item {failed}: {failed}" in "\n".join(info.value.__notes__)


def _fails_from_300(x: int) -> int:
    if x >= 300:
        raise ValueError(f"bad {x}")
    return x


def test_the_first_failing_item_in_order_is_the_one_raised() -> None:
    """The sample reaches a failing item past the middle first; a serial loop would
    raise item 300's exception, and so does the map."""
    func = auto_parallel(functools.partial(_fails_from_300))
    with pytest.raises(ValueError, match=r"bad 300\b") as info:
        func.map(list(range(1000)))
    assert "item 300: 300" in "\n".join(info.value.__notes__)
