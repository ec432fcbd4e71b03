"""Exceptions and warnings raised by autopar.

The tree, so callers can catch as broadly or as narrowly as they need::

    Exception
     └── AutoparError                      every autopar error
          ├── UnpicklableError (+TypeError)     cannot cross a process boundary
          ├── WorkerCrashedError (+BrokenProcessPool)
          │                                     a worker died without answering
          ├── TaskTimeoutError (+TimeoutError)  .map(timeout=...) ran out of time
          ├── NotIterableError (+TypeError)     .map() got something not iterable
          ├── DaskUnavailableError (+ImportError)
          │                                     backend="dask" without the extra
          └── NoClientError (+RuntimeError)     backend="dask" with no active Client
    UserWarning
     └── AutoparWarning
          └── CacheWarning                  the plan store misbehaved; autopar went on

Exceptions raised by the user's function are *not* wrapped: the caller gets the
original type, with the worker's traceback text as ``__cause__``.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "AutoparError",
    "AutoparWarning",
    "CacheWarning",
    "DaskUnavailableError",
    "NoClientError",
    "NotIterableError",
    "RemoteTraceback",
    "TaskTimeoutError",
    "UnpicklableError",
    "WorkerCrashedError",
]


class AutoparError(Exception):
    """Base class of every exception autopar raises itself."""


class UnpicklableError(AutoparError, TypeError):
    """The function, an item or a result cannot be sent to a worker process."""


class NotIterableError(AutoparError, TypeError):
    """The input given to ``.map``/``.imap``/``.plan`` is not iterable."""


class WorkerCrashedError(AutoparError, BrokenProcessPool):
    """A worker process exited or was killed while it held unfinished items."""


class TaskTimeoutError(AutoparError, TimeoutError):
    """``.map(..., timeout=...)`` ran out of time; the workers were stopped."""


class DaskUnavailableError(AutoparError, ImportError):
    """``backend="dask"`` was asked for, but ``distributed`` is not installed."""


class NoClientError(AutoparError, RuntimeError):
    """``backend="dask"`` was asked for, but no ``distributed.Client`` is active."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker, set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class AutoparWarning(UserWarning):
    """Base class of autopar's warnings."""


class CacheWarning(AutoparWarning):
    """The plan store could not be read or written; autopar planned afresh."""
