"""The cost model: pure arithmetic from measurements to a plan (no clocks, no I/O).

For ``n`` workers and chunks of ``c`` items, a run is predicted to take::

    n * worker_start                                  start and stop the workers
  + max( ceil(K / n) * chunk_time + Z * cv * t * sqrt(c)   the busiest worker
       , parent_busy                                       the parent's own pickling
       , cpu_total / cores )                               everyone sharing the cores

with ``K = ceil(N / c)`` chunks, ``chunk_time = c * (t + per-item transfer) +
chunk_overhead`` and ``t`` the mean per-item time. The serial loop takes ``N * t``.
Every candidate ``n`` in ``2..min(cpus, N)`` and a handful of chunk sizes is scanned;
parallel wins only when predicted clearly faster (:data:`MIN_SPEEDUP`). Threads in
this process are weighed the same way when the sample measured that the work
scales on them (:mod:`autopar.thread_model`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .thread_model import THREAD_SCALING_MIN, predict_threads, thread_counts, thread_limit

__all__ = [
    "MIN_SPEEDUP",
    "EXECUTORS",
    "Candidate",
    "Costs",
    "Decision",
    "Workload",
    "choose_plan",
    "format_seconds",
    "memory_needed",
    "predict_parallel",
    "worker_limit",
    "prelude",
    "prior_costs",
    "start_cost",
    "threads_scale",
]

Executor = Literal["serial", "process", "thread"]
#: Parallel executors ``choose_plan`` may weigh, in the order ties are broken:
#: threads first (no copies, no processes), when they are as fast.
EXECUTORS = ("thread", "process")

#: Parallel is chosen only when predicted at least this much faster than the serial
#: loop. Predictions on a shared machine are off by ~10-20 %, and the serial loop is
#: the user's risk-free alternative: autopar must never make them slower.
MIN_SPEEDUP = 1.2
#: Every worker gets at least this many chunks, so a worker that draws slow items
#: can be caught up by the others (multiprocessing.Pool uses the same factor).
MIN_CHUNKS_PER_WORKER = 4
#: The slowest of the final chunks runs about this many standard deviations of a
#: chunk's time past the mean (the expected maximum of a few normal draws is ~2).
VARIANCE_Z = 2.0
#: Coefficient of variation assumed when fewer than three items were timed: the
#: spread is unknown, so assume items are uneven and keep chunks small.
PRIOR_CV = 0.5
#: When the input's length is unknown (a stream), chunks aim at this many seconds
#: of work: long enough that a ~50 us round trip is 0.1 % overhead, short enough
#: that results keep flowing and the last chunks do not leave workers idle.
STREAM_CHUNK_S = 0.05
#: No chunk carries more than this many seconds of work, whatever the length: at
#: ~50 us per round trip the overhead is already under 0.03 %, and bigger chunks
#: only cost memory (a chunk is a list in both processes) and end-of-run balance.
MAX_CHUNK_S = 0.2
#: Length assumed for a stream of unknown length when weighing start-up costs.
STREAM_ASSUMED_ITEMS = 10_000
#: Items whose CPU time is below this share of their wall time mostly wait (disk,
#: network, sleep): more workers than cores then overlap the waits.
IO_BOUND_CPU_FRACTION = 0.5
#: For such items, weigh up to this many workers per usable CPU...
IO_WORKERS_PER_CPU = 4
#: ...and never more than this many in all, unless ``max_workers`` says otherwise:
#: each worker is a whole process (memory, start time, file descriptors).
MAX_IO_WORKERS = 32
#: Workers and their chunks may use at most this share of the available memory,
#: and results collected by ``map`` should fit in it too: the rest is the
#: caller's, the OS page cache's, and a margin for estimates that run low.
MEMORY_SHARE = 0.5
#: Among worker counts predicted within this fraction of the best time, the
#: smallest wins: it leaves cores free for the rest of the machine at no real cost.
NEAR_BEST = 0.03


@dataclass(frozen=True)
class Costs:
    """The machine's own costs of running work in worker processes, in seconds."""

    worker_start_s: float
    """Starting and later stopping one worker (the pool's share per worker)."""
    chunk_s: float
    """One chunk's round trip: queueing, pipe writes, the result handler's wake-up."""
    byte_s: float
    """Moving one pickled byte between processes (each direction)."""
    measured: bool = False
    """True when measured on this machine, False for the built-in priors."""


