"""Decorated functions for the thread backend tests.

Module level, so the ``backend="process"`` cases can send them to worker
processes by name (spawn and forkserver workers import this module).
"""

from __future__ import annotations

import os
import threading

from autopar import auto_parallel
from autopar.system import in_worker


class Boom(ValueError):
    """What the failing functions raise: a type of the tests' own, so the caller
    can tell the function's exception from anything autopar raises."""


def where_raw(x: int) -> tuple[int, int, int, str]:
    """``x * x``, and the process, thread and thread name that computed it."""
    here = threading.current_thread()
    return x * x, os.getpid(), threading.get_ident(), here.name


#: :func:`where_raw`, decorated: where each item ran, through the public API.
where = auto_parallel(where_raw)


@auto_parallel
def inner(x: int) -> tuple[int, int, bool]:
    """The item, the thread that ran it, and whether that thread is a worker's."""
    return x, threading.get_ident(), in_worker()


@auto_parallel(backend="process")
def inner_in_processes(x: int) -> tuple[int, int, int]:
    """The item, and the process and thread that ran it (processes were asked for)."""
    return x, os.getpid(), threading.get_ident()


@auto_parallel
def outer(x: int) -> tuple[bool, int, list[tuple[int, int, bool]], list[tuple[int, int, int]]]:
    """Maps :func:`inner` (planned) and :func:`inner_in_processes` (explicit workers)
    from wherever it runs: inside a worker thread both must run right here."""
    nested = inner.map(range(x, x + 4))
    in_processes = inner_in_processes.map(range(x, x + 4), n_jobs=2, chunksize=1)
    return in_worker(), threading.get_ident(), nested, in_processes


def fails(x: int) -> bool:
    """Which items :func:`flaky` raises for."""
    return x % 5 == 3


@auto_parallel
def flaky(x: int) -> int:
    """``x + 100``, except that items with ``x % 5 == 3`` raise :class:`Boom`."""
    if fails(x):
        raise Boom(f"bad item {x}")
    return x + 100
