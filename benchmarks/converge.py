"""Issue 12: do autopar's plans converge on the best? Eight calls in a row, per workload.

For every workload in :mod:`benchmarks.suite_converge`, each repetition times, side
by side in one run:

* the serial loop, ``multiprocessing.Pool().map`` (default chunksize),
  ``joblib.Parallel(n_jobs=-1)`` and mpire's ``WorkerPool().map``;
* the **oracle**: the best of a grid of worker counts x chunk sizes on a fresh
  Pool (start included), or the serial loop when that is faster;
* autopar, **eight calls in a row** after clearing this function's plans and
  stopping warm workers once: call 1 plans from a sample, later calls reuse (and
  may correct) the stored plan, on warm workers.

Each autopar call's time is reported as a ratio to the oracle, with the plan that
call ran (executor, workers, chunk size) and how often that plan still changed
after the third call: a plan that converges settles early and near 1.00. The
machine's measured pool costs are measured once before any workload (as on any
machine after its first call), so call 1 is a cold plan, not a calibration.

Writes ``benchmarks/results/converge.{md,json,png}`` and prints the table.

Run: ``make bench-converge`` (or ``python benchmarks/converge.py``; ``BENCH_REPEAT``
sets the repetitions, default 1, each cell then a median; ``BENCH_ONLY=growing,records``
runs a subset; ``BENCH_LABEL`` is free text saved with the results, e.g. the commit measured).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import autopar
from benchmarks.compare import _geomean, _grid, _mpire, _timed
from benchmarks.suite_converge import CASES, Case

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BASELINES = ["serial", "pool", "joblib", "mpire"]
#: Calls in a row per workload; plan changes are counted after :data:`SETTLE_CALL`.
CALLS = 8
SETTLE_CALL = 3
#: Grid points whose tasks would pickle the function more than this many bytes in
#: all are skipped: Pool pickles the callable with every task, so a partial binding
#: 20 MB at chunksize 1 would pickle 60 GB (minutes, and never the best).
MAX_FUNC_BYTES = 1 << 30


def _pool_map(
    ctx: Any, func: Any, data: Iterable[Any], n: int | None = None, chunksize: int | None = None
) -> list[Any]:
    """``Pool(n).map`` on a fresh pool of ``ctx``'s start method, start and join included."""
    pool = ctx.Pool(n)
    try:
        return pool.map(func, data, chunksize)
    finally:
        pool.close()
        pool.join()


class PlanRecorder:
    """Records the plan each autopar call ran with.

    Wraps ``autopar.run.resolve`` (called once per ``map``/``imap`` with the plan
    and returning what will run), because ``f.plan(...)`` afterwards re-probes and
    may land in a neighbouring time bucket, and for ``imap`` of a generator a list
    has another size bucket: neither is certain to be the plan the call used. If
    the library no longer has ``resolve``, :func:`run_case` falls back to ``f.plan``.
    """

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.installed = False

    def install(self) -> None:
        import autopar.run as run

        original = getattr(run, "resolve", None)
        if original is None:
            return

        @functools.wraps(original)
        def recording(plan: Any, **kwargs: Any) -> Any:
            execution = original(plan, **kwargs)
            self.seen.append(
                {
                    "config": _config(execution.executor, execution.n_jobs, execution.chunksize),
                    "from_cache": bool(getattr(plan, "from_cache", False)),
                    "learned": int(getattr(plan, "learned", 0)),
                    "reason": str(getattr(plan, "reason", "")),
                }
            )
            return execution

        run.resolve = recording
        self.installed = True


