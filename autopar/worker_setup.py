"""Per-worker setup: a model loaded, a connection opened, once per worker process.

``@auto_parallel(setup=load_model)`` on ``def predict(model, item)`` runs
``load_model()`` once in each worker and hands its result to every call there:
:class:`WithSetup` is what the workers (and the caller's own loop) call. In the
caller, setup runs when items are first evaluated here (sampling, a serial plan)
and its result is kept while what setup reads is unchanged, so a changed global is seen by
the next call, as everywhere in autopar; in a worker, once for as long as the worker
serves the same state (a warm pool whose caller's state changed is replaced, see
:mod:`autopar.state`).

A setup that raises fails the item that needed it with its exception, named as the
setup's (the map stops there, unless ``on_error="return"``), and is tried again by
the next item: never the endless respawning of a ``Pool`` initializer that raises,
and never a failure remembered by a warm worker.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from .notes import add_note
from .state import state_token
from .system import on_fork_in_child

__all__ = ["WithSetup", "find_setup", "refresh_setup", "setup_digest", "setup_name"]

_lock = threading.RLock()
#: Per process: setup's result by the setup callable's id, with
#: the callable kept so the id is never reused while its value is.
_values: dict[int, tuple[Callable[[], Any], Any]] = {}
#: In the caller: the state token of what each setup read when it ran (by its id).
_tokens: dict[int, Any] = {}


def setup_digest(digest: str, setup: Callable[[], Any]) -> str:
    """A plan digest for the function with ``setup``: its own, and the setup's code."""
    from .workload import function_identity

    return hashlib.blake2b(f"setup:{digest}:{function_identity(setup)[1]}".encode(), digest_size=8).hexdigest()


def setup_name(setup: Callable[[], Any]) -> str:
    """``module.qualname`` of a setup callable, for messages."""
    return f"{getattr(setup, '__module__', '?')}.{getattr(setup, '__qualname__', type(setup).__qualname__)}"


class WithSetup(functools.partial):  # type: ignore[type-arg]
    """``func(setup(), item)``, with ``setup()`` run once per process (see the module doc).

    A ``functools.partial`` holding ``setup`` as its argument, so :mod:`autopar.state`
    follows what both read, and a pickle carries both as they would travel alone.
    """

    func: Callable[..., Any]

    def __new__(cls, setup: Callable[[], Any], func: Callable[..., Any]) -> WithSetup:
        self = super().__new__(cls, func, setup)
        self.__module__ = getattr(func, "__module__", None) or cls.__module__
        return self

    @property
    def setup(self) -> Callable[[], Any]:
        setup: Callable[[], Any] = self.args[0]
        return setup

    def __call__(self, *args: Any) -> Any:
        entry = _values.get(id(self.setup))
        if entry is None:
            self.prepare()
            entry = _values[id(self.setup)]
        return self.func(entry[1], *args)

    def prepare(self) -> float:
        """Run setup here unless it already ran; the seconds it took (0 when it had).

        A setup that raises is not remembered: the next item tries again (a database
        that was down may be up), so a warm worker never serves a stale failure.
        """
        setup = self.setup
        with _lock:
            if id(setup) in _values:
                return 0.0
            began = time.perf_counter()
            try:
                _values[id(setup)] = (setup, setup())
            except Exception as exc:
                add_note(exc, f"autopar: raised by the setup function {setup_name(setup)}, run once per worker")
                raise
            return time.perf_counter() - began

    def forget(self) -> None:
        """Drop this process's result of setup: it runs again when next needed."""
        with _lock:
            _values.pop(id(self.setup), None)
            _tokens.pop(id(self.setup), None)

    def refresh(self) -> None:
        """At a call here: keep setup's result while what setup reads is unchanged (a
        model loaded once serves every serial call), drop it when it changed."""
        token, _ = state_token(self.setup)
        with _lock:
            if _tokens.get(id(self.setup)) != token:
                _values.pop(id(self.setup), None)
                _tokens[id(self.setup)] = token

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.setup, self.func))

    def __repr__(self) -> str:
        return f"WithSetup({self.setup!r}, {self.func!r})"


def find_setup(func: Callable[..., Any]) -> WithSetup | None:
    """The :class:`WithSetup` in ``func``, possibly inside other wrappers (``starmap``'s,
    ``on_error``'s), or None."""
    for _ in range(8):
        if isinstance(func, WithSetup):
            return func
        if not isinstance(func, functools.partial):
            return None
        func = func.func
    return None


def refresh_setup(func: Callable[..., Any]) -> None:
    """At a call here, drop ``func``'s setup result if what setup reads changed
    (see :func:`find_setup` and :meth:`WithSetup.refresh`)."""
    found = find_setup(func)
    if found is not None:
        found.refresh()


def _forget_in_child() -> None:
    """A forked process runs setup itself: a connection or a file handle shared with
    its parent would be used by two processes at once."""
    _values.clear()
    _tokens.clear()


on_fork_in_child(_forget_in_child)
