"""``on_error``: what a call does when the function raises for an item.

``"raise"`` (the default) stops the call at the first exception, as ``map`` does.
``"return"`` puts the exception in that item's place in the results and goes on::

    results = parse.map(paths, on_error="return")
    failed = [r for r in results if isinstance(r, Exception)]

Only ``Exception`` is caught: ``KeyboardInterrupt`` and ``SystemExit`` still stop
the call, and a worker that dies still raises
:class:`~autopar.errors.WorkerCrashedError`.

How: the call runs a :class:`Guard` of the function (a ``functools.partial``, as
:class:`~autopar.arguments.Star` is, with a plan digest of its own), which returns
a :class:`Raised` marker instead of raising. Markers travel back like any result,
from worker processes or a cluster, so no backend knows about the policy; the
decorator then puts each exception in its marker's place (:func:`restore`,
:func:`restored`), with the note that names the item, and logs how many raised.

An exception raised in a worker arrives as itself with the worker's traceback text
as ``__cause__`` (a :class:`~autopar.errors.RemoteTraceback`), as with ``"raise"``.
One that cannot travel (it cannot be pickled there, or not unpickled here) arrives
as a :class:`RemoteError` naming its type and message, with the same traceback.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import reprlib
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from .backends.failures import dumps_exception
from .errors import AutoparError, RemoteTraceback
from .notes import add_note

__all__ = [
    "ON_ERROR",
    "Guard",
    "IndexedGuard",
    "Raised",
    "RemoteError",
    "check_on_error",
    "guard_digest",
    "restore",
    "restored",
]

logger = logging.getLogger("autopar")

#: Every value ``on_error`` accepts.
ON_ERROR = ("raise", "return")

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


def check_on_error(value: object, *, per_call: bool = False) -> None:
    """Raise ``ValueError`` for an ``on_error`` that is not in :data:`ON_ERROR`
    (``None``, the decorator's, is accepted per call)."""
    if value in ON_ERROR or (per_call and value is None):
        return
    also = ", or None for the decorator's" if per_call else ""
    msg = f"on_error must be 'raise' or 'return'{also}, got {value!r}"
    raise ValueError(msg)


class RemoteError(AutoparError):
    """An exception the function raised in a worker that could not travel back as itself.

    With ``on_error="return"`` it takes the item's place: ``type_name`` and
    ``message`` are the original's, ``tb`` the worker's traceback text (also its
    ``__cause__``), ``reason`` why the original could not be sent.
    """

    def __init__(self, type_name: str, message: str, tb: str = "", reason: str = "") -> None:
        super().__init__(type_name, message, tb, reason)
        self.type_name = type_name
        self.message = message
        self.tb = tb
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message} ({self.reason})"


class Raised:
    """What a :class:`Guard` returns for an item whose call raised: the exception, the
    item's short repr and, from an :class:`IndexedGuard`, its index.

    Pickled (to leave a worker), the exception travels as bytes made with the
    standard reducers and checked to load again; one that does not is replaced
    there by a :class:`RemoteError`, so a chunk's results always arrive.
    """

    __slots__ = ("exc", "index", "item_repr")

    def __init__(self, exc: BaseException, item_repr: str, index: int | None = None) -> None:
        self.exc = exc
        self.item_repr = item_repr
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        message = _safe_str(exc)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        blob: bytes | None = None
        reason = ""
        try:
            made = dumps_exception(exc)
        except Exception as problem:  # noqa: BLE001 - pickle raises many types
            reason = f"it could not be pickled in the worker: {type(problem).__name__}: {problem}"
        else:
            try:
                pickle.loads(made)
                blob = made
            except Exception as problem:  # noqa: BLE001 - any failure to rebuild it
                reason = f"it pickles but cannot be unpickled: {type(problem).__name__}: {problem}"
        return (_rebuild, (blob, type_name, message, tb, reason, self.item_repr, self.index))

    def restore(self, index: int) -> BaseException:
        """The exception, noted with the item it hit (``index`` unless the marker knows its own)."""
        exc = self.exc
        where = index if self.index is None else self.index
        add_note(exc, f"autopar: raised while processing item {where}: {self.item_repr}")
        return exc


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the result
        return f"<{type(exc).__name__} whose str() raised>"


