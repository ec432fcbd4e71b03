"""Why autopar decided what it decided, and, after real runs, how right it was.

:func:`explain` measures afresh (the plan cache is neither read nor written) and
returns an :class:`Explanation`, whose ``str()`` is a readable report: the
measurements, the machine's costs, the predicted time of every configuration
weighed, the choice and its reason. With ``run=True`` it also runs the whole
workload once per worker count up to the usable CPUs (1 = the serial loop), and
with the chosen plan's count when that is more, so the report adds wall
time, per-worker busy time, the overhead share and predicted against actual;
``Explanation.plot(path)`` draws predicted against measured speedup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import ProcessBackend, SerialBackend, ThreadBackend
from .backends.base import Sendable
from .backends.thread import warm_threads
from .evidence import Evidence, lower_median
from .learning import describe
from .model import format_seconds
from .plan import Plan, read_plan_record
from .planner import Options, make_plan
from .serialization import Shipment, ShippedFunction, pickle_problem
from .store import get_store
from .system import default_start_method, usable_cpus
from .thread_model import THREAD_SCALING_MIN, gil_enabled
from .workload import function_identity, key_time_bucket

__all__ = ["Explanation", "RunStats", "explain"]

#: Rows of the candidate table shown in ``str()`` (all of them are in ``to_dict()``).
_SHOWN_CANDIDATES = 12


def _fmt_b(size: float | None) -> str:
    if size is None or size != size:  # None or NaN
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@dataclass(frozen=True)
class RunStats:
    """One real run of the whole workload."""

    n_jobs: int
    chunksize: int
    wall_s: float
    busy_s: dict[int, float] = field(default_factory=dict)
    """Seconds each worker (by pid) spent computing."""

    @property
    def overhead_share(self) -> float:
        """Share of the workers' wall time not spent computing (start-up, transfer, idling)."""
        if not self.busy_s or self.wall_s <= 0:
            return 0.0
        return max(0.0, 1.0 - sum(self.busy_s.values()) / (self.wall_s * self.n_jobs))


