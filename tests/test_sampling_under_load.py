"""The sampler's measurements on a busy CPU: CPU work stays CPU work (Linux)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from autopar.sampling import Sampler

pytestmark = pytest.mark.skipif(
    not (os.path.exists("/proc/thread-self/schedstat") and hasattr(os, "sched_setaffinity")),
    reason="needs Linux's per-thread scheduler statistics and CPU affinity",
)


def _cpu_work(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time, however long that takes on the wall."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_waiting_for_a_busy_cpu_is_not_the_items_time_nor_io() -> None:
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    rival = subprocess.Popen(
        [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    os.sched_setaffinity(0, {cpu})  # this thread now gets about half of one CPU
    try:
        time.sleep(0.05)  # the rival is spinning
        sampler = Sampler(_cpu_work)
        sampler.run(iter([0.01] * 6), max_items=6, budget_s=10.0)
    finally:
        os.sched_setaffinity(0, before)
        rival.kill()
        rival.wait()
    sample = sampler.summary()
    assert sample.wall_s > 1.5 * 0.06, "the rival really took the CPU half the time"
    assert sample.median_s < 1.5 * 0.01, "an item's time is its own, not the wait for a CPU"
    assert sample.cpu_fraction > 0.8, "CPU work on a busy CPU is not waiting (I/O-bound) work"
