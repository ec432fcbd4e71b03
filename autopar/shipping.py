"""How a decorated function reaches workers, for the caller's state *now*.

By reference (the wrapper, by its qualified name) when workers can import it and
see the same state; by value (cloudpickle, the globals it reads included) for a
function from ``__main__`` under spawn/forkserver or an interactive session, and
for lambdas and closures. A :class:`Shipper` pickles again whenever the token of
what the function reads changes (:mod:`autopar.state`), so a warm worker never runs
a stale copy; otherwise it hands back the same :class:`Shipment` in microseconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .depot import present
from .errors import UnpicklableError
from .serialization import Shipment, ShippedFunction
from .state import StateToken, state_token

__all__ = ["Shipper", "by_value"]


def by_value(func: Callable[..., Any], start_method: str) -> bool:
    """True for a function from ``__main__`` that workers cannot see as the caller does.

    From a REPL, a notebook or ``python -c`` there is no ``__main__`` file for
    spawn/forkserver workers to import. From a script, spawn/forkserver workers re-run
    its top level but not its ``if __name__ == "__main__":`` block, so globals set
    there would differ. By value, the function travels with the globals it reads.
    Fork workers share the caller's memory as of their start, which
    :meth:`autopar.backends.pool.PoolRun.serves` checks.
    """
    if getattr(func, "__module__", None) != "__main__":
        return False
    if getattr(sys.modules.get("__main__"), "__file__", None) is None:
        return True
    return start_method != "fork"


class Shipper:
    """Makes and keeps the :class:`Shipment` of one decorated function."""

    def __init__(self, wrapper: Any, func: Callable[..., Any], key: Callable[[], str]) -> None:
        self._wrapper = wrapper
        self._func = func
        self._key = key
        self._shipped: tuple[str, Shipment] | None = None  # (start method, shipment)
        self._error: tuple[StateToken, str, str] | None = None

    def state(self) -> tuple[str, StateToken, list[Any]]:
        """The function's key and the token of what it reads now."""
        token, keep = state_token(self._func)
        return self._key(), token, keep

    def shipment(self, start_method: str) -> Shipment:
        """What to send workers now; raises :class:`UnpicklableError` if nothing can be."""
        key, token, keep = self.state()
        cached = self._shipped
        if cached is not None and cached[0] == start_method and cached[1].token == token and cached[1].key == key:
            made = cached[1].deposit
            if made is None or present(made):
                return cached[1]
            # The pools that used its files have ended: deposit it again.
        error = self._error
        if error is not None and error[0] == token and error[1] == start_method:
            raise UnpicklableError(error[2])
        try:
            shipped = self._pickle(start_method, key, token, keep)
        except UnpicklableError as exc:
            self._error = (token, start_method, str(exc))
            raise
        self._shipped, self._error = (start_method, shipped), None
        return shipped

    def problem(self, start_method: str) -> str | None:
        """Why the function cannot be sent to workers now, or None."""
        try:
            self.shipment(start_method)
        except UnpicklableError as exc:
            return str(exc)
        return None

    def _pickle(self, start_method: str, key: str, token: StateToken, keep: list[Any]) -> Shipment:
        if not by_value(self._func, start_method):
            try:
                return Shipment.of(self._wrapper, key=key, token=token, keep=keep)
            except Exception:  # noqa: BLE001 - not importable by name: try by value
                pass
        try:
            return Shipment.of(ShippedFunction(self._func), key=key, token=token, keep=keep)
        except Exception as exc:
            name = key.rsplit(":", 1)[0]
            msg = (
                f"{name} cannot be sent to worker processes ({type(exc).__name__}: {exc}); pass n_jobs=1 to run it here"
            )
            raise UnpicklableError(msg) from exc
