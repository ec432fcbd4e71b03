"""Turning functions and items into bytes for workers: pickle first, cloudpickle after.

Plain pickle is fastest and sends module-level functions by reference. Lambdas,
closures and functions defined inside other functions cannot be pickled that way;
cloudpickle (a well-kept library used by Dask, Ray and loky for exactly this)
sends them by value, so they just work. Only what neither can serialise (a lock,
an open socket) is refused, with the object named.
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .depot import INLINE_MAX, Deposit, deposit, pickle_out_of_band, present

__all__ = ["Shipment", "ShippedFunction", "dumps", "pickle_problem"]

_shipped: dict[str, Callable[[Any], Any]] = {}


def dumps(obj: Any) -> bytes:
    """Pickle, falling back to cloudpickle for lambdas, closures and local classes."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - pickle raises many types; cloudpickle gets a turn
        import cloudpickle

        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def pickle_problem(obj: Any) -> str | None:
    """Why ``obj`` cannot be sent to a worker by pickle or cloudpickle, or None."""
    try:
        dumps(obj)
    except Exception as exc:  # noqa: BLE001 - pickle raises many types
        return f"{type(exc).__name__}: {exc}"
    return None


class ShippedFunction:
    """A function that cannot be pickled by reference (a lambda, a closure), sent by value.

    Serialised once with cloudpickle; workers rebuild it once per process and
    reuse it for every chunk (keyed by a digest of the bytes).
    """

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        self._blob: bytes | None = None

    @property
    def blob(self) -> bytes:
        """The function pickled by value, made when first asked for (a large one is
        deposited instead, see :meth:`Shipment.of`, and never needs it)."""
        if self._blob is None:
            import cloudpickle

            self._blob = bytes(cloudpickle.dumps(self.func, pickle.HIGHEST_PROTOCOL))
        return self._blob

    @property
    def digest(self) -> str:
        return hashlib.blake2b(self.blob, digest_size=16).hexdigest()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_shipped, (self.digest, self.blob))

    def __call__(self, item: Any) -> Any:
        return self.func(item)


#: Functions kept unpickled per worker; a caller whose state keeps changing sends
#: new versions, and the oldest are dropped past this many.
_SHIPPED_MAX = 64


def _load_shipped(digest: str, blob: bytes) -> Callable[[Any], Any]:
    func = _shipped.get(digest)
    if func is None:
        if len(_shipped) >= _SHIPPED_MAX:
            _shipped.clear()
        func = _shipped[digest] = pickle.loads(blob)
    return func


@dataclass(frozen=True)
class Shipment:
    """A function as workers receive it, for one state of the caller.

    ``blob`` is what workers unpickle (once per worker, found again by ``digest``).
    ``key`` names the decorated function and ``token`` what it read when the blob
    was made (see :mod:`autopar.state`); a warm pool serves the shipment only if its
    workers saw the same. ``keep`` holds the objects whose ids the token uses.
    Internal helpers (calibration's) have no key: they read no caller state.
    """

    func: Callable[[Any], Any]
    blob: bytes
    digest: str
    key: str | None = None
    token: tuple[Any, ...] = ()
    keep: list[Any] = field(default_factory=list, compare=False, repr=False)
    size: int = 0
    """Bytes of a large function, which travels by :meth:`deposited` (0: inline in ``blob``)."""
    deposit: Deposit | None = None
    """Where a large function lies now (:mod:`autopar.depot`), once a pool needed it."""

    @property
    def payload(self) -> bytes | Deposit:
        """What each chunk carries: the pickle itself, or where it was deposited
        (:meth:`deposited` first: only a pool that runs it writes the files)."""
        if not self.size:
            return self.blob
        return self.deposit if self.deposit is not None else self.deposited()

    @property
    def chunk_bytes(self) -> int:
        """Bytes of the function sent with every chunk."""
        return 256 if self.size else len(self.blob)

    @property
    def once_bytes(self) -> int:
        """Bytes of the function each worker reads once (a deposit's pickle; its large
        buffers are mapped, not read), else 0."""
        return self.size

    def deposited(self) -> Deposit:
        """The large function's files, written now if missing (the last pool that used
        them ended, or none has yet): planning alone never writes them."""
        with _deposit_lock:
            made = self.deposit
            if made is None or not present(made):
                data, buffers = _pickle_large(self.func)
                made = deposit(data, buffers, self)
                object.__setattr__(self, "deposit", made)
            return made

    @classmethod
    def of(
        cls,
        func: Callable[[Any], Any],
        *,
        key: str | None = None,
        token: tuple[Any, ...] = (),
        keep: list[Any] | None = None,
    ) -> Shipment:
        """Pickle ``func`` once for this call (pickle by reference, else cloudpickle).

        Past :data:`~autopar.depot.INLINE_MAX`, or with large out-of-band buffers
        (numpy constants), it is deposited once instead of riding every chunk.
        """
        keep = keep if keep is not None else []
        if isinstance(func, ShippedFunction):  # by value: find out its size first
            data, buffers = _pickle_large(func)
            if buffers or len(data) > INLINE_MAX:
                return cls._large(func, data, key, token, keep)
        blob = dumps(func)
        if len(blob) > INLINE_MAX:
            data, _ = _pickle_large(func)
            return cls._large(func, data, key, token, keep)
        digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return cls(func, blob, digest, key, token, keep)

    @classmethod
    def _large(
        cls, func: Callable[[Any], Any], data: bytes, key: str | None, token: tuple[Any, ...], keep: list[Any]
    ) -> Shipment:
        # Workers read the pickle itself; its large buffers they map, and pay only for
        # the pages they touch. A new shipment is made only when what the function
        # reads changed, so a fresh name serves as its digest (hashing 80 MB would not).
        return cls(func, b"", uuid.uuid4().hex, key, token, keep, max(1, len(data)))


_deposit_lock = threading.Lock()


def _pickle_large(func: Callable[[Any], Any]) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """A large function pickled with its big buffers out of band (see :mod:`autopar.depot`)."""
    if isinstance(func, ShippedFunction):  # by value, as it was chosen to travel
        return pickle_out_of_band(func.func, _cloudpickle5)
    return pickle_out_of_band(func, _dumps5)


def _cloudpickle5(obj: Any, *, protocol: int, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
    import cloudpickle

    return bytes(cloudpickle.dumps(obj, protocol=protocol, buffer_callback=buffer_callback))


def _dumps5(obj: Any, *, protocol: int, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
    """Pickle with protocol 5 and out-of-band buffers: by reference when possible."""
    try:
        return pickle.dumps(obj, protocol=protocol, buffer_callback=buffer_callback)
    except Exception:  # noqa: BLE001 - lambdas, closures: by value
        return _cloudpickle5(obj, protocol=protocol, buffer_callback=buffer_callback)
