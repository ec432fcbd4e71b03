"""Stored records are untrusted: validation, clamping and staleness rules."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from autopar.model import Costs, worker_limit
from autopar.plan import (
    MAX_CHUNKSIZE,
    costs_record,
    plan_record,
    read_costs_record,
    read_plan_record,
    stale_reason,
)
from autopar.system import SystemInfo
from tests import strategies as s

NOW = 1_800_000_000.0


def _record(system: SystemInfo, **plan: object) -> dict[str, object]:
    text = plan_record(
        function="m.f",
        executor="process",
        n_jobs=2,
        chunksize=10,
        estimated_speedup=1.9,
        reason="2 workers",
        warnings=(),
        system=system,
        created=NOW,
        workload={"n_items": 100, "item_s": float("nan")},
    )
    obj = json.loads(text)
    obj["plan"].update(plan)
    return obj


@given(s.json_values, s.cpus)
@settings(max_examples=300)
def test_arbitrary_json_never_crashes_the_reader(value: object, cpus: int) -> None:
    text = json.dumps(value)
    assert read_plan_record(text, usable_cpus=cpus, max_workers=None) is None or isinstance(value, dict)
    read_costs_record(text)


@given(
    s.systems,
    st.integers(min_value=-(10**15), max_value=10**15),
    st.integers(min_value=-(10**15), max_value=10**15),
)
def test_counts_are_clamped(system: SystemInfo, n_jobs: int, chunksize: int) -> None:
    text = json.dumps(_record(system, n_jobs=n_jobs, chunksize=chunksize))
    rec = read_plan_record(text, usable_cpus=system.usable_cpus, max_workers=None)
    assert rec is not None
    assert 1 <= rec.n_jobs <= system.usable_cpus, "CPU work: never more workers than CPUs"
    assert 1 <= rec.chunksize <= MAX_CHUNKSIZE
    if rec.n_jobs == 1:
        assert rec.executor == "serial"


@given(s.systems, st.sampled_from(["4", 4.0, None, [2], True, "NaN"]))
def test_wrong_types_are_rejected(system: SystemInfo, bad: object) -> None:
    text = json.dumps(_record(system, n_jobs=bad))
    assert read_plan_record(text, usable_cpus=4, max_workers=None) is None


def test_nan_and_schema_errors_are_rejected() -> None:
    system = SystemInfo(2, "fork", 10**9, "3.11.7", "0.1.0", 1)
    good = _record(system)
    assert read_plan_record(json.dumps(good), usable_cpus=2, max_workers=None) is not None
    for mutate in (
        lambda o: o["plan"].update(estimated_speedup=float("nan")),
        lambda o: o.update(format=99),
        lambda o: o.update(kind="costs"),
        lambda o: o.pop("plan"),
        lambda o: o["plan"].update(executor="fibers"),
        lambda o: o.update(created="yesterday"),
    ):
        obj = json.loads(json.dumps(good))
        mutate(obj)
        text = json.dumps(obj)  # NaN is written as NaN: still rejected
        assert read_plan_record(text, usable_cpus=2, max_workers=None) is None
    assert read_plan_record("not json", usable_cpus=2, max_workers=None) is None
    assert read_plan_record(b"bytes", usable_cpus=2, max_workers=None) is None
    assert read_plan_record("x" * 100_000, usable_cpus=2, max_workers=None) is None


@given(s.systems)
def test_costs_round_trip_and_bounds(system: SystemInfo) -> None:
    costs = Costs(0.02, 5e-5, 1e-9, measured=True)
    parsed = read_costs_record(costs_record(costs, system, NOW))
    assert parsed is not None
    assert parsed[0] == costs
    bad = json.loads(costs_record(costs, system, NOW))
    bad["costs"]["worker_start_s"] = -1
    assert read_costs_record(json.dumps(bad)) is None


@given(s.systems, st.floats(min_value=0, max_value=10**7), st.floats(min_value=1, max_value=10**7))
def test_stale_reason_rules(system: SystemInfo, age: float, ttl: float) -> None:
    stored = dataclasses.asdict(system)
    created = NOW - age
    why = stale_reason(stored, created, system, now=NOW, ttl=ttl)
    assert (why is None) == (NOW - created <= ttl)
    for field, other in (
        ("usable_cpus", system.usable_cpus + 1),
        ("start_method", "other"),
        ("python", "9.9"),
        ("autopar", "9.9"),
        ("cache_format", system.cache_format + 1),
    ):
        changed = dataclasses.replace(system, **{field: other})
        assert stale_reason(stored, NOW, changed, now=NOW, ttl=10) is not None


@given(s.systems, st.floats(min_value=0.01, max_value=5.0))
def test_memory_tolerance_is_twenty_percent(system: SystemInfo, factor: float) -> None:
    stored = dataclasses.asdict(system)
    now_mem = int(system.available_memory * factor)
    current = dataclasses.replace(system, available_memory=now_mem)
    why = stale_reason(stored, NOW, current, now=NOW, ttl=10)
    drift = abs(now_mem - system.available_memory) / system.available_memory
    if drift > 0.2 + 1e-9:
        assert why is not None
    elif drift < 0.2 - 1e-6:
        assert why is None
    assert stale_reason(stored, NOW, current, now=NOW, ttl=10, check_memory=False) is None


@given(s.cpus, st.integers(min_value=1, max_value=10**9), st.floats(min_value=0.0, max_value=1.0))
def test_only_waiting_work_may_exceed_the_cpus(cpus: int, n_jobs: int, cpu_fraction: float) -> None:
    system = SystemInfo(cpus, "fork", 2**33, "3.11.7", "0.1.0", 1)
    record = _record(system, n_jobs=n_jobs, chunksize=10)
    record["workload"] = {"cpu_fraction": cpu_fraction}
    rec = read_plan_record(json.dumps(record), usable_cpus=cpus, max_workers=None)
    assert rec is not None
    assert rec.n_jobs <= worker_limit(cpus, None, io_bound=cpu_fraction < 0.5)
