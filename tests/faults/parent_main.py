"""A parent process for the tests that interrupt or kill it: ``python -m tests.faults.parent_main``.

Arguments: scenario (``interrupt``, ``idle`` or ``busy``), a log path, a start method.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import psutil

from tests import workloads
from tests.faults import faulty


def _is_worker(proc: psutil.Process) -> bool:
    """Pool workers, not the resource tracker, nor the forkserver (whose forked
    workers share its command line but are its children, not ours)."""
    cmd = " ".join(proc.cmdline())
    if "resource_tracker" in cmd:
        return False
    return not ("forkserver" in cmd and proc.ppid() == os.getpid())


def _write_workers(log: str) -> None:
    pids = [p.pid for p in psutil.Process().children(recursive=True) if _is_worker(p)]
    with open(log + ".workers", "w") as out:
        out.write(" ".join(map(str, pids)))


def main() -> None:
    scenario, log, method = sys.argv[1:4]
    multiprocessing.set_start_method(method, force=True)
    if scenario == "interrupt":
        faulty.logged_slow.map([(x, log) for x in range(400)], n_jobs=2, chunksize=1)
    elif scenario == "idle":
        stream = workloads.heavy_plain.imap(range(10**6), n_jobs=2, chunksize=1)
        for _ in range(5):
            next(stream)
        time.sleep(1.0)  # the in-flight window drains: the workers go idle
        _write_workers(log)
        time.sleep(3600)
    elif scenario == "busy":
        stream = faulty.logged_slow.imap(((x, log) for x in range(10**6)), n_jobs=2, chunksize=30)
        next(stream)
        _write_workers(log)
        time.sleep(3600)
    os._exit(0)


if __name__ == "__main__":
    main()
