"""Side by side, in one run: autopar against the obvious alternatives and an oracle.

For every workload in :mod:`benchmarks.suite`, each repetition times, interleaved:

* the serial loop;
* ``multiprocessing.Pool().map`` with its default chunksize (pool start included);
* ``joblib.Parallel(n_jobs=-1)``;
* ``mpire.WorkerPool().map``;
* an **oracle**: the best of a grid of worker counts x chunk sizes on a fresh Pool
  (start included), with the serial loop as one more candidate;
* autopar **cold** (this function's plans cleared and no warm workers; the
  machine's measured costs kept, as on any machine after its first call) and
  **warm** (plan cached, workers kept warm by the cold call, as in a program that
  maps more than once).

Each time is the median over repetitions, reported as a ratio to the oracle, with
the geometric mean and the worst case per method. Writes
``benchmarks/RESULTS.md``, ``benchmarks/results/compare.json`` and
``benchmarks/results/ratios.png``.

Run: ``make bench`` (or ``python benchmarks/compare.py``; ``BENCH_REPEAT`` sets the
repetitions, default 3; ``BENCH_ONLY=heavy,trivial`` runs a subset).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
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

import autopar
from benchmarks.suite import WORKLOADS, Workload

HERE = Path(__file__).resolve().parent
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None
METHODS = ["serial", "pool", "joblib", "mpire", "autopar_cold", "autopar_warm"]
#: Grid points with more tasks than this are skipped: they are far from the best
#: (per-task overhead alone would exceed the work) and would take minutes.
MAX_TASKS = 20_000


def _settle() -> None:
    """Start every timed run from the same memory state.

    Without this, a run that happens to reuse 100 MB of heap just freed by the
    previous one skips its page faults and looks 8x faster (seen on big_output).
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    _settle()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _pool_map(func: Any, data: Any, n: int | None = None, chunksize: int | None = None) -> list[Any]:
    pool = multiprocessing.Pool(n)
    try:
        return pool.map(func, data, chunksize)
    finally:
        pool.close()
        pool.join()


def _grid(n_items: int, cpus: int, io_like: bool) -> list[tuple[int, int]]:
    workers = [2, 4, 8] if io_like else sorted({2, cpus, 2 * cpus} - {1})
    points = []
    for n in workers:
        sizes = {1, 4, 16, 64, 256, math.ceil(n_items / (4 * n)), math.ceil(n_items / n)}
        points += [(n, c) for c in sorted(sizes) if c <= n_items and n_items / c <= MAX_TASKS]
    return points


def run_workload(w: Workload, repeat: int, cpus: int) -> dict[str, Any]:
    import joblib
    from mpire import WorkerPool

    func, raw = w.func, w.func.__wrapped__
    expected = [raw(x) for x in w.make()]
    n_items = len(expected)
    grid = _grid(n_items, cpus, io_like=w.name == "sleepy")
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    grid_times: dict[tuple[int, int], list[float]] = {p: [] for p in grid}
    plans = []
    for _ in range(repeat):
        checks = {
            "serial": lambda: [raw(x) for x in w.make()],
            "pool": lambda: _pool_map(func, w.make()),
            "joblib": lambda: joblib.Parallel(n_jobs=-1)(joblib.delayed(func)(x) for x in w.make()),
            "mpire": lambda: _mpire(WorkerPool, func, w.make()),
        }
        for name, fn in checks.items():
            elapsed, out = _timed(fn)
            assert list(out) == expected, f"{name} gave wrong results on {w.name}"
            times[name].append(elapsed)
        for n, c in grid:
            elapsed, out = _timed(lambda n=n, c=c: _pool_map(func, w.make(), n, c))
            grid_times[(n, c)].append(elapsed)
        func.cache_clear()
        autopar.shutdown()  # cold: no stored plan and no warm workers
        elapsed, out = _timed(lambda: func.map(w.make()))
        assert out == expected
        times["autopar_cold"].append(elapsed)
        elapsed, out = _timed(lambda: func.map(w.make()))
        assert out == expected
        times["autopar_warm"].append(elapsed)
        plan = func.plan(w.make())
        plans.append(f"{plan.executor} n={plan.n_jobs} c={plan.chunksize}")
    medians = {m: statistics.median(v) for m, v in times.items()}
    grid_medians = {f"{n}x{c}": statistics.median(v) for (n, c), v in grid_times.items()}
    best_grid = min(grid_medians.items(), key=lambda kv: kv[1])
    oracle = min(best_grid[1], medians["serial"])
    oracle_config = best_grid[0] if best_grid[1] < medians["serial"] else "serial"
    return {
        "workload": w.name,
        "note": w.note,
        "n_items": n_items,
        "seconds": medians,
        "oracle_s": oracle,
        "oracle": oracle_config,
        "grid": grid_medians,
        "ratios": {m: medians[m] / oracle for m in METHODS},
        "autopar_plan": max(set(plans), key=plans.count),
    }


