"""How fast a dead worker becomes an exception in the caller, per start method.

A worker writes the time, then calls ``os._exit`` on item 3 while the other worker
keeps results flowing. Prints the delay from that timestamp to the caller catching
``WorkerCrashedError`` (detection plus teardown), and writes
``benchmarks/results/crash_latency.json``.

Run: ``python benchmarks/crash_latency.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autopar import WorkerCrashedError, auto_parallel

# A fixed path: spawn and forkserver workers re-import this module, so a random
# name would differ between the parent and the workers.
STAMP = Path(tempfile.gettempdir()) / "autopar-crash-latency.stamp"
RESULTS = Path(__file__).resolve().parent / "results"


@auto_parallel
def dies_on_three(x: int) -> int:
    if x == 3:
        STAMP.write_text(repr(time.time()))
        os._exit(1)
    time.sleep(0.05)
    return x


def main() -> None:
    os.environ.setdefault("AUTOPAR_CACHE_DIR", str(Path(tempfile.mkdtemp()) / "cache"))
    rows = {}
    for method in ("fork", "forkserver", "spawn"):
        multiprocessing.set_start_method(method, force=True)
        delays = []
        for _ in range(7):
            try:
                dies_on_three.map(range(40), n_jobs=2, chunksize=1)
            except WorkerCrashedError:
                delays.append(time.time() - float(STAMP.read_text()))
        rows[method] = {"median_s": statistics.median(delays), "max_s": max(delays)}
        print(
            f"{method:<10} crash -> WorkerCrashedError: median {rows[method]['median_s'] * 1e3:5.0f} ms, "
            f"max {rows[method]['max_s'] * 1e3:5.0f} ms"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crash_latency.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
