"""Misbehaving workloads for the fault tests (module level: spawn workers import them)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

from autopar import auto_parallel
from tests.workloads import spin

#: Every fault fires on this item; items are slow enough that others are mid-run.
TARGET = 7


@auto_parallel
def exits(x: int) -> int:
    spin(0.02)
    if x == TARGET:
        os._exit(3)
    return x


@auto_parallel
def killed(x: int) -> int:
    spin(0.02)
    if x == TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@auto_parallel
def segfaults(x: int) -> int:
    spin(0.02)
    if x == TARGET:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


@auto_parallel
def slow_raises(x: int) -> int:
    """50 ms per item; item 13 raises (200 items would take 5 s on 2 workers)."""
    spin(0.05)
    if x == 13:
        raise KeyError("missing", x)
    return x


class Custom(BaseException):
    """A BaseException that is neither Exception, SystemExit nor KeyboardInterrupt."""


@auto_parallel
def raises_base(item: tuple[int, str]) -> int:
    x, kind = item
    spin(0.01)
    if x == TARGET:
        exc: BaseException = {"exit": SystemExit(4), "interrupt": KeyboardInterrupt(), "custom": Custom("c")}[kind]
        raise exc
    return x


class LockedError(Exception):
    """An exception that holds a lock, so it cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@auto_parallel
def raises_unpicklable(x: int) -> int:
    spin(0.01)
    if x == TARGET:
        raise LockedError("has a lock")
    return x


@auto_parallel
def returns_unpicklable(x: int) -> Any:
    spin(0.01)
    return threading.Lock() if x == TARGET else x


def _refuse() -> None:
    raise RuntimeError("this object refuses to be unpickled")


class UnpicklesBadly:
    """Pickles fine in the worker, raises when the parent unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


@auto_parallel
def returns_bad_unpickle(x: int) -> Any:
    spin(0.01)
    return UnpicklesBadly() if x == TARGET else x


class DiesWhenUnpickled:
    """An item whose unpickling in the worker kills the worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (5,))


class DiesWhenPickled:
    """A result whose pickling in the worker kills the worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        os._exit(6)


@auto_parallel
def identity_slow(x: Any) -> Any:
    spin(0.01)
    return x


@auto_parallel
def result_dies_when_pickled(x: int) -> Any:
    spin(0.01)
    return DiesWhenPickled() if x == TARGET else x


@auto_parallel
def stuck(x: int) -> int:
    """Item TARGET never finishes, and ignores SIGTERM: only SIGKILL stops it."""
    if x == TARGET:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    spin(0.01)
    return x


@auto_parallel
def big_result(x: int) -> int:
    """Returns 200 MB, then (for TARGET) dies while the result is in flight."""
    if x == TARGET:
        threading.Timer(0.05, os._exit, (9,)).start()
    data = bytes(200 * 1024 * 1024)
    return len(data) + x if x != TARGET else data  # type: ignore[return-value]


@auto_parallel
def payload_size(blob: bytes) -> int:
    return len(blob)


@auto_parallel
def logged_slow(item: tuple[int, str]) -> int:
    """Appends "<x> <start time> <pid>" to a log, then works for 0.1 s."""
    x, log = item
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{x} {time.time():.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    spin(0.1)
    return x


@auto_parallel
def exits_among_slow(x: int) -> int:
    """50 ms per item, item 3 exits: 200 items would take 5 s on 2 workers."""
    if x == 3:
        os._exit(2)
    time.sleep(0.05)
    return x
