"""Module-level functions: plan a plain function, and manage the plan store."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

from .backends import ProcessBackend
from .decorator import AutoParallel
from .plan import read_costs_record, read_plan_record, serial_plan
from .planner import DEFAULT_TTL_S, Options, make_plan
from .run import IN_WORKER, as_sequence
from .store import get_store
from .system import default_start_method, in_worker, usable_cpus
from .workload import function_identity

__all__ = ["clear_cache", "optimize", "prune_expired_cache"]


def optimize(
    func: Callable[[Any], Any],
    data: Iterable[Any],
    *,
    use_cache: bool = True,
    profile: bool = False,
) -> Any:
    """The plan for running ``func`` over ``data``, without running the whole map.

    A few items are evaluated to measure them. ``Plan.data`` holds every item of
    ``data`` (a generator is read into a list, so nothing is lost). ``profile=True``
    bypasses the cache and attaches the raw measurements as ``Plan.profile``.

    >>> plan = optimize(str.upper, (word for word in ["a", "b", "c"] * 1000))
    >>> plan.executor, len(plan.data)
    ('serial', 3000)
    """
    if isinstance(func, AutoParallel):
        if profile or not use_cache:
            items = as_sequence(data)
            planned = func.call().plan(iter(items), len(items), use_cache=False, profile=profile)
            return dataclasses.replace(planned.plan, data=items)
        return func.plan(data)
    if not callable(func):
        msg = f"optimize needs a callable, got {type(func).__name__}"
        raise TypeError(msg)
    items = as_sequence(data)
    if in_worker():
        return serial_plan(IN_WORKER, data=items)
    name, digest = function_identity(func)
    options = Options(use_cache=use_cache and not profile)
    measure = ProcessBackend(default_start_method()).measure_costs
    planned = make_plan(
        func, name, digest, iter(items), len(items), options, get_store(), profile=profile, measure=measure
    )
    return dataclasses.replace(planned.plan, data=items)


def clear_cache() -> int:
    """Remove every stored plan and measurement; the number of entries removed."""
    from .planner import forget_hints

    forget_hints()
    store = get_store()
    store.wait_open()  # a store still opening would otherwise be cleared in memory only
    return store.clear()


def prune_expired_cache(ttl_seconds: float | None = None) -> int:
    """Remove plans older than ``ttl_seconds`` (default: 7 days) and unreadable rows.

    Returns the number of entries removed.
    """
    ttl = DEFAULT_TTL_S if ttl_seconds is None else float(ttl_seconds)
    if ttl < 0:
        msg = f"ttl_seconds must be >= 0, got {ttl_seconds!r}"
        raise ValueError(msg)
    store = get_store()
    store.wait_open()  # a store still opening would otherwise be pruned in memory only
    now = time.time()
    cpus = usable_cpus()
    removed = 0
    for key in store.list_keys():
        text = store.get(key)
        created: float | None = None
        if key.startswith("plan:"):
            record = read_plan_record(text, usable_cpus=cpus, max_workers=None)
            created = None if record is None else record.created
        elif key.startswith("costs:"):
            parsed = read_costs_record(text)
            created = None if parsed is None else parsed[2]
        elif key.startswith("hint:") and isinstance(text, str) and text.isdigit() and len(text) <= 2:
            continue  # a time-bucket hint; the store expires it with its plan's TTL
        if created is None or now - created > ttl:
            removed += store.delete(key)
    return removed
