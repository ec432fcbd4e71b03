"""The porting benchmark's functions, in a module of their own: joblib (loky) pickles
functions from ``__main__`` by value, with a fresh copy of their globals for every
task, so a lazily loaded global would load per task there (~90 s instead of ~1 s).
Imported from here, every peer runs them as people's own modules do."""

from __future__ import annotations

from typing import Any

from benchmarks.suite import _spin

ITEMS = 400
TABLE_FLOATS = 5 * 2**20  # 40 MiB of float64
SETUP_S = 0.3

_TABLE: Any = None
_MODEL: Any = None


def work(x: int, table: Any) -> float:
    """~1 ms of CPU, reading a few entries of a large table."""
    _spin(0.001)
    return float(table[(x * 7919) % len(table)])


def work_global(x: int) -> float:
    return work(x, _TABLE)


def set_table(table: Any) -> None:
    global _TABLE
    _TABLE = table


def load_model() -> dict[str, Any]:
    """A "model" that takes 0.3 s of CPU to load."""
    _spin(SETUP_S)
    return {"weight": 3}


def predict(model: dict[str, Any], x: int) -> int:
    _spin(0.002)
    return x * model["weight"]


def init_model() -> None:
    global _MODEL
    _MODEL = load_model()


def predict_global(x: int) -> int:
    return predict(_MODEL, x)


def predict_lazy(x: int) -> int:
    """What joblib users write: load on first use in each (reused) worker."""
    global _MODEL
    if _MODEL is None:
        _MODEL = load_model()
    return predict(_MODEL, x)


