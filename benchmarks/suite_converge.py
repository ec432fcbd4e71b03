"""Workloads for :mod:`benchmarks.converge` (issue 12): inputs whose first items
mislead a sampler, or whose costs hide outside the item (pickling, a big bound
argument, a generator, spawn start-up).

Every function is defined at module level so spawn workers can import it, and
nothing heavy runs at import: spawn workers re-import this module, and a table
built here would be built again in every worker. Sizes aim at 0.3-1.5 s of serial
work on the 2-core benchmark machine (``million_tiny`` is longer: a million items
is the point of it).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from autopar import auto_parallel
from benchmarks.suite import _spin

#: ``growing``: item x costs ``x * GROW_S`` of CPU; 400 items sum to ~1 s, and the
#: first 64 (what a sampler sees) average ~0.4 ms against a 2.5 ms mean.
GROW_S = 12.5e-6
GROW_ITEMS = 400
TINY_ITEMS = 1_000_000
RECORDS = 15_000
RECORD_FIELDS = 30
NUMPY_ITEMS = 4_000
TABLE_BYTES = 20 << 20
TABLE_ITEMS = 3_000
STREAM_ITEMS = 300_000
SPAWN_ITEMS = 300


@auto_parallel
def growing(x: int) -> int:
    """Cost proportional to x: a sorted input's prefix is the cheapest part of it."""
    return _spin(x * GROW_S) + x


@auto_parallel
def million_tiny(x: int) -> int:
    """~2 us per item: per-item overhead of any kind is the whole story."""
    return _spin(2e-6) + x


@auto_parallel
def records(rec: dict[str, Any]) -> dict[str, Any]:
    """Moderate work on a 30-field record, returning another: pickling both ways shows."""
    out: dict[str, Any] = {}
    for key, value in rec.items():
        if isinstance(value, float):
            out[key] = round(value * 1.1 + 0.5, 6)
        else:
            out[key] = value.upper()[::-1]
    out["_score"] = _spin(20e-6) + len(out)
    return out


@auto_parallel
def numpy_small(a: np.ndarray) -> float:
    """A 64x64 matmul and a norm: small numpy calls, a 32 KB array shipped per item."""
    return float(np.linalg.norm(a @ a.T) + np.sort(a, axis=None)[-1])


def _table_work(x: int, *, table: bytes) -> int:
    """Touches the 20 MB table lightly: the table is a constant, not per-item data."""
    n = len(table)
    hits = sum(table[(x * 7919 + i * 104729) % n] for i in range(64))
    return _spin(150e-6) + hits


def make_table() -> bytes:
    """The 20 MB constant ``partial_table`` binds (deterministic, made on demand)."""
    return random.Random(5).randbytes(TABLE_BYTES)


@functools.cache
def partial_table() -> Any:
    """``auto_parallel(partial(work, table=...))``, made once, on first use.

    A function rather than a module-level value, so spawn workers importing this
    module do not build the 20 MB table (autopar ships the partial by value anyway).
    """
    return auto_parallel(functools.partial(_table_work, table=make_table()))


@functools.cache
def table_raw() -> Callable[[int], int]:
    """The same partial, undecorated: what Pool, joblib and mpire are given."""
    return partial_table().__wrapped__  # type: ignore[no-any-return]


@auto_parallel
def stream_imap(x: int) -> int:
    """~3 us per item from a generator through ``f.imap``."""
    return _spin(3e-6) + x


@auto_parallel
def stream_map(x: int) -> int:
    """The same work through ``f.map(generator)`` (a separate plan key)."""
    return _spin(3e-6) + x


@auto_parallel(start_method="spawn")
def spawned(x: int) -> int:
    """2 ms of CPU per item, run on spawn workers (each imports this module)."""
    return _spin(0.002) + x


@auto_parallel
def warmup(x: int) -> int:
    """2 ms per item: enough to make autopar measure this machine's pool costs."""
    return _spin(0.002) + x


def _records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randrange(6, 18))) for _ in range(300)]
    return [
        {f"f{j:02d}": (rng.random() * 1000 if j % 2 else rng.choice(words) + f"-{i}") for j in range(RECORD_FIELDS)}
        for i in range(n)
    ]


def _arrays(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(8)
    return [rng.standard_normal((64, 64)) for _ in range(n)]


def _stream(n: int) -> Iterator[int]:
    return (x for x in range(n))


@dataclass(frozen=True)
class Case:
    """One workload: how autopar runs it, and what the alternatives are given.

    ``raw`` is the callable Pool, joblib and mpire get (the decorated function for
    module-level ones, as :mod:`benchmarks.compare` does; the bare partial for
    ``partial_table``, as a user of Pool would write it). ``mode`` is ``map`` or
    ``imap``; ``spawn`` runs every pool under the spawn start method.
    """

    name: str
    func: Callable[[], Any]
    raw: Callable[[], Callable[[Any], Any]]
    make: Callable[[], Iterable[Any]]
    note: str
    mode: str = "map"
    spawn: bool = False


CASES = [
    Case(
        "growing",
        lambda: growing,
        lambda: growing,
        lambda: list(range(GROW_ITEMS)),
        f"cost ~ x, x = 0..{GROW_ITEMS - 1} ascending",
    ),
    Case(
        "million_tiny",
        lambda: million_tiny,
        lambda: million_tiny,
        lambda: list(range(TINY_ITEMS)),
        "~2 us x 1M",
    ),
    Case(
        "records", lambda: records, lambda: records, lambda: _records(RECORDS), f"{RECORDS // 1000}k dicts of 30 fields"
    ),
    Case(
        "numpy_small",
        lambda: numpy_small,
        lambda: numpy_small,
        lambda: _arrays(NUMPY_ITEMS),
        f"64x64 matmul + norm x {NUMPY_ITEMS}",
    ),
    Case(
        "partial_table",
        partial_table,
        table_raw,
        lambda: list(range(TABLE_ITEMS)),
        f"partial with a 20 MB table, ~0.2 ms x {TABLE_ITEMS}",
    ),
    Case(
        "gen_imap",
        lambda: stream_imap,
        lambda: stream_imap,
        lambda: _stream(STREAM_ITEMS),
        f"generator of {STREAM_ITEMS // 1000}k x ~3 us, f.imap",
        mode="imap",
    ),
    Case(
        "gen_map",
        lambda: stream_map,
        lambda: stream_map,
        lambda: _stream(STREAM_ITEMS),
        f"generator of {STREAM_ITEMS // 1000}k x ~3 us, f.map",
    ),
    Case(
        "spawn",
        lambda: spawned,
        lambda: spawned,
        lambda: list(range(SPAWN_ITEMS)),
        f"2 ms x {SPAWN_ITEMS}, spawn start method",
        spawn=True,
    ),
]
