"""Functions whose results depend on module state the caller changes between maps."""

from __future__ import annotations

import os

from autopar import auto_parallel
from tests.faults import settings

SCALE = 1
CONFIG = {"scale": 1}


def times_scale(x: int) -> int:
    """A plain helper reading a global: decorated functions reach it through a call."""
    return x * SCALE


@auto_parallel
def scaled(x: int) -> int:
    return x * SCALE


@auto_parallel
def scaled_via_helper(x: int) -> int:
    return times_scale(x)


@auto_parallel
def scaled_by_config(x: int) -> int:
    return x * CONFIG["scale"]


@auto_parallel
def scaled_by_module_attribute(x: int) -> int:
    return x * settings.SCALE


def multiply(factor: int, x: int) -> int:
    return factor * x * SCALE


@auto_parallel
def pid(x: int) -> int:
    return os.getpid()


@auto_parallel
def slow(x: int) -> int:
    """Takes 20 ms, so a stream or a map is still running when the test acts."""
    import time

    time.sleep(0.02)
    return x


@auto_parallel
def stuck_all(x: int) -> int:
    """Every item ignores SIGTERM and never finishes: only SIGKILL stops it."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)
    return x


@auto_parallel
def waits(x: int) -> int:
    """Waiting work (5 ms asleep): planned on more workers than CPUs."""
    import time

    time.sleep(0.005)
    return x
