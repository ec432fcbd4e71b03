"""Threads side by side, in one run: autopar against ThreadPool, Pool and joblib, and two oracles.

For each workload of :mod:`benchmarks.thread_work` (GIL-releasing native work:
``crc_big``, ``compress_big``, ``numpy_item``; waiting work: ``sleep_wait``,
``socket_wait`` against a loopback server in a subprocess; and ``gil_bound``
pure Python), each repetition times, interleaved and on the same inputs:

* the serial loop ``[f(x) for x in xs]``;
* ``Pool(2).map(f, xs)`` with its default chunksize (``pool``, the obvious choice);
* ``joblib.Parallel(n_jobs=2)`` (loky processes, reused between calls as in any
  program) and ``joblib.Parallel(n_jobs=2, prefer="threads")``, when joblib is installed;
* the **thread oracle**: the best of ``ThreadPool(n).map(f, xs, chunksize=c)`` over
  n in 2..64 and a few chunk sizes, pool creation and join included as a user
  writes it (the best figure without the pool's start and join is kept too);
* the **process oracle**: the same grid on ``multiprocessing.Pool`` with 2 and 4
  workers (and 8 for waiting work), pool start included;
* autopar **cold** (this function's plans cleared and no warm workers; the
  machine's pool costs measured once before any workload, as on any machine after
  its first call) and **warm** (the median of the next three calls).

Every method's results are checked equal to the serial loop's. Each time is the
median over repetitions; the oracle is the best of the two oracles. Per workload
the table gives autopar warm and cold over the oracle, the speedup of autopar warm
over the serial loop, and the plan autopar ran (executor, workers, chunk size).
An autopar call that raises is reported in its row and the run carries on.

Targets: on GIL-releasing work autopar warm <= 1.05x the oracle and >= 1.7x the
serial speed; on waiting work warm <= 1.1x the thread oracle; on ``gil_bound``
autopar never plans threads.

Writes ``benchmarks/results/threads.{json,md}`` and prints the table.

Run from the repository root: ``python benchmarks/threads.py`` (~2 min a repetition
on the 2-core machine). ``BENCH_REPEAT`` sets the repetitions (default 1, each cell then a
median); ``BENCH_QUICK=1`` is a smoke run of under a minute (a third of the items, smaller grids);
``BENCH_ONLY=crc_big,gil_bound`` runs a subset; ``BENCH_START_METHOD`` the start
method of every process pool, autopar's included (default ``fork``, as in
``compare.py``); ``BENCH_LABEL`` is free text saved with the results.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import autopar
from benchmarks import thread_work as work
from benchmarks.compare import _timed
from benchmarks.converge import OtherLoad

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
#: Calls after the cold one whose median is autopar's warm time.
WARM_CALLS = 3
#: Targets, as ratios (see the module docstring).
NATIVE_TO_ORACLE = 1.05
NATIVE_SPEEDUP = 1.7
WAITING_TO_THREADS = 1.10
#: Other processes' CPUs above which a row's targets are flagged as measured on a busy
#: machine: on 2 cores, one busy core leaves no room for a 1.7x speedup.
BUSY_CPUS = 0.25
#: Methods timed besides the two grids, in the order each repetition runs them.
PEERS = ["serial", "pool", "joblib", "joblib_threads"]
AUTOPAR = ["autopar_cold", "autopar_warm"]


@dataclass(frozen=True)
class Workload:
    name: str
    note: str
    kind: str  # "native" (releases the GIL), "waiting" or "gil"
    plain: Callable[[Any], Any]
    auto: Any  # the same function decorated with autopar.auto_parallel
    make: Callable[[Bench], list[Any]]


@dataclass(frozen=True)
class Sizes:
    """Items per workload and the grids: the full run's, or BENCH_QUICK's."""

    items: dict[str, int]
    threads: tuple[int, ...]
    processes: tuple[int, ...]
    processes_waiting: tuple[int, ...]
    chunk_rules: tuple[str, ...]  # "1", "default" (Pool's ceil(len/4n)), "even" (ceil(len/n))


FULL = Sizes(
    items={
        "crc_big": 300,
        "compress_big": 100,
        "numpy_item": 300,
        "sleep_wait": 200,
        "socket_wait": 200,
        "gil_bound": 300,
    },
    threads=(2, 4, 8, 16, 32, 64),
    processes=(2, 4),
    processes_waiting=(2, 4, 8),
    chunk_rules=("1", "default", "even"),
)
QUICK = Sizes(
    items={
        "crc_big": 100,
        "compress_big": 40,
        "numpy_item": 100,
        "sleep_wait": 60,
        "socket_wait": 60,
        "gil_bound": 100,
    },
    threads=(2, 8, 32),
    processes=(2,),
    processes_waiting=(2, 4),
    chunk_rules=("1", "default"),
)


class Server:
    """The loopback server ``socket_wait`` talks to, in a subprocess of its own (off
    this process's GIL), started on first use and stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0

    def port(self) -> int:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.thread_work", "serve", str(work.SOCKET_DELAY_S)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line.strip():
                self.stop()
                raise RuntimeError("the loopback server did not start")
            self._port = int(line)
        return self._port

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Bench:
    sizes: Sizes
    server: Server


WORKLOADS = [
    Workload(
        "crc_big",
        "zlib.crc32 x3 of 1 MiB",
        "native",
        work.crc_big,
        work.auto_crc_big,
        lambda b: work.big_blobs(b.sizes.items["crc_big"]),
    ),
    Workload(
        "compress_big",
        "zlib.compress of 256 KiB",
        "native",
        work.compress_big,
        work.auto_compress_big,
        lambda b: work.text_blobs(b.sizes.items["compress_big"]),
    ),
    Workload(
        "numpy_item",
        "np.sort of 50k floats",
        "native",
        work.numpy_item,
        work.auto_numpy_item,
        lambda b: list(range(b.sizes.items["numpy_item"])),
    ),
    Workload(
        "sleep_wait",
        "time.sleep(0.01)",
        "waiting",
        work.sleep_wait,
        work.auto_sleep_wait,
        lambda b: list(range(b.sizes.items["sleep_wait"])),
    ),
    Workload(
        "socket_wait",
        "loopback request, 5 ms reply",
        "waiting",
        work.socket_wait,
        work.auto_socket_wait,
        lambda b: [(b.server.port(), i) for i in range(b.sizes.items["socket_wait"])],
    ),
    Workload(
        "gil_bound",
        "1 ms of pure Python",
        "gil",
        work.gil_bound,
        work.auto_gil_bound,
        lambda b: list(range(b.sizes.items["gil_bound"])),
    ),
]


class PlanRecorder:
    """Records the executor, workers and chunk size each autopar call ran with, and its plan's reason.

    Wraps ``autopar.run.resolve`` (called once per ``map`` with the plan, returning
    what will run), as ``benchmarks/converge.py`` does, but tolerant of its
    signature changing: recording never gets in a call's way. Without it (or when a
    call records nothing) the row falls back to ``f.plan(xs)``.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.installed = False

    def install(self) -> None:
        import autopar.run as run

        original = getattr(run, "resolve", None)
        if original is None:
            return

        @functools.wraps(original)
        def recording(*args: Any, **kwargs: Any) -> Any:
            execution = original(*args, **kwargs)
            with contextlib.suppress(Exception):
                plan = args[0] if args else kwargs.get("plan")
                config = _config(execution.executor, execution.n_jobs, execution.chunksize)
                self.seen.append((config, str(getattr(plan, "reason", ""))))
            return execution

        run.resolve = recording
        self.installed = True


def _config(executor: str, n_jobs: int, chunksize: int) -> str:
    return "serial" if executor == "serial" else f"{executor} n={n_jobs} c={chunksize}"


def _chunksizes(n_items: int, n: int, rules: tuple[str, ...]) -> list[int]:
    by_rule = {"1": 1, "default": math.ceil(n_items / (4 * n)), "even": math.ceil(n_items / n)}
    return sorted({by_rule[r] for r in rules})


def _pool_run(make_pool: Callable[[int], Any], func: Any, data: list[Any], n: int, chunksize: int | None) -> Any:
    """``make_pool(n).map`` as a user writes it; returns the results and the seconds
    the map alone took (without the pool's start, close and join)."""
    pool = make_pool(n)
    try:
        t0 = time.perf_counter()
        out = pool.map(func, data, chunksize)
        return out, time.perf_counter() - t0
    finally:
        pool.close()
        pool.join()


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _joblib() -> Any:
    try:
        import joblib
    except ImportError:
        return None
    return joblib


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _best(grid: dict[str, float]) -> tuple[str, float] | tuple[None, None]:
    return min(grid.items(), key=lambda kv: kv[1]) if grid else (None, None)


def run_workload(w: Workload, bench: Bench, repeat: int, recorder: PlanRecorder) -> dict[str, Any]:
    sizes = bench.sizes
    data = w.make(bench)
    n_items = len(data)
    expected = [w.plain(x) for x in data]
    ctx = multiprocessing.get_context()
    joblib = _joblib()
    thread_grid = [(n, c) for n in sizes.threads for c in _chunksizes(n_items, n, sizes.chunk_rules)]
    counts = sizes.processes_waiting if w.kind == "waiting" else sizes.processes
    process_grid = [(n, c) for n in counts for c in _chunksizes(n_items, n, sizes.chunk_rules)]
    times: dict[str, list[float]] = {m: [] for m in PEERS + AUTOPAR}
    grid_times: dict[str, list[float]] = {}
    map_only: dict[str, list[float]] = {}
    errors: list[str] = []
    runs: list[dict[str, Any]] = []
    load = OtherLoad()
    began = time.perf_counter()

    def check(name: str, out: Any) -> None:
        if list(out) != expected:
            raise AssertionError(f"{name} gave wrong results on {w.name}")

    for _ in range(repeat):
        peers: dict[str, Callable[[], Any]] = {
            "serial": lambda: [w.plain(x) for x in data],
            "pool": lambda: _pool_run(ctx.Pool, w.plain, data, 2, None)[0],
        }
        if joblib is not None:
            peers["joblib"] = lambda: joblib.Parallel(n_jobs=2)(joblib.delayed(w.plain)(x) for x in data)
            peers["joblib_threads"] = lambda: joblib.Parallel(n_jobs=2, prefer="threads")(
                joblib.delayed(w.plain)(x) for x in data
            )
        for name, fn in peers.items():
            elapsed, out = _timed(fn)
            check(name, out)
            times[name].append(elapsed)
        grids: list[tuple[str, Callable[[int], Any], list[tuple[int, int]]]] = [
            ("thread", multiprocessing.pool.ThreadPool, thread_grid),
            ("process", ctx.Pool, process_grid),
        ]
        for kind, make_pool, grid in grids:
            for n, c in grid:
                key = f"{kind} {n}x{c}"
                elapsed, (out, inner) = _timed(functools.partial(_pool_run, make_pool, w.plain, data, n, c))
                check(key, out)
                grid_times.setdefault(key, []).append(elapsed)
                map_only.setdefault(key, []).append(inner)
        run = _autopar_calls(w, data, expected, recorder, times, errors)
        runs.append(run)
        autopar.shutdown()  # no idle autopar workers while the next methods run
    medians = {m: _median(v) for m, v in times.items()}
    grid_medians = {k: statistics.median(v) for k, v in grid_times.items()}
    map_medians = {k: statistics.median(v) for k, v in map_only.items()}

    def best_of(kind: str, table: dict[str, float]) -> tuple[str | None, float | None]:
        return _best({k.split(" ", 1)[1]: v for k, v in table.items() if k.startswith(kind + " ")})

    thread_cfg, thread_s = best_of("thread", grid_medians)
    process_cfg, process_s = best_of("process", grid_medians)
    candidates = {f"thread {thread_cfg}": thread_s, f"process {process_cfg}": process_s}
    oracle_cfg, oracle_s = _best({k: v for k, v in candidates.items() if v is not None})
    serial_s = medians["serial"]
    warm, cold = medians["autopar_warm"], medians["autopar_cold"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    last = runs[-1]
    return {
        "workload": w.name,
        "note": w.note,
        "kind": w.kind,
        "n_items": n_items,
        "seconds": medians,
        "oracle_thread_s": thread_s,
        "oracle_thread": thread_cfg,
        "oracle_thread_map_only_s": best_of("thread", map_medians)[1],
        "oracle_process_s": process_s,
        "oracle_process": process_cfg,
        "oracle_process_map_only_s": best_of("process", map_medians)[1],
        "oracle_s": oracle_s,
        "oracle": oracle_cfg,
        "grid": grid_medians,
        "grid_map_only": map_medians,
        "ratios": {m: ratio(v, oracle_s) for m, v in medians.items()},
        "warm_to_oracle": ratio(warm, oracle_s),
        "cold_to_oracle": ratio(cold, oracle_s),
        "warm_to_thread_oracle": ratio(warm, thread_s),
        "warm_to_thread_map_only": ratio(warm, best_of("thread", map_medians)[1]),
        "speedup": ratio(serial_s, warm),
        "plan": last["plan"],
        "ran": last["ran"],
        "runs": runs,
        "errors": errors,
        "other_cpus": load.cpus(),
        "bench_s": time.perf_counter() - began,
    }


def _autopar_calls(
    w: Workload,
    data: list[Any],
    expected: list[Any],
    recorder: PlanRecorder,
    times: dict[str, list[float]],
    errors: list[str],
) -> dict[str, Any]:
    """One cold and :data:`WARM_CALLS` warm calls, then ``f.plan``; errors are noted, not raised."""
    func = w.auto
    ran: list[str] = []
    reasons: list[str] = []
    warm: list[float] = []
    with contextlib.suppress(Exception):
        func.cache_clear()
    autopar.shutdown()  # cold: no stored plan and no warm workers
    for i in range(1 + WARM_CALLS):
        label = "cold" if i == 0 else f"warm {i}"
        before = len(recorder.seen)
        try:
            elapsed, out = _timed(lambda: func.map(data))
        except Exception as exc:  # noqa: BLE001 - a library mid-change: report it and carry on
            errors.append(f"{label}: {_error(exc)}")
            ran.append("error")
            reasons.append("")
            continue
        seen = recorder.seen[before:]
        ran.append(seen[-1][0] if seen else "?")
        reasons.append(seen[-1][1] if seen else "")
        if out != expected:
            errors.append(f"{label}: wrong results")
            continue
        if i == 0:
            times["autopar_cold"].append(elapsed)
        else:
            warm.append(elapsed)
    if len(warm) == WARM_CALLS:
        times["autopar_warm"].append(statistics.median(warm))
    plan: dict[str, Any] = {}
    try:
        p = func.plan(data)
        plan = {
            "executor": p.executor,
            "n_jobs": p.n_jobs,
            "chunksize": p.chunksize,
            "reason": p.reason,
            "from_cache": p.from_cache,
            "learned": p.learned,
        }
    except Exception as exc:  # noqa: BLE001 - reported in the row
        errors.append(f"plan: {_error(exc)}")
    if ran and "?" in ran and plan:  # nothing recorded: f.plan's answer stands in
        ran = [_config(plan["executor"], plan["n_jobs"], plan["chunksize"]) if r == "?" else r for r in ran]
    return {"ran": ran, "reasons": reasons, "warm_s": warm, "plan": plan}


def _calibrate() -> None:
    """Measure the machine's pool costs once, before any timing (as converge.py does)."""
    try:
        work.auto_warmup.map(list(range(200)))
        work.auto_warmup.cache_clear()
    except Exception as exc:  # noqa: BLE001 - the workloads still run
        print(f"calibration failed: {_error(exc)}", flush=True)
    autopar.shutdown()


# -- targets and output ---------------------------------------------------------------------


def _executors(row: dict[str, Any]) -> set[str]:
    found = {r.split(" ", 1)[0] for run in row["runs"] for r in run["ran"] if r not in ("error", "?")}
    if row["plan"]:
        found.add(row["plan"]["executor"])
    return found


def targets(row: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """Each target for this row's kind, and whether it holds (None: not measured)."""

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    if row["kind"] == "native":
        speedup = row["speedup"]
        return [
            (f"warm <= {NATIVE_TO_ORACLE:.2f}x oracle", at_most(row["warm_to_oracle"], NATIVE_TO_ORACLE)),
            (f"warm >= {NATIVE_SPEEDUP:.1f}x serial speed", None if speedup is None else speedup >= NATIVE_SPEEDUP),
        ]
    if row["kind"] == "waiting":
        return [
            (
                f"warm <= {WAITING_TO_THREADS:.2f}x thread oracle",
                at_most(row["warm_to_thread_oracle"], WAITING_TO_THREADS),
            )
        ]
    executors = _executors(row)
    return [("never threads", None if not executors else "thread" not in executors)]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _verdict(ok: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "n/a"}[ok]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | serial | thread oracle | process oracle | pool | joblib | joblib threads | autopar cold "
        "| autopar warm | warm / oracle | cold / oracle | warm / thread oracle | speedup | autopar ran (warm) "
        "| other load |",
        "|---|" + "---|" * 14,
    ]
    for r in rows:
        s = r["seconds"]
        ran = r["ran"][-1] if r["ran"] else "-"
        lines.append(
            f"| {r['workload']} ({r['note']}, {r['n_items']} items) | {_ms(s['serial'])} "
            f"| {_ms(r['oracle_thread_s'])} ({r['oracle_thread']}) | {_ms(r['oracle_process_s'])} "
            f"({r['oracle_process']}) | {_ms(s['pool'])} | {_ms(s['joblib'])} | {_ms(s['joblib_threads'])} "
            f"| {_ms(s['autopar_cold'])} | {_ms(s['autopar_warm'])} | {_x(r['warm_to_oracle'])} "
            f"| {_x(r['cold_to_oracle'])} | {_x(r['warm_to_thread_oracle'])} | {_x(r['speedup'])}x "
            f"| {ran} | {r['other_cpus']:.2f} CPUs |"
        )
    return lines


def write_results(rows: list[dict[str, Any]], repeat: int, quick: bool, elapsed: float, recorded: bool) -> str:
    machine = f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    label = os.environ.get("BENCH_LABEL", "")
    library = f"autopar {autopar.__version__} from `{Path(autopar.__file__).parent}`" + (f" ({label})" if label else "")
    joblib = _joblib()
    command = ("BENCH_QUICK=1 " if quick else "") + "python benchmarks/threads.py"
    lines = [
        "# Benchmark: threads: autopar against ThreadPool, Pool and joblib" + (" (quick run)" if quick else ""),
        "",
        f"Machine: {machine}. Library: {library}. Command: `{command}` (BENCH_REPEAT={repeat}, start method "
        f"{multiprocessing.get_start_method()}; {elapsed / 60:.1f} min). Times in ms, each the median over "
        "repetitions (autopar warm: of the median of its three calls after the cold one). The thread oracle is "
        "the best `ThreadPool(n).map(f, xs, chunksize=c)` of a grid (n in "
        f"{', '.join(map(str, (QUICK if quick else FULL).threads))}), the process oracle the best "
        "`multiprocessing.Pool(n).map` of a grid, pool start and join included in both; the oracle is the better "
        "of the two. `speedup` is the serial loop's time over autopar warm. "
        + (
            "joblib " + joblib.__version__ + " (loky workers reused between calls). "
            if joblib
            else "joblib: not installed, skipped. "
        )
        + "Measured side by side in one run on a shared 2-core machine; with BENCH_REPEAT=1 each cell is one run, "
        "so differences under ~10-15% are noise. `other load`: CPUs used by other processes meanwhile (of 2).",
        "",
        *_table(rows),
        "",
        "## Targets",
        "",
    ]
    for r in rows:
        checks = "; ".join(f"{name}: {_verdict(ok)}" for name, ok in targets(r))
        busy = r["other_cpus"] > BUSY_CPUS
        note = f" (machine busy: other processes used {r['other_cpus']:.2f} CPUs meanwhile)" if busy else ""
        lines.append(f"- **{r['workload']}** ({r['kind']}): {checks}{note}")
    lines += ["", "## autopar's plans", ""]
    source = "as recorded from each call" if recorded else "from `f.plan(xs)` after the calls"
    for r in rows:
        calls = " -> ".join(r["ran"]) if r["ran"] else "-"
        plan = r["plan"]
        lines.append(f"- **{r['workload']}**: calls ({source}, last repetition): {calls}")
        cold_reason = r["runs"][-1]["reasons"][0] if r["runs"][-1]["reasons"] else ""
        if cold_reason and cold_reason != plan.get("reason"):
            lines.append(f"  - cold call's plan: {r['ran'][0]}; reason: {cold_reason}")
        if plan:
            lines.append(
                f"  - `f.plan(xs)`: {_config(plan['executor'], plan['n_jobs'], plan['chunksize'])}; "
                f"reason: {plan['reason']}"
            )
        for error in r["errors"]:
            lines.append(f"  - error: {error}")
        best_thread = r["oracle_thread_map_only_s"]
        best_process = r["oracle_process_map_only_s"]
        lines.append(
            f"  - best map alone (pool start and join excluded): ThreadPool {_ms(best_thread)} ms, "
            f"Pool {_ms(best_process)} ms; autopar warm / that ThreadPool: {_x(r['warm_to_thread_map_only'])}"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.md").write_text(text)
    payload = {
        "machine": machine,
        "library": library,
        "label": label,
        "repeat": repeat,
        "quick": quick,
        "start_method": multiprocessing.get_start_method(),
        "plans_recorded": recorded,
        "rows": [{**r, "targets": [{"target": n, "holds": ok} for n, ok in targets(r)]} for r in rows],
    }
    (RESULTS / "threads.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def _summary(row: dict[str, Any]) -> str:
    s = row["seconds"]
    ran = row["ran"][-1] if row["ran"] else "-"
    checks = ", ".join(f"{name}: {_verdict(ok)}" for name, ok in targets(row))
    text = (
        f"{row['workload']:<13} serial {_ms(s['serial']):>5} ms  thread oracle {_ms(row['oracle_thread_s']):>5} "
        f"({row['oracle_thread']})  process oracle {_ms(row['oracle_process_s']):>5} ({row['oracle_process']})  "
        f"autopar cold {_ms(s['autopar_cold'])} warm {_ms(s['autopar_warm'])} ms  warm/oracle "
        f"{_x(row['warm_to_oracle'])}  speedup {_x(row['speedup'])}x  ran {ran}  [{checks}]  "
        f"(other load {row['other_cpus']:.2f} CPUs; {row['bench_s']:.0f} s)"
    )
    if row["errors"]:
        text += "\n    autopar errors: " + " | ".join(row["errors"])
    return text


@contextlib.contextmanager
def _cache_dir() -> Iterator[None]:
    """A fresh, empty plan store for this run (unless AUTOPAR_CACHE_DIR is set), removed after."""
    if os.environ.get("AUTOPAR_CACHE_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="autopar-threads-bench-") as tmp:
        os.environ["AUTOPAR_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            yield
        finally:
            autopar.shutdown()
            del os.environ["AUTOPAR_CACHE_DIR"]


def _stop_joblib_workers() -> None:
    with contextlib.suppress(Exception):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def main() -> None:
    repeat = int(os.environ.get("BENCH_REPEAT", "1"))
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
    unknown = only - {w.name for w in WORKLOADS}
    if unknown:
        raise SystemExit(f"unknown workloads in BENCH_ONLY: {', '.join(sorted(unknown))}")
    multiprocessing.set_start_method(os.environ.get("BENCH_START_METHOD", "fork"), force=True)
    bench = Bench(QUICK if quick else FULL, Server())
    recorder = PlanRecorder()
    recorder.install()
    rows = []
    t0 = time.perf_counter()
    try:
        with _cache_dir():
            _calibrate()
            for w in WORKLOADS:
                if only and w.name not in only:
                    continue
                if w.name == "numpy_item" and not work.HAS_NUMPY:
                    print("numpy_item: skipped (numpy is not installed)", flush=True)
                    continue
                row = run_workload(w, bench, repeat, recorder)
                rows.append(row)
                print(_summary(row), flush=True)
    finally:
        autopar.shutdown()
        _stop_joblib_workers()
        bench.server.stop()
    left = multiprocessing.active_children()
    if left:
        print(f"warning: {len(left)} child processes still alive: {left}", flush=True)
    print()
    print(write_results(rows, repeat, quick, time.perf_counter() - t0, recorder.installed))


if __name__ == "__main__":
    main()
