"""The cost model's thread executor: pure arithmetic, like :mod:`autopar.model`.

Threads in the calling process cost no worker start, no pickling and no copies,
but items run in parallel only while they release the GIL. How much they do is
measured while sampling (:func:`autopar.measuring.thread_scaling`): two threads
run items at once, and their speedup ``s`` over one says which share of an item
holds the GIL (Amdahl's law on two threads)::

    gil = 2 / s - 1        s = 1: all of it (pure Python), s = 2: none of it

For ``n`` threads and chunks of ``c`` items a run is predicted to take::

    (new threads) * THREAD_START_S
  + max( busiest thread's chunks, each c * t + THREAD_CHUNK_S  (+ spread, + tail)
       , N * t * ( gil                                  held: one thread at a time
                 + (cpu - gil) / min(n, cores)          native code sharing the cores
                 + (1 - cpu) / n )                      waits, all overlapping
         + K * THREAD_CHUNK_S )

with ``cpu`` the items' CPU share of their wall time (the GIL is held only while a
CPU runs Python, so ``gil <= cpu``). The sum is Amdahl's law: on two threads it
gives back the measured speedup.

Work whose measured speedup is below :data:`THREAD_SCALING_MIN` is never given
threads: GIL-bound work runs no faster on them, and often slower.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Workload

__all__ = [
    "MAX_THREADS",
    "THREAD_CHUNK_S",
    "THREAD_SCALING_MIN",
    "THREAD_START_S",
    "gil_enabled",
    "gil_share",
    "predict_threads",
    "thread_counts",
    "thread_limit",
]

#: Starting one thread (and later letting it go): ~60-100 us measured on a 2-core
#: Linux machine with ``threading.Thread().start()``; warm threads cost nothing.
THREAD_START_S = 100e-6
#: Handing one chunk to a thread and its results back, holding the GIL: a map's
#: threads take chunk bounds under a lock and write results in place (~5-7 us per
#: chunk measured on 2 threads; ~14 us through a stream's queues).
THREAD_CHUNK_S = 10e-6
#: Threads never finish in lockstep (a virtual CPU stalls, a chunk is slower): on
#: average the others wait this share of a chunk's work for the last one. Chunks
#: are cheap to hand over, so this makes them small (with 2 threads, chunks of 10
#: items of 5 ms cost 7 % against ThreadPool's chunks of 1).
TAIL_SHARE = 0.5
#: Two threads must run items at least this much faster than one for threads to be
#: weighed at all. GIL-bound work measures 0.9-1.1x; a timing that reads 1.3x on a
#: busy machine still leaves a margin, and work that really releases the GIL
#: measures 1.7-2x (waiting work 2x).
THREAD_SCALING_MIN = 1.3
#: Most threads a plan uses for waiting work (sleep, sockets, disks), unless
#: ``max_workers`` says otherwise. A thread costs a stack's address space and a
#: GIL hand-off per chunk, not a process: far more than the cores pay for waits.
MAX_THREADS = 64
#: Thread counts weighed besides the exact ones that split the input evenly:
#: roughly geometric, so a plan for 64 threads weighs a dozen counts, not 63.
_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def gil_enabled() -> bool:
    """False on a free-threaded build running without the GIL (3.13t, 3.14t)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return bool(check()) if check is not None else True


def _finite(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) and value >= 0 else default


def gil_share(scaling: float) -> float:
    """The share of an item's time that holds the GIL, from two threads' speedup."""
    if not math.isfinite(scaling) or scaling <= 1.0:
        return 1.0
    return min(1.0, max(0.0, 2.0 / scaling - 1.0))


def thread_limit(usable_cpus: int, max_workers: int | None, *, io_bound: bool) -> int:
    """Most threads a plan may use: the usable CPUs for CPU work (native code on
    more threads than cores only queues), up to :data:`MAX_THREADS` for waiting work.
    ``max_workers`` is the limit for waiting work and caps CPU work."""
    cpus = max(1, usable_cpus)
    if io_bound:
        return max(1, max_workers) if max_workers is not None else max(cpus, MAX_THREADS)
    return cpus if max_workers is None else max(1, min(cpus, max_workers))


def thread_counts(limit: int, n_items: int | None) -> list[int]:
    """Thread counts worth weighing up to ``limit``: a geometric ladder, the limit,
    and for a known length the counts that finish in a few even rounds."""
    counts = {n for n in _COUNTS if n <= limit}
    counts.add(limit)
    if n_items is not None:
        for rounds in (1, 2, 3, 4, 6, 8):
            n = math.ceil(n_items / rounds)
            if 2 <= n <= limit:
                counts.add(n)
    return sorted(n for n in counts if n >= 2)


def predict_threads(w: Workload, n_threads: int, chunksize: int, cores: int, warm: int = 0) -> float:
    """Predicted wall seconds for ``n_threads`` threads in this process and chunks
    of ``chunksize`` (``warm``: threads already running, whose start costs nothing).

    Needs ``w.thread_scaling``; without it threads are predicted as GIL-bound.
    """
    from .model import PRIOR_CV, STREAM_ASSUMED_ITEMS, VARIANCE_Z

    n_items = w.n_items if w.n_items is not None else STREAM_ASSUMED_ITEMS
    start = max(0, n_threads - max(0, warm)) * THREAD_START_S
    if n_items <= 0:
        return start
    t = _finite(w.item_s)
    cv = PRIOR_CV if w.cv is None else _finite(w.cv)
    scaling = w.thread_scaling if w.thread_scaling is not None else 1.0
    cpu_fraction = min(1.0, _finite(w.cpu_fraction, 1.0))
    # The GIL is held only while a CPU runs Python: never longer than the CPU share.
    gil = min(gil_share(scaling), cpu_fraction)
    n_chunks = math.ceil(n_items / chunksize)
    chunk_time = chunksize * t + THREAD_CHUNK_S
    full, rest = divmod(n_items, chunksize)
    rounds, extra = divmod(full, n_threads)
    # As for processes (see autopar.model.predict_parallel): a short last chunk adds
    # time only when every thread has the same number of full ones.
    last = rest * t + THREAD_CHUNK_S if rest else 0.0
    busiest = (rounds + 1) * chunk_time if extra else rounds * chunk_time + last
    busiest += VARIANCE_Z * cv * t * math.sqrt(chunksize) + TAIL_SHARE * chunksize * t
    share = gil + (cpu_fraction - gil) / min(n_threads, max(1, cores)) + (1.0 - cpu_fraction) / n_threads
    overlapped = n_items * t * share + n_chunks * THREAD_CHUNK_S
    return start + max(busiest, overlapped)
