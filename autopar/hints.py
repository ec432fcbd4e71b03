"""Hint rows: a heavy workload's time bucket, so its items skip the probe on a hit.

Probing one 0.25 s item here would run it alone while the workers wait. The hint
row (the plan key without its time bucket) remembers the bucket; a per-process
memo keeps it to one store read per key.
"""

from __future__ import annotations

from .store import PlanStore
from .workload import hint_key

__all__ = ["forget_hints", "read_hint", "write_hint"]

_hints: dict[str, int | None] = {}
_HINTS_MAX = 1024


def read_hint(store: PlanStore, key: str) -> int | None:
    """The remembered time bucket, memoised per process (one store read per key)."""
    if key in _hints:
        return _hints[key]
    text = store.get(key)
    bucket: int | None = None
    if isinstance(text, str) and text.isdigit() and len(text) <= 2 and int(text) <= 40:
        bucket = int(text)
    if len(_hints) >= _HINTS_MAX:
        _hints.clear()
    _hints[key] = bucket
    return bucket


def write_hint(store: PlanStore, plan_key_: str, tbucket: int | None, name: str, ttl: float) -> None:
    key = hint_key(plan_key_)
    if tbucket is None:
        if _hints.get(key) is not None:  # only a hint known to exist costs a write to drop
            store.delete(key)
        _hints[key] = None
        return
    store.set(key, str(tbucket), tag=name, expire=ttl)
    _hints[key] = tbucket


def forget_hints() -> None:
    """Drop the per-process memo of hint rows (after the store was cleared)."""
    _hints.clear()
