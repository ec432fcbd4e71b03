"""Code that runs inside worker processes: one chunk at a time, failures captured.

Kept tiny and import-light: under spawn and forkserver every worker imports it.
"""

from __future__ import annotations

import os
import pickle
import reprlib
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AutoparError

__all__ = ["ItemFailure", "echo", "pid_after", "run_chunk"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


class ItemFailure(Exception):
    """Carries an exception raised by the user's function back to the parent.

    Pool workers only catch ``Exception``; catching ``BaseException`` here means a
    ``SystemExit`` or ``KeyboardInterrupt`` in the function is reported, not fatal.
    """

    def __init__(self, exc: BaseException, index: int, item_repr: str, tb: str) -> None:
        super().__init__(exc, index, item_repr, tb)
        self.exc = exc
        self.index = index
        self.item_repr = item_repr
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (ItemFailure, (self.exc, self.index, self.item_repr, self.tb))

    @classmethod
    def capture(cls, exc: BaseException, index: int, item: Any) -> ItemFailure:
        """Wrap ``exc``; an exception that cannot be pickled is described instead."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None
        try:
            pickle.loads(pickle.dumps(exc))
            carried: BaseException = exc
        except Exception:  # noqa: BLE001 - any failure to round-trip the exception
            carried = AutoparError(
                f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} (the original exception could not be pickled)"
            )
        return cls(carried, index, _repr.repr(item), tb)


def run_chunk(func: Callable[[Any], Any], start: int, items: Sequence[Any]) -> tuple[int, list[Any]]:
    """Evaluate one chunk; ``(start, results)``, or raise :class:`ItemFailure`."""
    func = getattr(func, "_autopar_raw", func)  # an @auto_parallel wrapper: call the raw function
    results: list[Any] = []
    append = results.append
    index = start
    for item in items:
        try:
            append(func(item))
        except BaseException as exc:  # noqa: BLE001 - SystemExit too must reach the parent
            raise ItemFailure.capture(exc, index, item) from None
        index += 1
    return start, results


def echo(value: Any) -> Any:
    """Return the argument: used to measure transfer costs."""
    return value


def pid_after(seconds: float) -> int:
    """Sleep, then return this worker's pid: used to see every worker answer."""
    time.sleep(seconds)
    return os.getpid()
