"""Workloads in a module that imports numpy (loading its BLAS thread pool)."""

from __future__ import annotations

import os

import numpy
from threadpoolctl import threadpool_info

from autopar import auto_parallel
from tests.workloads import spin


def blas_threads_here() -> int:
    """Threads of the BLAS numpy loaded in this process."""
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


@auto_parallel
def blas_threads(x: int) -> tuple[int, int, str | None]:
    """This worker's BLAS thread count, its pid and its OMP_NUM_THREADS."""
    spin(0.005)
    return blas_threads_here(), os.getpid(), os.environ.get("OMP_NUM_THREADS")


@auto_parallel
def heavy_numpy(x: int) -> float:
    """2 ms of Python CPU work on a numpy scalar."""
    spin(0.002)
    return float(numpy.float64(x) * 2)


@auto_parallel(max_workers=1)
def blas_threads_light(x: int) -> tuple[int, int]:
    """This process's BLAS thread count and pid; planned (sampled) but always run here."""
    return blas_threads_here(), os.getpid()


@auto_parallel(max_workers=1)
def blas_threads_failing(x: int) -> int:
    """Fails on item 20: while the planner compares thread counts."""
    blas_threads_here()
    return 1 // (x - 20)
