"""The Plan value, and the JSON records plans and costs are stored as.

Everything read back from the store is untrusted: :func:`read_plan_record` and
:func:`read_costs_record` check every field's type, reject non-finite numbers and
clamp counts into safe ranges, returning None for anything malformed. Nothing
here is ever unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._version import CACHE_FORMAT
from .model import IO_BOUND_CPU_FRACTION, Costs, worker_limit
from .system import SystemInfo
from .thread_model import thread_limit

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_CHUNKSIZE",
    "MEMORY_TOLERANCE",
    "Plan",
    "PlanRecord",
    "costs_record",
    "plan_record",
    "read_costs_record",
    "read_plan_record",
    "serial_plan",
    "stale_reason",
    "stored_plan",
]

#: Plans, and the machine costs they are made from, are re-measured after a week
#: (the prior library's proven default): kernels, Python builds and load drift.
DEFAULT_TTL_S = 7 * 24 * 3600.0
#: Largest chunk size ever used: a poisoned record cannot make one task carry
#: more than a million items.
MAX_CHUNKSIZE = 1 << 20
#: A stored plan is stale when available memory moved by more than this fraction
#: since it was made (memory decides how many workers can hold their data).
MEMORY_TOLERANCE = 0.20
#: Longest reason or warning text kept from a stored record.
_MAX_TEXT = 500
_MAX_WARNINGS = 8


@dataclass(frozen=True)
class Plan:
    """How a map will run: serially, or on ``n_jobs`` processes (or threads in this
    process, or a cluster's workers: ``executor``) in chunks of ``chunksize``.

    ``data`` holds every input item (items evaluated while sampling are put back),
    so a generator passed to :func:`autopar.optimize` loses nothing.
    """

    executor: Literal["serial", "process", "thread", "dask"]
    n_jobs: int
    chunksize: int
    estimated_speedup: float
    reason: str
    warnings: tuple[str, ...] = ()
    from_cache: bool = False
    start_method: str = ""
    data: Any = field(default=None, repr=False, compare=False)
    profile: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    learned: int = 0
    """How many times real runs corrected this stored plan (0: as first planned)."""


def stored_plan(record: PlanRecord, start_method: str) -> Plan:
    """The :class:`Plan` a validated stored record describes."""
    return Plan(
        executor=record.executor,
        n_jobs=record.n_jobs,
        chunksize=record.chunksize,
        estimated_speedup=record.estimated_speedup,
        reason=record.reason,
        warnings=record.warnings,
        from_cache=True,
        start_method=start_method,
        learned=record.learned,
    )


def serial_plan(reason: str, *, start_method: str = "", data: Any = None) -> Plan:
    """A plan to run in this process, with the one-sentence reason why."""
    return Plan("serial", 1, 1, 1.0, reason, start_method=start_method, data=data)


@dataclass(frozen=True)
class PlanRecord:
    """A stored plan as read back: the plan's fields, where and when it was made."""

    executor: Literal["serial", "process", "thread", "dask"]
    n_jobs: int
    chunksize: int
    estimated_speedup: float
    reason: str
    warnings: tuple[str, ...]
    system: dict[str, Any]
    created: float
    function: str
    workload: dict[str, Any]
    learned: int = 0


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, sort_keys=True)


def _clean_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def plan_record(
    *,
    function: str,
    executor: str,
    n_jobs: int,
    chunksize: int,
    estimated_speedup: float,
    reason: str,
    warnings: tuple[str, ...],
    system: SystemInfo,
    created: float,
    workload: dict[str, Any],
    learned: int = 0,
) -> str:
    """The JSON text stored for one plan."""
    clean_workload = {k: (_clean_number(v) if isinstance(v, float) else v) for k, v in workload.items()}
    return _dumps(
        {
            "format": CACHE_FORMAT,
            "kind": "plan",
            "function": function,
            "created": created,
            "system": asdict(system),
            "plan": {
                "executor": executor,
                "n_jobs": n_jobs,
                "chunksize": chunksize,
                "estimated_speedup": _clean_number(estimated_speedup) or 1.0,
                "reason": reason,
                "warnings": list(warnings),
            },
            "workload": clean_workload,
            "learned": learned,
        }
    )


def costs_record(costs: Costs, system: SystemInfo, created: float) -> str:
    """The JSON text stored for this machine's measured costs."""
    return _dumps(
        {
            "format": CACHE_FORMAT,
            "kind": "costs",
            "created": created,
            "system": asdict(system),
            "costs": {
                "worker_start_s": costs.worker_start_s,
                "chunk_s": costs.chunk_s,
                "byte_s": costs.byte_s,
            },
        }
    )