#: Priors used until this machine's costs are measured (and to decide, without
#: measuring, that a tiny workload is serial). From a 2-core Linux machine:
#: fork ~35 ms, forkserver ~83 ms, spawn ~91 ms to start two workers.
#: Most items in one chunk (matches the clamp applied to stored plans).
_MAX_CHUNK_ITEMS = 1 << 20
_PRIOR_START_S = {"fork": 0.018, "forkserver": 0.042, "spawn": 0.046}
_PRIOR_CHUNK_S = 60e-6
_PRIOR_BYTE_S = 1e-9


def prior_costs(start_method: str) -> Costs:
    """Conservative built-in costs for a start method, before any measurement."""
    return Costs(
        worker_start_s=_PRIOR_START_S.get(start_method, 0.05),
        chunk_s=_PRIOR_CHUNK_S,
        byte_s=_PRIOR_BYTE_S,
        measured=False,
    )


@dataclass(frozen=True)
class Workload:
    """What the sample says about the work: sizes, times and spread."""

    n_items: int | None
    item_s: float
    cv: float | None = None
    cpu_fraction: float = 1.0
    in_bytes: float = 0.0
    out_bytes: float = 0.0
    pickle_s: float = 0.0
    worker_bytes: float = 0.0
    """Memory one worker process needs before any item (its interpreter, imports)."""
    chunk_bytes: float = 0.0
    """Pickled bytes sent with every chunk besides its items: the function itself
    when it travels by value (a ``partial`` holding a large table)."""
    worker_load_bytes: float = 0.0
    """Pickled bytes each worker reads once before its first item: a large function
    deposited once (:mod:`autopar.depot`) instead of riding every chunk."""
    worker_setup_s: float = 0.0
    """Seconds each worker spends in the function's per-worker setup before its first item."""
    serial_item_s: float | None = None
    """Seconds per item in the caller's own loop, when it differs from a worker's
    (native thread pools: the caller's BLAS uses every core, a worker's one)."""
    thread_scaling: float | None = None
    """How much faster two threads in this process ran items than one (~1: the work
    holds the GIL; ~2: it releases it); None when not measured."""

    def to_record(self, time_bucket: int, size_bucket: str) -> dict[str, Any]:
        """The plain dict stored with a plan (what it was made from)."""
        return {
            "n_items": self.n_items,
            "size_bucket": size_bucket,
            "time_bucket": time_bucket,
            "item_s": self.item_s,
            "cv": self.cv,
            "cpu_fraction": self.cpu_fraction,
            "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes,
            "pickle_s": self.pickle_s,
            "chunk_bytes": self.chunk_bytes,
            "worker_load_bytes": self.worker_load_bytes,
            "worker_setup_s": self.worker_setup_s,
            "serial_item_s": self.serial_item_s,
            "thread_scaling": self.thread_scaling,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], *, n_items: int | None, item_s: float) -> Workload:
        """A workload read back from a stored plan's dict (untrusted: numbers checked)."""

        def num(name: str, default: float) -> float:
            value = record.get(name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            return float(value) if ok else default  # type: ignore[arg-type]

        cv = record.get("cv")
        cv_ok = isinstance(cv, (int, float)) and not isinstance(cv, bool) and math.isfinite(cv)
        return cls(
            n_items=n_items,
            item_s=item_s,
            cv=float(cv) if cv_ok else None,  # type: ignore[arg-type]
            cpu_fraction=num("cpu_fraction", 1.0),
            in_bytes=num("in_bytes", 0.0),
            out_bytes=num("out_bytes", 0.0),
            pickle_s=num("pickle_s", 0.0),
            chunk_bytes=num("chunk_bytes", 0.0),
            worker_load_bytes=num("worker_load_bytes", 0.0),
            worker_setup_s=num("worker_setup_s", 0.0),
            serial_item_s=num("serial_item_s", -1.0) if num("serial_item_s", -1.0) > 0 else None,
            thread_scaling=num("thread_scaling", -1.0) if num("thread_scaling", -1.0) > 0 else None,
        )


@dataclass(frozen=True)
class Candidate:
    """One configuration the model weighed, with its predicted wall time."""

    n_jobs: int
    chunksize: int
    predicted_s: float
    executor: str = "process"
    """``process`` (worker processes) or ``thread`` (threads in this process)."""


@dataclass(frozen=True)
class Decision:
    """The model's choice, its prediction and the alternatives it weighed."""

    executor: Executor
    n_jobs: int
    chunksize: int
    predicted_s: float
    serial_s: float
    reason: str
    candidates: tuple[Candidate, ...] = ()
    """The best chunk size for each worker count weighed."""
    considered: tuple[Candidate, ...] = ()
    """Every (workers, chunk size) pair weighed, for reports."""
    warnings: tuple[str, ...] = ()
    """Problems the caller should hear about (results that will not fit in memory)."""

    @property
    def estimated_speedup(self) -> float:
        """Predicted serial time over predicted time of the chosen plan."""
        if self.executor == "serial" or self.predicted_s <= 0:
            return 1.0
        return self.serial_s / self.predicted_s


def _finite(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) and value >= 0 else default


def start_cost(costs: Costs, n_jobs: int, warm: int = 0) -> float:
    """Seconds the parent spends starting ``n_jobs`` workers: none when a pool of that
    size is warm."""
    return 0.0 if warm == n_jobs else n_jobs * costs.worker_start_s


def prelude(w: Workload, costs: Costs, n_jobs: int, warm: int = 0) -> float:
    """Seconds each new worker spends before its first item, all of them at once:
    reading the function it is sent once, and running its setup."""
    if warm == n_jobs:
        return 0.0
    return _finite(w.worker_load_bytes) * costs.byte_s + _finite(w.worker_setup_s)


def _start(w: Workload, costs: Costs, n_jobs: int, warm: int) -> float:
    return start_cost(costs, n_jobs, warm)


def predict_parallel(w: Workload, costs: Costs, n_jobs: int, chunksize: int, cores: int, warm: int = 0) -> float:
    """Predicted wall seconds for ``n_jobs`` workers and chunks of ``chunksize``
    (``warm``: the size of a pool already running, whose start costs nothing)."""
    n_items = w.n_items if w.n_items is not None else STREAM_ASSUMED_ITEMS
    if n_items <= 0:
        return _start(w, costs, n_jobs, warm)
    t = _finite(w.item_s)
    cv = PRIOR_CV if w.cv is None else _finite(w.cv)
    transfer = (_finite(w.in_bytes) + _finite(w.out_bytes)) * costs.byte_s
    half_pickle = _finite(w.pickle_s) / 2
    n_chunks = math.ceil(n_items / chunksize)
    # Per chunk: the round trip, and the function's own bytes when it travels with each.
    chunk_s = costs.chunk_s + _finite(w.chunk_bytes) * costs.byte_s

    per_item_worker = t + half_pickle + transfer
    chunk_time = chunksize * per_item_worker + chunk_s
    # Chunks go to whichever worker is free, so with equal chunks the busiest worker
    # does ``rounds`` or ``rounds + 1`` of them; a short last chunk lands on a worker
    # that has one chunk fewer, and only adds time when all have the same count.
    full, rest = divmod(n_items, chunksize)
    rounds, extra = divmod(full, n_jobs)
    if extra:
        busiest = (rounds + 1) * chunk_time
    else:
        busiest = rounds * chunk_time + (rest * per_item_worker + chunk_s if rest else 0.0)
    busiest += VARIANCE_Z * cv * t * math.sqrt(chunksize)
    # Every new worker reads the function and runs its setup before its first item,
    # concurrently with the others: the busiest worker waits for its own once.
    first = prelude(w, costs, n_jobs, warm)
    busiest += first
    parent_busy = n_items * (half_pickle + transfer) + n_chunks * chunk_s
    cpu_fraction = min(1.0, _finite(w.cpu_fraction, 1.0))
    # ``byte_s`` is measured per byte and direction with both ends' work in it (the
    # parent waits while a payload goes there and back), so transfer counts once.
    cpu_total = n_items * (t * cpu_fraction + 2 * half_pickle + transfer) + 2 * n_chunks * chunk_s + n_jobs * first
    run = max(busiest, parent_busy, cpu_total / max(1, cores))
    return _start(w, costs, n_jobs, warm) + run


def _chunk_candidates(n_items: int | None, n_jobs: int, item_s: float) -> Iterator[int]:
    """Chunk sizes worth weighing: powers of two up to the cap, and even splits."""
    target_s = STREAM_CHUNK_S if n_items is None else MAX_CHUNK_S
    per_target = target_s / item_s if item_s > 0 else math.inf
    cap = max(1, int(per_target)) if per_target < _MAX_CHUNK_ITEMS else _MAX_CHUNK_ITEMS
    if n_items is not None:
        cap = max(1, min(cap, math.ceil(n_items / (n_jobs * MIN_CHUNKS_PER_WORKER))))
    size = 1
    while size < cap:
        yield size
        size *= 2
    yield cap
    if n_items is not None:
        for per_worker in (MIN_CHUNKS_PER_WORKER, 8, 16, 32, 64, 128):
            yield max(1, min(cap, math.ceil(n_items / (n_jobs * per_worker))))


def format_seconds(seconds: float) -> str:
    """``1.23 s``, ``4.5 ms`` or ``67.8 us``: the unit every reason and report uses."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def worker_limit(usable_cpus: int, max_workers: int | None, *, io_bound: bool) -> int:
    """Most workers a plan may use: the usable CPUs, more for waiting work.

    ``max_workers``, when given, is the limit for waiting work and caps CPU work.
    """
    cpus = max(1, usable_cpus)
    if io_bound:
        if max_workers is not None:
            return max(1, max_workers)
        return max(cpus, min(MAX_IO_WORKERS, IO_WORKERS_PER_CPU * cpus))
    return cpus if max_workers is None else max(1, min(cpus, max_workers))


def memory_needed(w: Workload, n_jobs: int, chunksize: int) -> float:
    """Bytes ``n_jobs`` workers need: each process, plus a chunk's items and results
    held on both sides of the pipe (pickled and unpickled)."""
    per_chunk = 2 * chunksize * (_finite(w.in_bytes) + _finite(w.out_bytes))
    return n_jobs * (_finite(w.worker_bytes) + per_chunk)


def _best_per_worker_count(
    w: Workload, costs: Costs, limit: int, usable_cpus: int, budget: float, considered: list[Candidate], warm: int
) -> list[Candidate]:
    """For each worker count from 2 to ``limit``, its fastest chunk size that fits in
    memory (ties go to the larger chunk); every pair weighed is added to ``considered``."""
    best_per_n: list[Candidate] = []
    for n_jobs in range(2, limit + 1):
        best: Candidate | None = None
        for chunksize in sorted(set(_chunk_candidates(w.n_items, n_jobs, _finite(w.item_s)))):
            if memory_needed(w, n_jobs, chunksize) > budget:
                continue
            predicted = predict_parallel(w, costs, n_jobs, chunksize, usable_cpus, warm)
            considered.append(Candidate(n_jobs, chunksize, predicted))
            if (
                best is None
                or predicted < best.predicted_s
                or (predicted == best.predicted_s and chunksize > best.chunksize)
            ):
                best = Candidate(n_jobs, chunksize, predicted)
        if best is not None:
            best_per_n.append(best)
    return best_per_n


def _why_this_many(
    choice: Candidate, best_per_n: list[Candidate], limit: int, usable_cpus: int, cpu_fraction: float
) -> str:
    """The reason's tail when memory capped the workers, or waiting work exceeds the CPUs."""
    waits = ""
    if max(c.n_jobs for c in best_per_n) < limit:
        waits = f"; memory allows at most {max(c.n_jobs for c in best_per_n)} workers"
    if choice.n_jobs > usable_cpus:
        waits = (
            f"; I/O-bound (CPU {cpu_fraction:.0%} of wall time), so {choice.n_jobs} workers "
            f"on {max(1, usable_cpus)} CPUs overlap the waits"
        )
    return waits


def _best_threads(
    w: Workload, limit: int, usable_cpus: int, considered: list[Candidate], warm_threads: int
) -> list[Candidate]:
    """For each thread count weighed, its fastest chunk size (ties go to the larger)."""
    best_per_n: list[Candidate] = []
    for n_threads in thread_counts(limit, w.n_items):
        best: Candidate | None = None
        for chunksize in sorted(set(_chunk_candidates(w.n_items, n_threads, _finite(w.item_s)))):
            predicted = predict_threads(w, n_threads, chunksize, usable_cpus, warm_threads)
            candidate = Candidate(n_threads, chunksize, predicted, "thread")
            considered.append(candidate)
            if (
                best is None
                or predicted < best.predicted_s
                or (predicted == best.predicted_s and chunksize > best.chunksize)
            ):
                best = candidate
        if best is not None:
            best_per_n.append(best)
    return best_per_n


def _near_best(best_per_n: list[Candidate]) -> Candidate:
    """The fewest workers (or threads) predicted within :data:`NEAR_BEST` of the fastest."""
    fastest = min(c.predicted_s for c in best_per_n)
    return next(c for c in best_per_n if c.predicted_s <= fastest * (1 + NEAR_BEST))


def threads_scale(w: Workload) -> bool:
    """True when the sample measured that the work runs faster on threads."""
    return w.thread_scaling is not None and w.thread_scaling >= THREAD_SCALING_MIN


def _thread_note(w: Workload) -> str:
    """What the two-thread measurement said, for reasons."""
    if w.thread_scaling is None:
        return ""
    if threads_scale(w):
        return f"releases the GIL: {w.thread_scaling:.2f}x on 2 threads"
    return f"holds the GIL: {w.thread_scaling:.2f}x on 2 threads, so no threads"


def choose_plan(
    w: Workload,
    costs: Costs,
    *,
    usable_cpus: int,
    max_workers: int | None = None,
    memory_bytes: float | None = None,
    warm: int = 0,
    executors: tuple[str, ...] = ("process",),
    warm_threads: int = 0,
) -> Decision:
    """The best plan the model can find: serial, or executor, worker count and chunk size.

    ``warm`` is the size of a pool already running: starting it costs nothing.
    ``executors`` are the parallel executors allowed (``process``, ``thread``);
    threads are weighed only when ``w.thread_scaling`` says the work scales on them.

    Guarantees, property-tested: ``1 <= n_jobs <= min(limit, n_items)`` (the usable
    CPUs for CPU work, more for waiting work), ``chunksize >= 1``, never threads for
    work measured not to scale on them, and serial whenever the whole serial run is
    shorter than starting two workers.
    """
    n_items = w.n_items
    t = _finite(w.item_s)
    effective_n = n_items if n_items is not None else STREAM_ASSUMED_ITEMS
    serial_t = t if w.serial_item_s is None else _finite(w.serial_item_s, t)
    serial_s = effective_n * serial_t
    cpu_fraction = min(1.0, _finite(w.cpu_fraction, 1.0))
    io_bound = cpu_fraction < IO_BOUND_CPU_FRACTION
    use_processes = "process" in executors
    use_threads = "thread" in executors and threads_scale(w)
    limit = worker_limit(usable_cpus, max_workers, io_bound=io_bound) if use_processes else 1
    threads = thread_limit(usable_cpus, max_workers, io_bound=io_bound) if use_threads else 1
    if n_items is not None:
        limit = min(limit, max(1, n_items))
        threads = min(threads, max(1, n_items))

    budget = MEMORY_SHARE * memory_bytes if memory_bytes is not None and memory_bytes > 0 else math.inf
    warnings: tuple[str, ...] = ()
    results_bytes = effective_n * _finite(w.out_bytes)
    if n_items is not None and results_bytes > budget:
        warnings = (
            f"the results of .map need about {results_bytes / 2**20:,.0f} MiB, more than half the "
            f"{(memory_bytes or 0) / 2**20:,.0f} MiB available; use .imap to stream them",
        )
    note = _thread_note(w) if "thread" in executors else ""

    def serial(reason: str, candidates: tuple[Candidate, ...] = ()) -> Decision:
        reason = f"{reason}; {note}" if note else reason
        return Decision("serial", 1, 1, serial_s, serial_s, reason, candidates, tuple(considered), warnings)

    considered: list[Candidate] = []

    if n_items is not None and n_items <= 1:
        return serial(f"serial: {n_items} item(s), nothing to split")
    if limit < 2 and threads < 2:
        why = "max_workers allows one" if max_workers is not None and max_workers < 2 else "1 CPU is usable"
        if not use_processes and not use_threads:
            why = "threads are the only executor allowed, and "
            why += "they were not measured" if w.thread_scaling is None else "the work does not scale on them"
        return serial(f"serial: only one worker possible ({why})")

    best_per_n = _best_per_worker_count(w, costs, limit, usable_cpus, budget, considered, warm) if limit >= 2 else []
    best_threads = _best_threads(w, threads, usable_cpus, considered, warm_threads) if threads >= 2 else []
    if not best_per_n and not best_threads:
        return serial(
            f"serial: {(memory_bytes or 0) / 2**20:,.0f} MiB available is not enough for two workers "
            f"({memory_needed(w, 2, 1) / 2**20:,.0f} MiB needed)"
        )
    choices = [_near_best(group) for group in (best_threads, best_per_n) if group]
    choice = choices[0]
    if len(choices) == 2 and choices[1].predicted_s * (1 + NEAR_BEST) < choice.predicted_s:
        choice = choices[1]  # processes only when clearly faster than threads
    candidates = tuple(best_threads) + tuple(best_per_n)
    speedup = serial_s / choice.predicted_s if choice.predicted_s > 0 else 0.0
    unit = "threads" if choice.executor == "thread" else "workers"
    if speedup < MIN_SPEEDUP:
        start = _start(w, costs, choice.n_jobs, warm) if choice.executor == "process" else 0.0
        started = f", {format_seconds(start)} to start them" if choice.executor == "process" else ""
        return serial(
            f"serial: {effective_n} items x {format_seconds(t)} = {format_seconds(serial_s)} of work; "
            f"the best parallel plan ({choice.n_jobs} {unit}{started}) "
            f"was predicted at {format_seconds(choice.predicted_s)}, a {speedup:.2f}x speedup, "
            f"below the {MIN_SPEEDUP}x needed",
            candidates,
        )
    if choice.executor == "thread":
        waits = f"; {note}"
        moved = effective_n * (_finite(w.in_bytes) + _finite(w.out_bytes))
        if moved >= 2**20:
            waits += f"; no pickling of {moved / 2**20:,.1f} MiB of items and results"
        if choice.n_jobs > usable_cpus:
            waits += (
                f"; waiting work (CPU {cpu_fraction:.0%} of wall time), so {choice.n_jobs} threads overlap the waits"
            )
    else:
        waits = _why_this_many(choice, best_per_n, limit, usable_cpus, cpu_fraction)
        if warm == choice.n_jobs:
            waits += f"; counting on the {warm} workers already running (no start cost)"
        if note:
            waits += f"; {note}"
    return Decision(
        choice.executor,  # type: ignore[arg-type]
        choice.n_jobs,
        choice.chunksize,
        choice.predicted_s,
        serial_s,
        f"{choice.n_jobs} {unit}, chunks of {choice.chunksize}: predicted {speedup:.2f}x "
        f"faster than the serial loop ({format_seconds(choice.predicted_s)} vs {format_seconds(serial_s)}){waits}",
        candidates,
        tuple(considered),
        warnings,
    )
