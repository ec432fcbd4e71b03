"""Past one machine: autopar's Dask backend against the two obvious ways to map on Dask.

Starts ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
on 127.0.0.1 and, for a handful of :mod:`benchmarks.suite` workloads, times side
by side, interleaved:

* **autopar**: ``f.map(items, backend="dask")``, the decorated function with its
  plan cached (a warm call: the first call, made before timing, planned from the
  cluster's measured costs and stored the plan). Where the plan is serial, autopar
  does not use the cluster at all;
* **joblib**: ``joblib.Parallel(n_jobs=-1)`` inside ``parallel_config(backend="dask")``
  (joblib batches items into tasks itself);
* **client.map**: ``client.gather(client.map(f, items, pure=False))``, one task per item.

The serial loop is timed too, for reference. Each time is the median of
``BENCH_REPEAT`` runs (default 3); a method whose first run takes over
:data:`SLOW_S` is not repeated (one task per item on 200k items takes minutes).
Ratios are to the best of autopar, joblib and client.map. Writes
``benchmarks/results/cluster.json`` and ``cluster.md``, and the same table as the
"Cluster" section of ``benchmarks/RESULTS.md``.

Run: ``python benchmarks/cluster.py``. ``BENCH_QUICK=1`` keeps a twentieth of each
workload's items, at most 2,000 (a smoke run, under a minute); ``BENCH_ONLY=heavy,trivial``
runs a subset.
"""

from __future__ import annotations

import gc
import json
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
NAMES = ["trivial", "cheap", "heavy", "tailed", "big_input", "sleepy", "regex"]
METHODS = ["autopar", "joblib", "client_map"]
#: Also timed, but not part of the "best of": the local loop.
EXTRA = ["serial"]
#: Where RESULTS.md's cluster section starts (compare.py writes what comes before).
MARKER = "<!-- cluster section: benchmarks/cluster.py -->"
#: In quick mode, each workload keeps this fraction of its items, within QUICK_MIN..QUICK_MAX.
QUICK_FRACTION = 20
QUICK_MIN = 20
QUICK_MAX = 2_000
#: Items per workload at most: one task per item on the suite's 200k trivial items
#: would take ~10 minutes per run on a local cluster; 20k show the same ratios.
MAX_ITEMS = 20_000
#: A method whose first run takes longer than this is timed once, not BENCH_REPEAT times.
SLOW_S = 10.0


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.2f} ms"


