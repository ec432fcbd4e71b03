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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
        import cloudpickle

        self.func = func
        self.blob = bytes(cloudpickle.dumps(func, pickle.HIGHEST_PROTOCOL))
        self.digest = hashlib.blake2b(self.blob, digest_size=16).hexdigest()

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

    @classmethod
    def of(
        cls,
        func: Callable[[Any], Any],
        *,
        key: str | None = None,
        token: tuple[Any, ...] = (),
        keep: list[Any] | None = None,
    ) -> Shipment:
        """Pickle ``func`` once for this call (pickle by reference, else cloudpickle)."""
        blob = dumps(func)
        digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return cls(func, blob, digest, key, token, keep if keep is not None else [])