def _number(value: object) -> float | None:
    """A finite int or float from JSON (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _load(text: object, kind: str) -> dict[str, Any] | None:
    if not isinstance(text, str) or len(text) > 64_000:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        return None
    if type(obj.get("format")) is not int or obj["format"] != CACHE_FORMAT:
        return None
    if _number(obj.get("created")) is None:
        return None
    if not isinstance(obj.get("system"), dict):
        return None
    return obj


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _text(value: object) -> str | None:
    return value[:_MAX_TEXT] if isinstance(value, str) else None


# Parsed records by their exact text and clamp limits: a hit on an unchanged row
# skips the JSON parse (~15 us). Bounded, since rows are small and few per process.
_parsed: dict[tuple[str, int, int | None], PlanRecord | None] = {}
_PARSED_MAX = 512


def read_plan_record(text: object, *, usable_cpus: int, max_workers: int | None) -> PlanRecord | None:
    """Parse and validate a stored plan; clamp its counts; None when malformed."""
    if not isinstance(text, str):
        return None
    memo_key = (text, usable_cpus, max_workers)
    if memo_key in _parsed:
        return _parsed[memo_key]
    record = _read_plan_record(text, usable_cpus=usable_cpus, max_workers=max_workers)
    if len(_parsed) >= _PARSED_MAX:
        _parsed.clear()
    _parsed[memo_key] = record
    return record


def _read_plan_record(text: str, *, usable_cpus: int, max_workers: int | None) -> PlanRecord | None:
    obj = _load(text, "plan")
    if obj is None:
        return None
    body = obj.get("plan")
    if not isinstance(body, dict):
        return None
    executor = body.get("executor")
    n_jobs = _int(body.get("n_jobs"))
    chunksize = _int(body.get("chunksize"))
    speedup = _number(body.get("estimated_speedup"))
    reason = _text(body.get("reason"))
    warnings = body.get("warnings")
    if executor not in ("serial", "process", "thread", "dask") or n_jobs is None or chunksize is None:
        return None
    if speedup is None or reason is None:
        return None
    if not isinstance(warnings, list) or not all(isinstance(x, str) for x in warnings):
        return None
    workload = obj.get("workload")
    if not isinstance(workload, dict):
        workload = {}
    # Only work recorded as waiting (I/O-bound) may have more workers than CPUs.
    cpu_fraction = _number(workload.get("cpu_fraction"))
    waits = cpu_fraction is not None and cpu_fraction < IO_BOUND_CPU_FRACTION
    limit = thread_limit if executor == "thread" else worker_limit
    n_jobs = min(max(n_jobs, 1), limit(usable_cpus, max_workers, io_bound=waits))
    chunksize = min(max(chunksize, 1), MAX_CHUNKSIZE)
    if n_jobs == 1:
        executor = "serial"
    function = _text(obj.get("function")) or "?"
    return PlanRecord(
        executor=executor if executor in ("process", "thread", "dask") else "serial",  # type: ignore[arg-type]
        n_jobs=n_jobs,
        chunksize=chunksize,
        estimated_speedup=max(0.0, speedup),
        reason=reason,
        warnings=tuple(w[:_MAX_TEXT] for w in warnings[:_MAX_WARNINGS]),
        system=obj["system"],
        created=float(obj["created"]),
        function=function,
        workload=workload,
        learned=min(max(_int(obj.get("learned")) or 0, 0), 1_000_000),
    )


def read_costs_record(text: object) -> tuple[Costs, dict[str, Any], float] | None:
    """Parse stored machine costs; None when malformed or out of plausible range."""
    obj = _load(text, "costs")
    if obj is None:
        return None
    body = obj.get("costs")
    if not isinstance(body, dict):
        return None
    # A cluster's workers are already running: its worker_start_s is 0.
    bounds = {"worker_start_s": (0.0, 10.0), "chunk_s": (1e-9, 1.0), "byte_s": (1e-13, 1e-5)}
    values: dict[str, float] = {}
    for name, (lower, upper) in bounds.items():
        value = _number(body.get(name))
        if value is None or not lower <= value <= upper:
            return None
        values[name] = value
    return Costs(measured=True, **values), obj["system"], float(obj["created"])


def stale_reason(
    stored: dict[str, Any],
    created: float,
    current: SystemInfo,
    *,
    now: float,
    ttl: float,
    check_memory: bool = True,
) -> str | None:
    """Why a record made under ``stored`` at ``created`` must not be used now, or None."""
    age = now - created
    if age > ttl:
        return f"older than the TTL ({age:.0f} s > {ttl:.0f} s)"
    if age < -60:  # a clock moved back, or a forged timestamp from the future
        return "created in the future"
    for name in ("usable_cpus", "start_method", "python", "autopar", "cache_format"):
        if stored.get(name) != getattr(current, name):
            return f"{name} changed ({stored.get(name)!r} -> {getattr(current, name)!r})"
    if check_memory:
        then = stored.get("available_memory")
        if type(then) is not int or then <= 0:
            return "available_memory missing"
        if abs(current.available_memory - then) > MEMORY_TOLERANCE * then:
            return f"available memory changed by more than {MEMORY_TOLERANCE:.0%}"
    return None