def _items(w: Workload, quick: bool) -> list[Any]:
    items = list(w.make())
    if quick:
        return items[: min(QUICK_MAX, max(QUICK_MIN, len(items) // QUICK_FRACTION))]
    return items[:MAX_ITEMS]


def run_workload(w: Workload, client: Any, repeat: int, quick: bool) -> dict[str, Any]:
    import joblib

    raw = w.func.__wrapped__
    items = _items(w, quick)
    expected = [raw(x) for x in items]
    w.func.cache_clear()
    assert w.func.map(items, backend="dask") == expected  # plans, measures and stores
    plan = w.func.plan(items, backend="dask")
    described = "serial" if plan.executor == "serial" else f"dask, chunks of {plan.chunksize}"
    if plan.learned:
        described += f" (learned x{plan.learned})"

    def joblib_run() -> list[Any]:
        with joblib.parallel_config(backend="dask"):
            return joblib.Parallel(n_jobs=-1)(joblib.delayed(raw)(x) for x in items)

    runs = {
        "serial": lambda: [raw(x) for x in items],
        "autopar": lambda: w.func.map(items, backend="dask"),
        "joblib": joblib_run,
        "client_map": lambda: client.gather(client.map(raw, items, pure=False)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            if times[name] and times[name][0] > SLOW_S:
                continue
            elapsed, out = _timed(fn)
            assert list(out) == expected, f"{name} gave wrong results on {w.name}"
            times[name].append(elapsed)
    medians = {name: statistics.median(v) for name, v in times.items()}
    best = min(medians[m] for m in METHODS)
    return {
        "workload": w.name,
        "note": w.note,
        "n_items": len(items),
        "seconds": medians,
        "runs": {name: len(v) for name, v in times.items()},
        "best_s": best,
        "ratios": {m: medians[m] / best for m in METHODS + EXTRA},
        "autopar_plan": described,
        "predicted_speedup": plan.estimated_speedup,
    }


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    repeat = meta["repeat"]
    quick = " BENCH_QUICK=1, a twentieth of the items;" if meta["quick"] else ""
    lines = [
        "# Cluster benchmark: autopar's Dask backend against joblib's and plain Client.map",
        "",
        f"Machine: {meta['machine']}. Cluster: {meta['cluster']} ({meta['fingerprint']}), started in "
        f"{meta['cluster_start_s']:.2f} s; measured costs: {meta['chunk_s'] * 1e3:.2f} ms per task, "
        f"{meta['byte_s'] * 1e9:.2f} ns per byte (measuring took {meta['measure_s'] * 1e3:.0f} ms). "
        f"Command: `python benchmarks/cluster.py` (BENCH_REPEAT={meta['repeat']};{quick} "
        f"{meta['elapsed_s'] / 60:.1f} min). Each ratio is the median time over repetitions divided by the best "
        "of autopar, joblib and client_map: lower is better, 1.00 is the best. `serial` is the local loop, "
        "for reference.",
        "",
        "| workload | items | best | " + " | ".join(METHODS + EXTRA) + " | autopar's plan |",
        "|---|---|---|" + "---|" * len(METHODS + EXTRA) + "---|",
    ]
    for r in rows:
        cells = " | ".join(
            f"{r['ratios'][m]:.2f}" + ("*" if r["runs"].get(m, repeat) < repeat else "") for m in METHODS + EXTRA
        )
        lines.append(
            f"| {r['workload']} ({r['note']}) | {r['n_items']} | {_ms(r['best_s'])} | {cells} | {r['autopar_plan']} |"
        )
    if any(min(r["runs"].values()) < repeat for r in rows):
        lines += ["", f"\\* timed once: the first run took over {SLOW_S:.0f} s."]
    text = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cluster.md").write_text(text)
    (HERE / "results" / "cluster.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    results = HERE / "RESULTS.md"
    head = results.read_text().split(MARKER)[0].rstrip() + "\n\n" if results.exists() else ""
    results.write_text(head + MARKER + "\n\n" + text.replace("# Cluster benchmark", "## Cluster benchmark", 1))
    return text


def main() -> None:
    import distributed

    from autopar.backends.dask import DaskBackend

    os.environ.setdefault("AUTOPAR_CACHE_DIR", str(Path(tempfile.mkdtemp()) / "cache"))  # not the user's store
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster)
    cluster_start_s = time.perf_counter() - t0
    try:
        backend = DaskBackend(client)
        info = backend.cluster()
        autopar.clear_cache()
        t0 = time.perf_counter()
        costs = backend.measure_costs()
        measure_s = time.perf_counter() - t0
        rows = []
        for w in WORKLOADS:
            if w.name not in NAMES or (only and w.name not in only):
                continue
            row = run_workload(w, client, repeat, quick)
            rows.append(row)
            print(
                f"{w.name:<10} best {row['best_s'] * 1e3:8.1f} ms  "
                + " ".join(f"{m}={row['ratios'][m]:.2f}" for m in METHODS + EXTRA)
                + f"  [{row['autopar_plan']}]",
                flush=True,
            )
    finally:
        client.close()
        cluster.close()
    meta = {
        "machine": f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs",
        "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True) on 127.0.0.1",
        "fingerprint": info.fingerprint,
        "cluster_start_s": cluster_start_s,
        "chunk_s": costs.chunk_s,
        "byte_s": costs.byte_s,
        "measure_s": measure_s,
        "repeat": repeat,
        "quick": quick,
        "elapsed_s": time.perf_counter() - t_all,
        "versions": {"distributed": distributed.__version__, "joblib": __import__("joblib").__version__},
    }
    print(write_results(rows, meta))


if __name__ == "__main__":
    main()
