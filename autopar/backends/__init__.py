"""Backends: where chunks run. One interface (:class:`~.base.Backend`), one registry.

``serial`` (this process; also the reference in tests), ``process`` (a watched
``multiprocessing.Pool``, kept warm between calls), ``thread`` (warm threads in
this process) and ``dask`` (the active ``distributed.Client``, imported only when
asked for). ``auto`` is not a backend but a choice: the planner picks threads or
processes by what it measures. A new backend is one module
with a class that implements :class:`~.base.Backend` and a line in :data:`BACKENDS`.
"""

from __future__ import annotations

from typing import Any

from .base import Backend
from .process import ProcessBackend
from .serial import SerialBackend
from .thread import ThreadBackend

__all__ = ["BACKENDS", "Backend", "ProcessBackend", "SerialBackend", "ThreadBackend", "check_backend", "get_backend"]

#: Every backend name ``.map(backend=...)`` accepts (``auto``: threads or processes,
#: as the planner measures).
BACKENDS = ("auto", "process", "thread", "dask", "serial")


def check_backend(name: object) -> None:
    """Raise ``ValueError`` for a backend name that is not in :data:`BACKENDS`."""
    if name not in BACKENDS:
        msg = f"backend must be one of {BACKENDS}, got {name!r}"
        raise ValueError(msg)


_local: dict[tuple[str, str], Backend] = {}


def get_backend(name: str, *, start_method: str, client: Any = None) -> Backend:
    """The backend called ``name``: warm process pools use ``start_method``.

    Local backends hold no per-call state and are made once (a cache hit on a
    serial plan costs microseconds); a Dask backend asks for the active client.
    """
    check_backend(name)
    if name == "auto":
        name = "process"  # the planner may also choose threads: see autopar.run.Target
    if name != "dask":
        backend = _local.get((name, start_method))
        if backend is None:
            made: Backend
            if name == "serial":
                made = SerialBackend()
            elif name == "thread":
                made = ThreadBackend()
            else:
                made = ProcessBackend(start_method, reuse=True)
            backend = _local[(name, start_method)] = made
        return backend
    from .dask import DaskBackend  # imports distributed: only when asked for

    return DaskBackend(client)
