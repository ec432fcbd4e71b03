"""autopar's own overheads, and its speedup against the serial loop.

Prints a table and writes ``benchmarks/results/overhead.json`` and ``overhead.md``:

* cold planning: the extra wall time of a first call with no stored plan (machine
  costs already measured), beyond the work of the items it evaluates, under fork
  and spawn; and the one-off cost of measuring the machine per start method;
* cache-hit overhead: ``.map`` minus the serial loop, per call, on a stored plan;
* speedup of ``.map`` (warm) against the serial loop and ``multiprocessing.Pool``
  on three workloads of different shape, measured side by side in one run.

Run: ``make bench-overhead`` (or ``python benchmarks/overhead.py``). Medians of
interleaved repetitions; the machine is shared and noisy, so ratios matter more
than absolute times.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import workloads as wl

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cold_planning(method: str, repeat: int) -> dict[str, float]:
    """Planning overhead of a miss: wall time of .plan() minus the sampled items' work."""
    multiprocessing.set_start_method(method, force=True)
    from autopar import optimize
    from autopar.backends.calibration import measure_costs

    t0 = time.perf_counter()
    measure_costs(method)
    calibrate_s = time.perf_counter() - t0
    wl.heavy_uniform.plan(range(500))  # machine costs now stored for this method
    overheads = []
    for _ in range(repeat):
        wl.heavy_uniform.cache_clear()
        t0 = time.perf_counter()
        plan = optimize(wl.heavy_uniform, range(500), profile=True)
        wall = time.perf_counter() - t0
        assert plan.profile is not None
        work = sum(plan.profile["times"])
        overheads.append(wall - work)
    return {"calibration_s": calibrate_s, "planning_overhead_s": statistics.median(overheads)}


def hit_overhead(repeat: int) -> dict[str, float]:
    """Per-call overhead of .map on a stored serial plan, against the serial loop."""
    raw = wl.trivial.__wrapped__
    items = list(range(1000))
    wl.trivial.map(items)
    pairs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        wl.trivial.map(items)
        t1 = time.perf_counter()
        [raw(x) for x in items]
        t2 = time.perf_counter()
        pairs.append((t1 - t0) - (t2 - t1))
    assert wl.trivial.cache_info().hits >= repeat
    return {"hit_overhead_s": statistics.median(pairs)}


def pool_map(func: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    pool = multiprocessing.Pool()
    try:
        return pool.map(func, items)
    finally:
        pool.close()
        pool.join()


def speedups(repeat: int) -> list[dict[str, Any]]:
    multiprocessing.set_start_method("fork", force=True)
    cases = [
        ("heavy uniform (2 ms x 500)", wl.heavy_uniform, list(range(500))),
        ("trivial x+1 (200k items)", wl.trivial, list(range(200_000))),
        ("regex over logs (2k x 50 lines)", wl.parse_logs, wl.log_batches(2000)),
    ]
    rows = []
    for name, func, items in cases:
        raw = func.__wrapped__
        expected = [raw(x) for x in items]
        assert func.map(items) == expected  # warm the plan
        serial, ours, pool = [], [], []
        for _ in range(repeat):  # interleaved, so load changes hit all three alike
            t0 = time.perf_counter()
            [raw(x) for x in items]
            t1 = time.perf_counter()
            func.map(items)
            t2 = time.perf_counter()
            pool_map(func, items)
            t3 = time.perf_counter()
            serial.append(t1 - t0)
            ours.append(t2 - t1)
            pool.append(t3 - t2)
        plan = func.plan(items)
        s, o, p = (statistics.median(x) for x in (serial, ours, pool))
        rows.append(
            {
                "workload": name,
                "serial_s": s,
                "autopar_s": o,
                "pool_s": p,
                "speedup_vs_serial": s / o,
                "pool_speedup_vs_serial": s / p,
                "plan": f"{plan.executor} n_jobs={plan.n_jobs} chunksize={plan.chunksize}",
            }
        )
    return rows


def main() -> None:
    repeat = int(os.environ.get("BENCH_REPEAT", "7"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AUTOPAR_CACHE_DIR"] = str(Path(tmp) / "cache")
        cold = {m: cold_planning(m, repeat) for m in ("fork", "spawn")}
        multiprocessing.set_start_method("fork", force=True)
        hit = hit_overhead(repeat * 30)
        rows = speedups(repeat)
    machine = f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    lines = [
        "# autopar overhead benchmark",
        "",
        f"Machine: {machine}. Command: `python benchmarks/overhead.py` (BENCH_REPEAT={repeat}).",
        "",
        "| start method | one-off machine measurement | cold planning overhead (beyond item work) |",
        "|---|---|---|",
    ]
    for m, v in cold.items():
        lines.append(f"| {m} | {v['calibration_s'] * 1e3:.1f} ms | {v['planning_overhead_s'] * 1e3:.2f} ms |")
    lines += [
        "",
        f"Cache-hit overhead per `.map` call (1,000 trivial items, serial plan): "
        f"**{hit['hit_overhead_s'] * 1e6:.1f} us** over the serial loop.",
        "",
        "| workload | serial loop | autopar (warm) | Pool().map | autopar speedup | Pool speedup | plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['serial_s'] * 1e3:.1f} ms | {r['autopar_s'] * 1e3:.1f} ms | "
            f"{r['pool_s'] * 1e3:.1f} ms | {r['speedup_vs_serial']:.2f}x | {r['pool_speedup_vs_serial']:.2f}x | "
            f"{r['plan']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.md").write_text(text)
    payload = {"machine": machine, "repeat": repeat, "cold": cold, "hit": hit, "speedups": rows}
    (RESULTS / "overhead.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