class OtherLoad:
    """CPUs' worth of work by processes outside this benchmark while a workload ran.

    The benchmark machine is shared: a ratio measured while something else used a
    core is not autopar's doing, so each row says how busy the rest was. Counts
    this process, its reaped children and its live ones (joblib's loky workers
    persist) as ours; the rest of the machine's busy time is someone else's.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._wall, self._busy, self._ours = self._snapshot()

    def _snapshot(self) -> tuple[float, float, dict[int, float]]:
        psutil = self._psutil
        me = psutil.Process()
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        own = me.cpu_times()
        ours = {0: own.user + own.system + own.children_user + own.children_system}
        for child in me.children(recursive=True):
            try:
                t = child.cpu_times()
            except psutil.Error:
                continue
            ours[child.pid] = t.user + t.system
        return time.monotonic(), busy, ours

    def cpus(self) -> float:
        """Average CPUs used by other processes since this object was made."""
        wall, busy, ours = self._snapshot()
        mine = sum(v - self._ours.get(pid, 0.0) for pid, v in ours.items())
        return max(0.0, (busy - self._busy - mine) / max(wall - self._wall, 1e-9))


def _config(executor: str, n_jobs: int, chunksize: int) -> str:
    return "serial" if executor == "serial" else f"{executor} n={n_jobs} c={chunksize}"


def _autopar_call(case: Case, func: Any) -> list[Any]:
    if case.mode == "imap":
        return list(func.imap(case.make()))
    return func.map(case.make())  # type: ignore[no-any-return]


def _plan_now(case: Case, func: Any) -> dict[str, Any]:
    """The stored plan via ``f.plan`` (the fallback when no call was recorded)."""
    plan = func.plan(list(case.make()))
    return {
        "config": _config(plan.executor, plan.n_jobs, plan.chunksize),
        "from_cache": plan.from_cache,
        "learned": plan.learned,
        "reason": plan.reason,
    }


def _calibrate() -> None:
    """Measure the machine's pool costs once per start method, before any timing.

    Costs are kept per machine (like plans, for a week), so only a machine's very
    first parallel plan pays for them; leaving them to whichever workload comes
    first would charge it alone.
    """
    from benchmarks.suite_converge import spawned, warmup

    for func in (warmup, spawned):
        func.map(list(range(200)))
        func.cache_clear()
    autopar.shutdown()


def run_case(case: Case, repeat: int, cpus: int, recorder: PlanRecorder) -> dict[str, Any]:
    import joblib
    from mpire import WorkerPool

    func, target = case.func(), case.raw()
    raw = func.__wrapped__
    ctx = multiprocessing.get_context("spawn" if case.spawn else "fork")
    worker_pool = functools.partial(WorkerPool, start_method="spawn") if case.spawn else WorkerPool
    expected = [raw(x) for x in case.make()]
    n_items = len(expected)
    func_bytes = len(pickle.dumps(target))
    grid = [(n, c) for n, c in _grid(n_items, cpus, io_like=False) if -(-n_items // c) * func_bytes <= MAX_FUNC_BYTES]
    times: dict[str, list[float]] = {m: [] for m in BASELINES}
    grid_times: dict[tuple[int, int], list[float]] = {p: [] for p in grid}
    call_times: list[list[float]] = [[] for _ in range(CALLS)]
    runs: list[list[dict[str, Any]]] = []
    load = OtherLoad()
    began = time.perf_counter()
    for _ in range(repeat):
        baselines: dict[str, Callable[[], Any]] = {
            "serial": lambda: [raw(x) for x in case.make()],
            "pool": lambda: _pool_map(ctx, target, case.make()),
            "joblib": lambda: joblib.Parallel(n_jobs=-1)(joblib.delayed(target)(x) for x in case.make()),
            "mpire": lambda: _mpire(worker_pool, target, case.make()),
        }
        for name, fn in baselines.items():
            elapsed, out = _timed(fn)
            assert list(out) == expected, f"{name} gave wrong results on {case.name}"
            times[name].append(elapsed)
        for n, c in grid:
            elapsed, out = _timed(lambda n=n, c=c: _pool_map(ctx, target, case.make(), n, c))
            assert out == expected, f"Pool {n}x{c} gave wrong results on {case.name}"
            grid_times[(n, c)].append(elapsed)
        func.cache_clear()
        autopar.shutdown()  # call 1 starts cold: no stored plan, no warm workers
        calls = []
        for i in range(CALLS):
            before = len(recorder.seen)
            elapsed, out = _timed(lambda: _autopar_call(case, func))
            assert out == expected, f"autopar call {i + 1} gave wrong results on {case.name}"
            call_times[i].append(elapsed)
            seen = recorder.seen[before:]
            step = dict(seen[-1]) if seen else _plan_now(case, func)
            step["seconds"] = elapsed
            step["learned_total"] = func.cache_info().learned
            calls.append(step)
        runs.append(calls)
        autopar.shutdown()  # no idle autopar workers during the next workload's baselines
    medians = {m: statistics.median(v) for m, v in times.items()}
    grid_medians = {f"{n}x{c}": statistics.median(v) for (n, c), v in grid_times.items()}
    best_grid = min(grid_medians.items(), key=lambda kv: kv[1])
    oracle = min(best_grid[1], medians["serial"])
    call_medians = [statistics.median(v) for v in call_times]
    last = runs[-1]
    configs = [step["config"] for step in last]
    return {
        "workload": case.name,
        "note": case.note,
        "n_items": n_items,
        "seconds": medians,
        "oracle_s": oracle,
        "oracle": best_grid[0] if best_grid[1] < medians["serial"] else "serial",
        "grid": grid_medians,
        "ratios": {m: medians[m] / oracle for m in BASELINES},
        "call_s": call_medians,
        "call_ratios": [t / oracle for t in call_medians],
        "changes_after": sum(a != b for a, b in zip(configs[SETTLE_CALL - 1 : -1], configs[SETTLE_CALL:], strict=True)),
        "final_plan": configs[-1],
        "final_reason": last[-1]["reason"],
        "learned": last[-1]["learned_total"],
        "other_cpus": load.cpus(),
        "bench_s": time.perf_counter() - began,
        "runs": runs,
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    calls = [f"call{i + 1}" for i in range(CALLS)]
    lines = [
        "| workload | oracle | "
        + " | ".join(BASELINES + calls)
        + f" | changes after call {SETTLE_CALL} | final plan | other load |",
        "|---|---|" + "---|" * (len(BASELINES) + CALLS) + "---|---|---|",
    ]
    for r in rows:
        cells = [f"{r['ratios'][m]:.2f}" for m in BASELINES] + [f"{v:.2f}" for v in r["call_ratios"]]
        lines.append(
            f"| {r['workload']} ({r['note']}) | {r['oracle_s'] * 1e3:.0f} ms ({r['oracle']}) | "
            + " | ".join(cells)
            + f" | {r['changes_after']} | {r['final_plan']} | {r['other_cpus']:.2f} CPUs |"
        )
    if rows:
        geo = [_geomean([r["ratios"][m] for r in rows]) for m in BASELINES]
        geo += [_geomean([r["call_ratios"][i] for r in rows]) for i in range(CALLS)]
        lines.append("| **geometric mean** | | " + " | ".join(f"**{v:.2f}**" for v in geo) + " | | | |")
    return lines


def write_results(rows: list[dict[str, Any]], repeat: int, elapsed: float, recorded: bool) -> str:
    machine = f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    label = os.environ.get("BENCH_LABEL", "")
    library = f"autopar {autopar.__version__} from `{Path(autopar.__file__).parent}`" + (f" ({label})" if label else "")
    source = "as recorded from each call" if recorded else "from `f.plan(data)` after each call"
    lines = [
        "# Benchmark: do autopar's plans converge on the best? (issue 12)",
        "",
        f"Machine: {machine}. Library: {library}. Command: `python benchmarks/converge.py` (BENCH_REPEAT={repeat}; "
        f"{elapsed / 60:.1f} min). Each cell is a time divided by the oracle's (the best of a grid of "
        "worker counts x chunk sizes on a fresh `Pool`, start included, or the serial loop when faster); "
        "lower is better, 1.00 matches the oracle. `callN` is autopar's N-th call in a row after its plans "
        "were cleared and its warm workers stopped once (the machine's pool costs were measured before "
        "any workload). Measured side by side in one run on a shared 2-core machine; with BENCH_REPEAT=1 "
        "every cell is a single run, so differences under ~15% are noise. `other load` is the CPUs other "
        "processes used on average while the row was measured (of 2).",
        "",
        *_table(rows),
        "",
        f"## Plans per call ({source}, last repetition)",
        "",
    ]
    for r in rows:
        configs = [step["config"] for step in r["runs"][-1]]
        lines.append(f"- **{r['workload']}**: " + " -> ".join(configs) + f" (plan corrections: {r['learned']})")
        lines.append(f"  - final plan's reason: {r['final_reason']}")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "converge.md").write_text(text)
    payload = {
        "machine": machine,
        "library": library,
        "label": label,
        "repeat": repeat,
        "calls": CALLS,
        "plans_recorded": recorded,
        "rows": rows,
    }
    (RESULTS / "converge.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One line per workload: autopar's call number against its time / the oracle's."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    xs = list(range(1, CALLS + 1))
    for r in rows:
        ax.plot(xs, r["call_ratios"], marker="o", label=f"{r['workload']} (oracle {r['oracle']})")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax.set_xticks(xs)
    ax.set_xlabel("autopar call number (plans cleared before call 1)")
    ax.set_ylabel("time / oracle time (log scale, lower is better)")
    ax.set_title("Do autopar's plans converge on the best? (2-core machine)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    repeat = int(os.environ.get("BENCH_REPEAT", "1"))
    only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
    unknown = only - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"unknown workloads in BENCH_ONLY: {', '.join(sorted(unknown))}")
    multiprocessing.set_start_method("fork", force=True)
    os.environ.setdefault("AUTOPAR_CACHE_DIR", str(Path(tempfile.mkdtemp()) / "cache"))
    from autopar.system import usable_cpus

    cpus = usable_cpus()
    recorder = PlanRecorder()
    recorder.install()
    t0 = time.perf_counter()
    _calibrate()
    rows = []
    for case in CASES:
        if only and case.name not in only:
            continue
        row = run_case(case, repeat, cpus, recorder)
        rows.append(row)
        print(
            f"{case.name:<14} oracle {row['oracle_s'] * 1e3:7.0f} ms ({row['oracle']:>9}) "
            + " ".join(f"{m}={row['ratios'][m]:.2f}" for m in BASELINES)
            + " calls="
            + ",".join(f"{v:.2f}" for v in row["call_ratios"])
            + f" final: {row['final_plan']} (other load {row['other_cpus']:.2f} CPUs; {row['bench_s']:.0f} s)",
            flush=True,
        )
    print(write_results(rows, repeat, time.perf_counter() - t0, recorder.installed))
    plot(rows, RESULTS / "converge.png")


if __name__ == "__main__":
    main()
