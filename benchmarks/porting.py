"""The calls people port from Pool and joblib: a large constant, and per-worker setup.

Side by side in one run, each the median of ``BENCH_REPEAT`` interleaved repetitions
(default 3), every result checked against the serial loop:

* **large_constant**: ``partial(work, table=<40 MB numpy array>)`` over 400 items of
  ~1 ms. ``Pool.map`` as people write it (the partial pickled with every chunk),
  ``Pool`` with an initializer that sets a global (the expert's way), joblib (which
  memory-maps large arrays), and autopar (``auto_parallel(partial(...)).map``: the
  table is deposited once and mapped read-only by each worker).
* **per_worker_setup**: a 0.3 s "model load" and 400 items of ~2 ms using it.
  ``Pool(initializer=...)`` with a global, joblib with a lazily loaded global (its
  workers are reused, so each loads once), and autopar's ``setup=``.

autopar's time is its first call (plans cleared, no warm workers; the machine's
costs measured beforehand, as on any machine after its first use) and its second
call (warm). Target (issue 13): within 1.1x the best of Pool and joblib.

Run: ``python benchmarks/porting.py``. Writes ``benchmarks/results/porting.md`` and
``porting.json``.
"""

from __future__ import annotations

import functools
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

import numpy as np

import autopar
from benchmarks.porting_work import (
    ITEMS,
    TABLE_FLOATS,
    load_model,
    predict,
    predict_global,
    predict_lazy,
    set_table,
    work,
    work_global,
)
from benchmarks.porting_work import init_model as _init_model

RESULTS = Path(__file__).resolve().parent / "results"

def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _pool(fn: Callable[[Any], Any], items: list[Any], **kwargs: Any) -> list[Any]:
    with multiprocessing.Pool(**kwargs) as pool:
        return pool.map(fn, items)


def large_constant(repeat: int) -> dict[str, Any]:
    import joblib

    table = np.random.default_rng(1).random(TABLE_FLOATS)
    items = list(range(ITEMS))
    expected = [work(x, table) for x in items]
    fixed = functools.partial(work, table=table)
    methods: dict[str, Callable[[], Any]] = {
        "serial": lambda: [work(x, table) for x in items],
        "pool_partial": lambda: _pool(fixed, items),
        "pool_initializer": lambda: _pool(work_global, items, initializer=set_table, initargs=(table,)),
        "joblib": lambda: joblib.Parallel(n_jobs=-1)(joblib.delayed(work)(x, table) for x in items),
    }
    return _run("large_constant", methods, expected, lambda: autopar.auto_parallel(fixed), items, repeat)


def per_worker_setup(repeat: int) -> dict[str, Any]:
    import joblib

    items = list(range(ITEMS))
    model = load_model()
    expected = [predict(model, x) for x in items]

    def serial() -> list[int]:
        loaded = load_model()
        return [predict(loaded, x) for x in items]

    def lazy_joblib() -> list[int]:
        return joblib.Parallel(n_jobs=-1)(joblib.delayed(predict_lazy)(x) for x in items)

    methods: dict[str, Callable[[], Any]] = {
        "serial": serial,
        "pool_initializer": lambda: _pool(predict_global, items, initializer=_init_model),
        "joblib_lazy_global": lazy_joblib,
    }
    make = functools.partial(autopar.auto_parallel, predict, setup=load_model)
    return _run("per_worker_setup", methods, expected, make, items, repeat)


def _run(
    name: str,
    methods: dict[str, Callable[[], Any]],
    expected: list[Any],
    make: Callable[[], Any],
    items: list[Any],
    repeat: int,
) -> dict[str, Any]:
    times: dict[str, list[float]] = {m: [] for m in [*methods, "autopar_first", "autopar_warm"]}
    plan = ""
    for _ in range(repeat):
        for method, fn in methods.items():
            elapsed, out = _timed(fn)
            assert list(out) == expected, f"{method} gave wrong results on {name}"
            times[method].append(elapsed)
        func = make()
        func.cache_clear()
        autopar.shutdown()
        elapsed, out = _timed(functools.partial(func.map, items))
        assert out == expected, f"autopar gave wrong results on {name}"
        times["autopar_first"].append(elapsed)
        elapsed, out = _timed(functools.partial(func.map, items))
        assert out == expected
        times["autopar_warm"].append(elapsed)
        chosen = func.plan(items)
        plan = f"{chosen.executor} n={chosen.n_jobs} c={chosen.chunksize}"
        autopar.shutdown()
    medians = {m: statistics.median(v) for m, v in times.items()}
    peers = {m: s for m, s in medians.items() if m not in ("serial", "autopar_first", "autopar_warm")}
    best_peer = min(peers, key=peers.__getitem__)
    return {
        "workload": name,
        "seconds": medians,
        "best_peer": best_peer,
        "ratio_first": medians["autopar_first"] / peers[best_peer],
        "ratio_warm": medians["autopar_warm"] / peers[best_peer],
        "plan": plan,
    }


def main() -> None:
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    multiprocessing.set_start_method("fork", force=True)
    os.environ.setdefault("AUTOPAR_CACHE_DIR", str(Path(tempfile.mkdtemp()) / "cache"))
    from autopar.backends.calibration import measure_costs
    from autopar.costs import load_or_measure_costs
    from autopar.store import get_store
    from autopar.system import current_system

    load_or_measure_costs(get_store(), current_system("fork"), lambda: measure_costs("fork"))
    t0 = time.perf_counter()
    rows = [large_constant(repeat), per_worker_setup(repeat)]
    machine = f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    lines = [
        "# Benchmark: a large constant and per-worker setup, against Pool and joblib (issue 13)",
        "",
        f"Machine: {machine}. Command: `python benchmarks/porting.py` (BENCH_REPEAT={repeat}; "
        f"{(time.perf_counter() - t0) / 60:.1f} min). Median seconds of interleaved repetitions, side by side in one "
        "run; `first` is autopar's first call (no stored plan, no warm workers), `warm` its second. Ratios are to the "
        "best of Pool and joblib (target: <= 1.10).",
        "",
    ]
    for row in rows:
        cells = ", ".join(f"{m} {s:.2f} s" for m, s in row["seconds"].items())
        lines.append(
            f"- **{row['workload']}**: {cells}. autopar / best peer ({row['best_peer']}): first "
            f"**{row['ratio_first']:.2f}**, warm **{row['ratio_warm']:.2f}**; plan {row['plan']}."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "porting.md").write_text(text)
    payload = {"machine": machine, "repeat": repeat, "rows": rows}
    (RESULTS / "porting.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