def _rebuild(
    blob: bytes | None, type_name: str, message: str, tb: str, reason: str, item_repr: str, index: int | None
) -> Raised:
    exc: BaseException
    if blob is None:
        exc = RemoteError(type_name, message, tb, reason)
    else:
        try:
            exc = pickle.loads(blob)
        except Exception as problem:  # noqa: BLE001 - any failure to rebuild it here
            reason = f"it could not be unpickled here: {type(problem).__name__}: {problem}"
            exc = RemoteError(type_name, message, tb, reason)
    exc.__cause__ = RemoteTraceback(tb)
    return Raised(exc, item_repr, index)


class Guard(functools.partial):  # type: ignore[type-arg]
    """``func(item)``, or a :class:`Raised` marker when that raises an ``Exception``.

    Like :class:`~autopar.arguments.Star`, a ``functools.partial`` with no arguments
    of its own, so :mod:`autopar.state` follows what ``func`` reads and a pickle
    carries ``func`` as it would alone; ``__module__`` is ``func``'s.
    """

    func: Callable[..., Any]

    def __new__(cls, func: Callable[..., Any]) -> Guard:
        self = super().__new__(cls, func)
        self.__module__ = getattr(func, "__module__", None) or cls.__module__
        return self

    def __call__(self, item: Any, /) -> Any:
        try:
            return self.func(item)
        except Exception as exc:  # noqa: BLE001 - on_error="return": the exception is the result
            return Raised(exc, _repr.repr(item))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.func,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.func!r})"


class IndexedGuard(Guard):
    """A :class:`Guard` for ``(index, item)`` pairs: a marker knows its item's index
    (an unordered stream's results do not come in input order)."""

    def __call__(self, pair: tuple[int, Any], /) -> Any:
        index, item = pair
        try:
            return self.func(item)
        except Exception as exc:  # noqa: BLE001 - on_error="return": the exception is the result
            return Raised(exc, _repr.repr(item), index)


def guard_digest(digest: str, *, indexed: bool = False) -> str:
    """The plan digest of the guarded form of a function whose digest is ``digest``.

    An indexed guard takes ``(index, item)`` pairs: its pickled sizes, and so its
    plans, are its own.
    """
    kind = "return-indexed" if indexed else "return"
    return hashlib.blake2b(f"{kind}:{digest}".encode(), digest_size=8).hexdigest()


def _report(name: str, failed: int, total: int) -> None:
    if failed:
        logger.warning(
            "autopar: %s: %d of %d item%s raised; their exceptions are in the results",
            name, failed, total, "" if total == 1 else "s",
        )  # fmt: skip


def restore(results: list[Any], name: str) -> int:
    """Put each marker's exception in its place in ``results`` (in place, with the item
    note), log how many there were, and return that count.

    The markers are found at C speed (the results' types, counted and indexed), so a
    call with no failure pays ~15 ns per result.
    """
    kinds = list(map(type, results))
    failed = kinds.count(Raised)
    position = -1
    for _ in range(failed):
        position = kinds.index(Raised, position + 1)
        results[position] = results[position].restore(position)
    _report(name, failed, len(results))
    return failed


def restored(results: Iterator[Any], name: str) -> Iterator[Any]:
    """``results`` with each marker's exception in its place, as they come; the count
    is logged when the stream ends or is closed. A marker without an index (an
    ordered stream) is numbered by its position."""
    failed = seen = 0
    try:
        for value in results:
            if type(value) is Raised:
                failed += 1
                value = value.restore(seen)
            seen += 1
            yield value
    finally:
        close: Callable[[], None] | None = getattr(results, "close", None)
        if close is not None:
            close()
        _report(name, failed, seen)
