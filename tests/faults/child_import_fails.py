"""A module that imports in the parent but raises when a worker process imports it."""

from __future__ import annotations

import multiprocessing

from autopar import auto_parallel

if multiprocessing.parent_process() is not None:
    raise ImportError("this module refuses to be imported in a child process")


@auto_parallel
def doubled(x: int) -> int:
    return 2 * x
