"""Module-level decorated functions, importable by spawn and forkserver workers."""

from __future__ import annotations

import os
import time

from autopar import auto_parallel
from autopar.system import in_worker


def spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time: a fixed amount of CPU work.

    Not wall time: on a busy machine the wall time an item takes grows while the
    work stays the same, and the sampler leaves the wait for a CPU out of an item's
    time. A wall-clock spin interrupted for longer than it lasts would do no work.
    """
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@auto_parallel
def add_one(x: int) -> int:
    return x + 1


@auto_parallel
def heavy(x: int) -> tuple[int, int]:
    """2 ms of CPU per item; returns the item doubled and the pid that computed it."""
    spin(0.002)
    return 2 * x, os.getpid()


@auto_parallel
def light(x: int) -> tuple[int, int]:
    """0.1 ms of CPU per item, and the pid that computed it.

    The probe times several such items and takes their median, so their time bucket
    (and with it the plan's key) stays put when a busy machine interrupts one item.
    A 2 ms item is probed alone, and one interruption can move it two buckets.
    """
    spin(0.0001)
    return 2 * x, os.getpid()


@auto_parallel
def heavy_plain(x: int) -> int:
    spin(0.002)
    return 3 * x


@auto_parallel
def tiny_pid(x: int) -> tuple[int, int]:
    """2 us of CPU, and the pid that computed it: 10,000 of them are not worth
    workers; a few hundred thousand are."""
    spin(2e-6)
    return x, os.getpid()


@auto_parallel
def light_plain(x: int) -> int:
    """20 us of CPU: a few thousand of them are not worth starting workers for."""
    spin(20e-6)
    return 3 * x


@auto_parallel
def logged(item: tuple[int, str]) -> int:
    """1 ms of CPU; appends x to the log file named in the item (to count calls).

    The path travels with the item, not in the environment: forkserver workers
    inherit the environment of when the forkserver started, not of now.
    """
    x, log = item
    spin(0.001)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    return x * x


def late_heavy(item: tuple[int, str]) -> int:
    """Nothing for items below 100, 1.5 ms of CPU from there on; logs x like :func:`logged`.

    Cost that changes along the input: the first items say "trivial".
    """
    x, log = item
    if x >= 100:
        spin(0.0015)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    return x * x


class ItemError(ValueError):
    """A distinct exception type, to check the caller gets the original type."""


@auto_parallel
def fails_on_13(x: int) -> int:
    spin(0.001)
    if x == 13:
        raise ItemError(f"bad item {x}", x)
    return x


@auto_parallel
def nested(x: int) -> tuple[bool, list[int]]:
    """Calls .map from inside a worker: must run serially there."""
    spin(0.002)
    return in_worker(), add_one.map(range(x % 5 + 20))


@auto_parallel(max_workers=1)
def capped(x: int) -> int:
    spin(0.002)
    return x


@auto_parallel
def sleepy(x: float) -> float:
    time.sleep(x)
    return x


@auto_parallel
def ramp(x: int) -> int:
    """Free for the first 80 items (what sampling sees), 3 ms of CPU after them.

    Free, not merely cheap: planning times 16 sub-microsecond calls, and a busy
    machine would have to interrupt one of them mid-call to make them look heavy.
    """
    if x >= 80:
        spin(0.003)
    return x * 5


@auto_parallel
def logged_heavy(item: tuple[int, str]) -> int:
    """30 ms of CPU; appends "x pid" to the log file named in the item."""
    x, log = item
    spin(0.03)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{x} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return x


@auto_parallel
def big_result(x: int) -> bytes:
    """A 1 MiB result per item."""
    return bytes([x % 256]) * (1 << 20)
