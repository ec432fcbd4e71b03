"""Functions for the ``on_error`` tests.

Module level, so spawn and forkserver workers (and Dask's) import them by name.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

from autopar import auto_parallel


class Bad(ValueError):
    """The exception the flaky functions raise; its arguments must all arrive."""


def fails(x: int) -> bool:
    """Which items the flaky functions raise for."""
    return x % 7 == 3


def expected(x: int) -> int | Bad:
    """What ``flaky(x)`` gives, as a value: the result, or the exception it raises."""
    return Bad(f"bad item {x}", x) if fails(x) else x * 2


@auto_parallel
def flaky(x: int) -> int:
    """``2 * x``, except that items with ``x % 7 == 3`` raise :class:`Bad`."""
    if fails(x):
        raise Bad(f"bad item {x}", x)
    return x * 2


@auto_parallel(on_error="return")
def flaky_returning(x: int) -> int:
    """:func:`flaky`, decorated with ``on_error="return"``."""
    if fails(x):
        raise Bad(f"bad item {x}", x)
    return x * 2


@auto_parallel
def flaky_add(a: int, b: int) -> int:
    """``a + b``, except that pairs whose ``a`` fails raise :class:`Bad`."""
    if fails(a):
        raise Bad(f"bad pair {a}, {b}", a)
    return a + b


@auto_parallel
def gives_exceptions(x: int) -> Any:
    """Returns (never raises) a ``ValueError`` for even items: a value, not a failure."""
    return ValueError(f"value {x}") if x % 2 == 0 else x


class Model:
    """A decorated method: its instance travels with it."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    @auto_parallel
    def predict(self, x: int) -> int:
        if x % 5 == 0:
            raise ZeroDivisionError(f"item {x}")
        return self.scale * x


class Locked(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@auto_parallel
def raises_unpicklable(x: int) -> int:
    if x == 2:
        raise Locked(f"locked {x}")
    return x


class TwoArguments(Exception):
    """Pickles, but cannot be unpickled: ``args`` holds one of its two arguments."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@auto_parallel
def raises_two_arguments(x: int) -> int:
    if x == 1:
        raise TwoArguments(f"two {x}", x)
    return x


#: Set in a worker only: an exception class the caller's process does not have.
Ghost: type[Exception] | None = None


@auto_parallel
def raises_ghost(x: int) -> int:
    """Item 2 raises an exception whose class exists only in the worker that raised it,
    so it pickles there and cannot be unpickled in the caller."""
    global Ghost
    if x == 2:
        if multiprocessing.parent_process() is None:
            msg = "raises_ghost must run in a worker"
            raise RuntimeError(msg)
        Ghost = type("Ghost", (Exception,), {"__module__": __name__, "__qualname__": "Ghost"})
        raise Ghost(f"ghost {x}")
    return x


@auto_parallel
def interrupts(x: int) -> int:
    if x == 5:
        raise KeyboardInterrupt
    if fails(x):
        raise Bad(f"bad item {x}", x)
    return x


@auto_parallel
def exits(x: int) -> int:
    if x == 5:
        sys.exit(3)
    if fails(x):
        raise Bad(f"bad item {x}", x)
    return x


@auto_parallel
def dies(x: int) -> int:
    """Item 5 kills the worker running it (SIGKILL); other failing items raise."""
    if x == 5 and multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    if fails(x):
        raise Bad(f"bad item {x}", x)
    return x
