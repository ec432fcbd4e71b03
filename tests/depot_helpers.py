"""Module-level functions for the depot tests (importable by spawn workers)."""

from __future__ import annotations

import os
from typing import Any


def lookup(x: int, table: bytes) -> int:
    """One byte of a large table, plus the table's length."""
    return table[x] + len(table)


def array_lookup(x: int, table: Any) -> tuple[float, bool, int]:
    """A value from a large numpy array, whether this process may write to it, and the pid."""
    return float(table[x]), bool(table.flags.writeable), os.getpid()


def heavy_lookup(x: int, table: bytes) -> int:
    """2 ms of CPU, then :func:`lookup`."""
    from tests.workloads import spin

    spin(0.002)
    return lookup(x, table)