@dataclass
class Explanation:
    """A report on one planning decision; ``str()`` reads well, ``to_dict()`` for machines."""

    function: str
    n_items: int
    plan: Plan
    profile: dict[str, Any]
    runs: dict[int, RunStats] = field(default_factory=dict)
    """Real runs by worker count (1 = the serial loop, and the chosen plan's), when ``run=True``."""

    @property
    def serial_s(self) -> float:
        """The serial loop's predicted time."""
        return float(self.profile.get("serial_s", 0.0))

    def predicted_speedups(self) -> dict[int, float]:
        """Best predicted speedup for each worker count weighed (1 is the serial loop)."""
        speedups = {1: 1.0}
        executor = self.plan.executor if self.plan.executor == "thread" else "process"
        for cand in self.profile.get("candidates", []):
            if cand["predicted_s"] > 0 and cand.get("executor", "process") == executor:
                speedups[cand["n_jobs"]] = self.serial_s / cand["predicted_s"]
        return speedups

    def measured_speedups(self) -> dict[int, float]:
        """Measured speedup for each worker count run (empty without ``run=True``)."""
        if 1 not in self.runs:
            return {}
        base = self.runs[1].wall_s
        return {n: base / r.wall_s for n, r in sorted(self.runs.items()) if r.wall_s > 0}

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report as plain data."""
        return {
            "function": self.function,
            "n_items": self.n_items,
            "plan": {
                "executor": self.plan.executor,
                "n_jobs": self.plan.n_jobs,
                "chunksize": self.plan.chunksize,
                "estimated_speedup": self.plan.estimated_speedup,
                "reason": self.plan.reason,
                "warnings": list(self.plan.warnings),
            },
            "profile": self.profile,
            "runs": {
                n: {
                    "chunksize": r.chunksize,
                    "wall_s": r.wall_s,
                    "busy_s": r.busy_s,
                    "overhead_share": r.overhead_share,
                }
                for n, r in self.runs.items()
            },
            "predicted_speedups": self.predicted_speedups(),
            "measured_speedups": self.measured_speedups(),
        }

    def __str__(self) -> str:
        p, s, c = self.plan, self.profile["sample"], self.profile["costs"]
        cv = "unknown" if s["cv"] is None else f"{s['cv']:.2f}"
        method = self.profile["system"]["start_method"]
        lines = [
            f"autopar explain: {self.function} over {self.n_items:,} items",
            f"measured ({s['n_timed']} items timed): {format_seconds(s['mean_s'])} per item "
            f"(median {format_seconds(s['median_s'])}, spread cv {cv}), CPU {100 * s['cpu_fraction']:.0f} % of wall",
            f"transfer per item: {_fmt_b(s['in_bytes'])} in, {_fmt_b(s['out_bytes'])} out; "
            f"pickling {format_seconds(s['pickle_s'])}",
            f"the function itself: {_fmt_b(self.profile.get('chunk_bytes', 0.0))} with every chunk, "
            f"{_fmt_b(self.profile.get('worker_load_bytes', 0.0))} read once by each worker",
            f"machine costs ({method}, {'measured' if c['measured'] else 'built-in priors'}): worker start "
            f"{format_seconds(c['worker_start_s'])}, chunk round trip {format_seconds(c['chunk_s'])}, "
            f"{c['byte_s'] * 1e9:.2f} ns per byte",
            _threads_line(self.profile),
            f"predictions (serial loop {format_seconds(self.serial_s)}):",
            "  executor  workers  chunksize    predicted   speedup",
        ]
        considered = sorted(self.profile.get("considered", []), key=lambda x: x["predicted_s"])

        def is_chosen(cand: dict[str, Any]) -> bool:
            same = (cand.get("executor", "process"), cand["n_jobs"], cand["chunksize"])
            return p.executor in ("process", "thread") and same == (p.executor, p.n_jobs, p.chunksize)

        shown = considered[:_SHOWN_CANDIDATES]
        # The choice is the fewest workers within NEAR_BEST of the fastest: more than a
        # table's worth of configurations may be predicted faster, yet it is always shown.
        shown += [cand for cand in considered[_SHOWN_CANDIDATES:] if is_chosen(cand)]
        for cand in shown:
            speedup = self.serial_s / cand["predicted_s"] if cand["predicted_s"] > 0 else 0.0
            lines.append(
                f"  {_EXECUTOR_NAMES.get(cand.get('executor', 'process'), '?'):>8}  "
                f"{cand['n_jobs']:>7}  {cand['chunksize']:>9}  {format_seconds(cand['predicted_s']):>11}  "
                f"{speedup:>7.2f}x{'  <- chosen' if is_chosen(cand) else ''}"
            )
        if len(considered) > len(shown):
            lines.append(f"  ... {len(considered) - len(shown)} more in to_dict()")
        unit = "threads" if p.executor == "thread" else "workers"
        choice = "serial" if p.executor == "serial" else f"{p.n_jobs} {unit}, chunks of {p.chunksize}"
        lines += [f"decision: {choice}", f"why: {p.reason}"]
        for warning in p.warnings:
            lines.append(f"warning: {warning}")
        stored = self.profile.get("stored")
        if stored:
            lines.append(f"stored plan (what calls run now): {stored['reason']}")
            for config, runs in stored["evidence"].items():
                lines.append(
                    f"  {describe(config)}: {runs['runs']} real run(s), "
                    f"{format_seconds(runs['wall_per_item_s'])} per item (lower median)"
                )
        if self.runs:
            chosen_n = p.n_jobs if p.executor in ("process", "thread") else 1
            run = self.runs.get(chosen_n)
            lines.append("after real runs:")
            if run is not None:
                predicted = self.profile["predicted_s"]
                off = 100.0 * (run.wall_s - predicted) / predicted if predicted > 0 else 0.0
                lines.append(
                    f"  chosen plan: wall {format_seconds(run.wall_s)} "
                    f"(predicted {format_seconds(predicted)}, {off:+.0f} %)"
                )
                if run.busy_s:
                    busy = ", ".join(f"pid {pid} {format_seconds(b)}" for pid, b in sorted(run.busy_s.items()))
                    lines.append(f"  worker busy time: {busy}; overhead share {100 * run.overhead_share:.1f} %")
            measured = self.measured_speedups()
            predicted_by_n = self.predicted_speedups()
            lines.append(
                "  speedup by workers (measured / predicted): "
                + ", ".join(f"{n}: {m:.2f}x / {predicted_by_n.get(n, float('nan')):.2f}x" for n, m in measured.items())
            )
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw predicted (line) and measured (points) speedup against worker count to a PNG."""
        try:
            import matplotlib
        except ImportError:
            msg = "plotting needs matplotlib: pip install 'autopar[plot]'"
            raise ImportError(msg) from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        predicted = sorted(self.predicted_speedups().items())
        measured = sorted(self.measured_speedups().items())
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot([n for n, _ in predicted], [s for _, s in predicted], "o-", label="predicted (best chunk size)")
        if measured:
            ax.plot([n for n, _ in measured], [s for _, s in measured], "s", markersize=9, label="measured")
        top = max(n for n, _ in predicted)
        ax.plot([1, top], [1, top], ":", color="grey", label="ideal")
        ax.set_xlabel("worker processes")
        ax.set_ylabel("speedup over the serial loop")
        ax.set_xticks(range(1, top + 1))
        ax.set_title(f"{self.function}: {self.n_items:,} items")
        ax.legend()
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _timed_run(
    func: Callable[[Any], Any], send: Sendable, items: list[Any], n: int, c: int, executor: str = "process"
) -> RunStats:
    if n == 1:
        t0 = time.perf_counter()
        SerialBackend().map(func, items)
        wall = time.perf_counter() - t0
        return RunStats(1, 1, wall, {os.getpid(): wall})
    busy: dict[int, float] = {}
    t0 = time.perf_counter()
    if executor == "thread":
        ThreadBackend().map(func, items, start=0, n_jobs=n, chunksize=c, busy=busy)
    else:
        ProcessBackend(default_start_method()).map(send, items, start=0, n_jobs=n, chunksize=c, busy=busy)
    return RunStats(n, c, time.perf_counter() - t0, busy)


