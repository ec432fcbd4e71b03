"""Failures that cross a process boundary: the user's exception, with the item it hit.

Shared by every backend's workers and by the caller that rebuilds them. Exceptions
travel pickled with Python's standard reducers, whatever reducers the process
registered (``distributed`` registers tblib's for every exception class).
"""

from __future__ import annotations

import copyreg
import io
import pickle
import reprlib
import traceback
from typing import Any

from ..errors import AutoparError

__all__ = ["ItemFailure", "dumps_exception", "pickle_failure"]

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
        # The exception travels as bytes made with the standard reducers, whatever
        # reducers the process registered (see :func:`dumps_exception`).
        return (_rebuild_failure, (dumps_exception(self.exc), self.index, self.item_repr, self.tb))

    @classmethod
    def capture(cls, exc: BaseException, index: int, item: Any) -> ItemFailure:
        """Wrap ``exc``; an exception that cannot be pickled is described instead."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None
        try:
            pickle.loads(dumps_exception(exc))
            carried: BaseException = exc
        except Exception:  # noqa: BLE001 - any failure to round-trip the exception
            carried = AutoparError(
                f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} (the original exception could not be pickled)"
            )
        return cls(carried, index, _repr.repr(item), tb)


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception with Python's own reducers for exception classes.

    Importing ``distributed`` registers tblib's reducer for every exception class
    in ``copyreg``, process-wide and inherited by fork workers. It rebuilds an
    exception without calling a C ``__init__``, so ``SystemExit.code`` or
    ``ImportError.name`` would arrive empty; the standard reducers keep them.
    """
    table = {
        cls: reducer
        for cls, reducer in copyreg.dispatch_table.items()
        if not (isinstance(cls, type) and issubclass(cls, BaseException))
    }
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = table
    pickler.dump(exc)
    return buffer.getvalue()


def _rebuild_failure(blob: bytes, index: int, item_repr: str, tb: str) -> ItemFailure:
    return ItemFailure(pickle.loads(blob), index, item_repr, tb)


def pickle_failure(failure: BaseException) -> bytes:
    """Pickle a chunk's failure with the standard reducers, or, when those cannot
    round-trip it, with whatever reducers the process has (tblib's, on a cluster)."""
    try:
        blob = dumps_exception(failure)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - any failure to round-trip: let registered reducers try
        return pickle.dumps(failure, pickle.HIGHEST_PROTOCOL)
    return blob
