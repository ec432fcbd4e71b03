"""Module-level setups and functions for the per-worker setup tests (spawn imports them)."""

from __future__ import annotations

import os
from typing import Any

from tests.workloads import spin


class _Counter:
    """How many times setup ran in this process (an attribute: what setup reads by
    name stays the same, so the count never makes it run again)."""

    runs = 0


COUNTER = _Counter()
#: Read by :func:`scaled_setup`: a test changes it between calls.
SCALE = 3
#: Read by :func:`load_model`.
WEIGHT = 3


def load_model() -> dict[str, Any]:
    """A "model": which process loaded it, and how many loads this process has done."""
    COUNTER.runs += 1
    return {"pid": os.getpid(), "runs": COUNTER.runs, "weight": WEIGHT}


def predict(model: dict[str, Any], x: int) -> tuple[int, int, int, int]:
    """x times the model's weight; the loader's pid and load count, and this pid."""
    spin(0.001)
    return x * model["weight"], model["pid"], model["runs"], os.getpid()


def scaled_setup() -> int:
    return SCALE


def scale(factor: int, x: int) -> int:
    return factor * x


def broken_setup() -> None:
    raise RuntimeError("model file not found")


def use(model: object, x: int) -> int:
    return x


def scale_pair(factor: int, a: int, b: int) -> int:
    return factor * (a + b)


def scaled_setup_user(factor: int) -> int:
    """Takes the setup's result but no item: cannot be mapped."""
    return factor

#: While this file exists, :func:`flaky_setup`'s "database" is down: state outside
#: the program, which no token can see (a warm pool is reused across the change).
DOWN_FILE = f"/tmp/autopar-test-database-down-{os.getuid()}"


def flaky_setup() -> str:
    if os.path.exists(DOWN_FILE):
        raise ConnectionError("database is down")
    return "connection"