def explain(func: Callable[[Any], Any], items: Iterable[Any], *, run: bool = False) -> Explanation:
    """Measure ``func`` on ``items`` and report the decision (see the module doc).

    >>> report = explain(abs, range(-2000, 2000))
    >>> report.plan.executor
    'serial'
    """
    from .run import Call, as_sequence

    data = list(as_sequence(items))
    call = getattr(func, "call", None)
    send: Sendable | None
    if hasattr(func, "_autopar_raw") and callable(call):  # an @auto_parallel function
        values: Call = call()
        raw: Callable[[Any], Any] = values.func
        send = values.shipment() if values.ship_problem() is None else None
        options = replace(values.options, use_cache=False)
        executors = values.target.executors
    else:
        raw, options = func, Options(use_cache=False)
        executors = ("thread", "process")
        send = func if pickle_problem(func) is None else None
        if send is not None and not _importable(func):
            send = ShippedFunction(func)
    name, digest = function_identity(raw)
    measure = ProcessBackend(options.start_method or default_start_method()).measure_costs
    shipped = send if isinstance(send, Shipment) else None
    planned = make_plan(
        raw, name, digest, iter(data), len(data), options, get_store(), profile=True, measure=measure, items=data,
        ship_bytes=None if shipped is None else (lambda: (shipped.chunk_bytes, shipped.once_bytes)),
        executors=executors, warm_threads=warm_threads,
    )  # fmt: skip
    plan = planned.plan
    profile = plan.profile or {}
    if not profile:  # every item was evaluated while measuring: nothing to weigh
        profile = {"sample": planned.sampler.summary().to_dict(), "costs": {}, "system": {}, "serial_s": 0.0}
    stored = _stored_evidence(planned.key, options)
    if stored is not None:
        profile = {**profile, "stored": stored}
    report = Explanation(name, len(data), plan, profile)
    threads = plan.executor == "thread"
    if run and (send is not None or threads) and profile.get("candidates") is not None:
        executor = "thread" if threads else "process"
        best_chunk = {
            cand["n_jobs"]: cand["chunksize"]
            for cand in profile["candidates"]
            if cand.get("executor", "process") == executor
        }
        # Every worker count up to the CPUs, and the chosen one: waiting work may be
        # planned on more workers than CPUs, and the report compares that plan's run.
        counts = set(range(2, min(usable_cpus(), len(data)) + 1))
        if plan.executor in ("process", "thread"):
            counts.add(plan.n_jobs)
        report.runs[1] = _timed_run(raw, raw, data, 1, 1)
        for n in sorted(counts):
            size = best_chunk.get(n, max(1, len(data) // (4 * n)))
            report.runs[n] = _timed_run(raw, send if send is not None else raw, data, n, size, executor)
    return report


#: How the predictions table names each executor.
_EXECUTOR_NAMES = {"process": "process", "thread": "thread"}


def _threads_line(profile: dict[str, Any]) -> str:
    """What the two-thread measurement said, and whether this Python has a GIL."""
    scaling = profile.get("thread_scaling")
    build = "" if gil_enabled() else "; free-threaded Python, the GIL is off"
    if scaling is None:
        return f"threads: not measured (not allowed, too little work to matter, or no clear reading){build}"
    verdict = "releases the GIL" if scaling >= THREAD_SCALING_MIN else "holds the GIL: threads are not weighed"
    return f"threads: {scaling:.2f}x on 2 threads ({verdict}){build}"


def _stored_evidence(key: str, options: Options) -> dict[str, Any] | None:
    """The plan stored under ``key`` (or a neighbouring time bucket's, as ``.map``
    looks them up) and the real runs behind it, or None."""
    prefix, bucket = key.rsplit(":t", 1)[0], key_time_bucket(key)
    for near in (bucket, bucket - 1, bucket + 1):
        text = get_store().get(f"{prefix}:t{near}")
        record = read_plan_record(text, usable_cpus=usable_cpus(), max_workers=options.max_workers)
        if record is not None:
            break
    else:
        return None
    evidence = Evidence.from_record(record.workload.get("evidence"))
    runs = {config: {"runs": r.count, "wall_per_item_s": lower_median(r.wall)} for config, r in evidence.runs.items()}
    return {"reason": record.reason, "learned": record.learned, "evidence": runs, "trials": evidence.trials}


def _importable(func: Callable[[Any], Any]) -> bool:
    import pickle

    try:
        pickle.dumps(func)
    except Exception:  # noqa: BLE001
        return False
    return True