def _mpire(worker_pool: Any, func: Any, data: Any) -> list[Any]:
    # mpire unpacks tuple, list and dict items into arguments; wrap each item in a
    # 1-tuple (as its documentation advises) so every item is passed as it is.
    with worker_pool() as pool:
        return list(pool.map(func, [(x,) for x in data]))  # a list: mpire sizes chunks from its length


def _geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def write_results(rows: list[dict[str, Any]], repeat: int, elapsed: float) -> str:
    machine = f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    lines = [
        "# Benchmark: autopar against the obvious alternatives and an oracle",
        "",
        f"Machine: {machine}. Command: `python benchmarks/compare.py` "
        f"(BENCH_REPEAT={repeat}; {elapsed / 60:.1f} min). Each cell is the median time over "
        "repetitions divided by the oracle's (the best of a grid of worker counts x chunk sizes on a "
        "fresh `Pool`, start included, or the serial loop when that is faster). Lower is better; 1.00 "
        "matches the oracle. Measured side by side in one run on a shared machine.",
        "",
        "| workload | oracle | " + " | ".join(METHODS) + " | autopar's plan |",
        "|---|---|" + "---|" * len(METHODS) + "---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r['ratios'][m]:.2f}" for m in METHODS)
        lines.append(
            f"| {r['workload']} ({r['note']}) | {r['oracle_s'] * 1e3:.0f} ms ({r['oracle']}) | {cells} "
            f"| {r['autopar_plan']} |"
        )
    geo = {m: _geomean([r["ratios"][m] for r in rows]) for m in METHODS}
    worst = {m: max(r["ratios"][m] for r in rows) for m in METHODS}
    lines.append("| **geometric mean** | | " + " | ".join(f"**{geo[m]:.2f}**" for m in METHODS) + " | |")
    lines.append("| **worst** | | " + " | ".join(f"**{worst[m]:.2f}**" for m in METHODS) + " | |")
    serial_best = [r for r in rows if r["oracle"] == "serial"]
    lines += [
        "",
        "## Targets (issue 3)",
        "",
        f"- warm: geometric mean {geo['autopar_warm']:.2f} (target <= 1.05), worst {worst['autopar_warm']:.2f} "
        "(target <= 1.30)",
        f"- cold: geometric mean {geo['autopar_cold']:.2f} (target <= 1.20), worst {worst['autopar_cold']:.2f} "
        "(target <= 1.60)",
        "- where the serial loop is best, autopar warm / serial: "
        + ", ".join(f"{r['workload']} {r['seconds']['autopar_warm'] / r['seconds']['serial']:.2f}" for r in serial_best)
        + " (target <= 1.10)",
    ]
    heavy = next((r for r in rows if r["workload"] == "heavy"), None)
    if heavy:
        speed = heavy["seconds"]["serial"] / heavy["seconds"]["autopar_warm"]
        lines.append(f"- uniform heavy CPU: autopar warm is {speed:.2f}x the serial speed (target >= 1.85)")
    text = "\n".join(lines) + "\n"
    cluster = HERE / "results" / "cluster.md"  # benchmarks/cluster.py's section, kept
    if cluster.exists():
        section = cluster.read_text().replace("# Cluster benchmark", "## Cluster benchmark", 1)
        text = text.rstrip() + "\n\n<!-- cluster section: benchmarks/cluster.py -->\n\n" + section
    (HERE / "RESULTS.md").write_text(text)
    (HERE / "results").mkdir(exist_ok=True)
    payload = {"machine": machine, "repeat": repeat, "rows": rows, "geomean": geo, "worst": worst}
    (HERE / "results" / "compare.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        xs = [j + (i - len(METHODS) / 2 + 0.5) * width for j in range(len(rows))]
        ax.bar(xs, [r["ratios"][method] for r in rows], width, label=method)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["workload"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("time / oracle time (log scale, lower is better)")
    ax.set_title("autopar vs serial, Pool, joblib, mpire (2-core machine)")
    ax.legend(ncol=3, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
    multiprocessing.set_start_method("fork", force=True)
    os.environ.setdefault("AUTOPAR_CACHE_DIR", str(Path(tempfile.mkdtemp()) / "cache"))
    from autopar.system import usable_cpus

    cpus = usable_cpus()
    t0 = time.perf_counter()
    rows = []
    for w in WORKLOADS:
        if only and w.name not in only:
            continue
        row = run_workload(w, repeat, cpus)
        rows.append(row)
        print(
            f"{w.name:<11} oracle {row['oracle_s'] * 1e3:8.1f} ms ({row['oracle']:>8}) "
            + " ".join(f"{m}={row['ratios'][m]:.2f}" for m in METHODS),
            flush=True,
        )
    print(write_results(rows, repeat, time.perf_counter() - t0))
    plot(rows, HERE / "results" / "ratios.png")


if __name__ == "__main__":
    main()
