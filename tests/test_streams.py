"""Streams of unknown length: planned short, moved to workers once they prove long."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from autopar import auto_parallel
from tests import workloads

pytestmark = pytest.mark.timeout(120)


def _stream(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


def _planned_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the stream's own plan serial, whatever this machine's clock says.

    The test is about the switch, so it controls the plan it switches from: on a
    busy machine a sample of 2 us items can measure slow enough to plan workers
    from the start, and then there is no switch to see. The switch itself is
    decided by the real model (``autopar.run.decide``, not patched here).
    """
    import autopar.planner

    real = autopar.planner.decide

    def serial_first(request, workload):  # type: ignore[no-untyped-def]
        decision, costs = real(request, workload)
        serial = dataclasses.replace(
            decision, executor="serial", n_jobs=1, chunksize=1, predicted_s=decision.serial_s,
            reason="serial: planned so by the test",
        )  # fmt: skip
        return serial, costs

    monkeypatch.setattr(autopar.planner, "decide", serial_first)


def test_a_long_stream_moves_to_workers_and_loses_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _planned_serial(monkeypatch)
    with caplog.at_level(logging.INFO, logger="autopar"):
        results = list(workloads.tiny_pid.imap(_stream(300_000)))
    assert [x for x, _ in results] == list(range(300_000)), "every item once, in order"
    pids = [pid for _, pid in results]
    assert pids[0] == os.getpid(), "the stream began here, as planned"
    assert set(pids) - {os.getpid()}, "the rest of the stream ran on workers"
    assert any("goes to" in r.getMessage() and "workers after" in r.getMessage() for r in caplog.records)


def test_unordered_streams_switch_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _planned_serial(monkeypatch)
    results = list(workloads.tiny_pid.imap(_stream(300_000), ordered=False))
    assert sorted(x for x, _ in results) == list(range(300_000))
    assert {pid for _, pid in results} - {os.getpid()}, "the rest of the stream ran on workers"


def test_a_short_stream_stays_here() -> None:
    results = list(workloads.tiny_pid.imap(_stream(3000)))
    assert results == [(x, os.getpid()) for x in range(3000)]


def _fails_at_5000(x: int) -> int:
    if x == 5000:
        raise ValueError("bad item")
    return x


def test_a_failure_in_the_serial_part_names_its_index() -> None:
    func = auto_parallel(_fails_at_5000)
    with pytest.raises(ValueError, match="bad item") as info:
        list(func.imap(_stream(10_000)))
    assert "item 5000: 5000" in "\n".join(info.value.__notes__)


def test_a_streams_plan_says_its_sample_was_a_prefix() -> None:
    from autopar.plan import read_plan_record
    from autopar.store import get_store
    from autopar.system import usable_cpus

    list(workloads.tiny_pid.imap(_stream(30_000)))  # long enough not to be all evaluated while measuring
    store = get_store()
    keys = [k for k in store.list_keys() if k.startswith("plan:") and ":nu:" in k]
    assert keys, "a plan for a stream of unknown length was stored"
    record = read_plan_record(store.get(keys[0]), usable_cpus=usable_cpus(), max_workers=None)
    assert record is not None
    assert "sampled from the stream's first" in record.reason
