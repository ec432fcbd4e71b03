"""What autopar asks a ``distributed`` cluster before it runs anything there.

Kept apart from :mod:`autopar.backends.dask`, which runs chunks as tasks: this
module imports ``distributed`` lazily, finds the active ``Client``, reads the
cluster's shape from the scheduler (cached per client for
:data:`CLUSTER_INFO_TTL_S`), and measures per-task and per-byte costs on it once
per cluster fingerprint. Every function takes the client it talks to.
"""

from __future__ import annotations

import importlib
import inspect
import os
import socket
import statistics
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AutoparError, DaskUnavailableError, NoClientError
from ..model import Costs
from ..serialization import dumps
from ._worker import echo

__all__ = [
    "CLUSTER_INFO_TTL_S",
    "INSTALL_HINT",
    "MIN_BYTE_S",
    "PROBE_BATCH",
    "PROBE_PAYLOAD_BYTES",
    "PROBE_PAYLOAD_ROUNDS",
    "PROBE_ROUNDS",
    "ClusterInfo",
    "cluster_info",
    "measure_costs",
]

INSTALL_HINT = "pip install 'autopar[dask]'"

#: Cost probes: batches of no-op chunks (per-task overhead) and one payload sent
#: there and back (per-byte cost). About 0.2 s in all on a local two-worker cluster.
PROBE_BATCH = 10
PROBE_ROUNDS = 5
PROBE_PAYLOAD_BYTES = 1 << 20
PROBE_PAYLOAD_ROUNDS = 3
#: A per-byte cost below this is measurement noise (faster than memory copies).
MIN_BYTE_S = 1e-11

#: Measured costs per cluster fingerprint, for the life of this process.
_costs: dict[str, Costs] = {}
#: The scheduler's answer is reused this long: a cluster that scales is seen
#: within a second, and a loop of small ``.map`` calls does not ask every time.
CLUSTER_INFO_TTL_S = 1.0
#: ``(when asked, answer)`` per client, held weakly: a closed and dropped client
#: leaves the cache with it, and a new client is never mistaken for an old one.
_cluster_info: weakref.WeakKeyDictionary[Any, tuple[float, ClusterInfo]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ClusterInfo:
    """What the scheduler reports about the cluster, and a key-safe summary of it."""

    workers: int
    threads: int
    """Worker threads over the whole cluster: the parallelism the planner can use."""
    memory_per_worker: int
    """The smallest worker memory limit in bytes; 0 when no worker has a limit."""
    fingerprint: str
    """Like ``dask-w2-t2-m4G``: only ``[A-Za-z0-9._-]``, safe inside a plan-store key."""


def _distributed() -> Any:
    """The ``distributed`` module, imported on first use."""
    try:
        return importlib.import_module("distributed")
    except ImportError as exc:
        msg = f"backend='dask' needs Dask's distributed scheduler, which is not installed: {INSTALL_HINT}"
        raise DaskUnavailableError(msg) from exc


def _active_client(dist: Any) -> Any:
    try:
        return dist.get_client()
    except ValueError as exc:
        msg = (
            "backend='dask' runs on the active distributed.Client, and there is none. Start one first: "
            "`from distributed import Client; client = Client()` for a local cluster, or "
            '`client = Client("tcp://scheduler:8786")` to join a running one'
        )
        raise NoClientError(msg) from exc


def _origin() -> str:
    """This process as ``host:pid``: a task run elsewhere is on an autopar worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _size_tag(n_bytes: int) -> str:
    if n_bytes <= 0:
        return "0"
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n_bytes >= 1 << shift:
            return f"{round(n_bytes / (1 << shift))}{unit}"
    return str(n_bytes)


def _fingerprint(workers: int, threads: int, memory: int) -> str:
    return f"dask-w{workers}-t{threads}-m{_size_tag(memory)}"


def cluster_info(client: Any) -> ClusterInfo:
    """Workers, threads and memory as the scheduler reports them (within
    :data:`CLUSTER_INFO_TTL_S`: asking costs a round trip, ~1 ms, per ``.map``)."""
    now = time.monotonic()
    try:
        cached = _cluster_info.get(client)
    except TypeError:  # pragma: no cover - an exotic client without weak references: ask every time
        return _ask_cluster(client)
    if cached is not None and now - cached[0] < CLUSTER_INFO_TTL_S:
        return cached[1]
    info = _ask_cluster(client)
    _cluster_info[client] = (now, info)
    return info


def _ask_cluster(client: Any) -> ClusterInfo:
    scheduler_info = client.scheduler_info
    try:
        every_worker = "n_workers" in inspect.signature(scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover - an exotic client
        every_worker = False
    # Some releases list only the first few workers unless asked for all; older
    # ones have no such argument.
    info: dict[str, Any] = scheduler_info(n_workers=-1) if every_worker else scheduler_info()
    workers: dict[str, Any] = info.get("workers") or {}
    if workers:
        n_workers = len(workers)
        threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
        limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
        limited = [m for m in limits if m > 0]
        memory = min(limited) if limited else 0
    else:  # an asynchronous client's cached summary has totals only
        n_workers = int(info.get("n_workers", 0))
        threads = int(info.get("total_threads", 0))
        memory = int(info.get("total_memory", 0)) // n_workers if n_workers else 0
    return ClusterInfo(n_workers, threads, memory, _fingerprint(n_workers, threads, memory))


def measure_costs(
    client: Any,
    run_chunk: Callable[..., tuple[bool, bytes]],
    cache: dict[str, Costs] | None = None,
) -> Costs:
    """Per-task overhead and per-byte transfer cost on the client's cluster, measured once per fingerprint.

    Chunks of no-op work travel exactly as real chunks do (pickled, through
    ``run_chunk``, the backend's task function, results gathered), in batches of
    :data:`PROBE_BATCH` so the cost per task includes the scheduler's share, not
    only latency. Starting workers costs nothing: the cluster is already running.
    Results are kept in ``cache`` (this module's ``_costs`` when not given).
    """
    costs_cache = _costs if cache is None else cache
    fingerprint = cluster_info(client).fingerprint
    cached = costs_cache.get(fingerprint)
    if cached is not None:
        return cached
    origin = _origin()
    blobs = {"noop": dumps([None]), "payload": dumps([os.urandom(PROBE_PAYLOAD_BYTES)])}

    def round_trip(kind: str, tasks: int) -> float:
        began = time.perf_counter()
        futures = client.map(
            run_chunk,
            [0] * tasks,
            [blobs[kind]] * tasks,
            fn=echo,
            origin=origin,
            key=[f"autopar-probe-{uuid.uuid4().hex}" for _ in range(tasks)],
            pure=False,
        )
        replies = client.gather(futures)
        elapsed = time.perf_counter() - began
        if not all(ok for ok, _ in replies):  # pragma: no cover - echo cannot fail
            raise AutoparError("the cost probe failed on the cluster")
        return elapsed

    round_trip("noop", PROBE_BATCH)  # warm-up: workers import autopar, learn the function
    per_task = statistics.median(round_trip("noop", PROBE_BATCH) for _ in range(PROBE_ROUNDS)) / PROBE_BATCH
    single = statistics.median(round_trip("noop", 1) for _ in range(PROBE_PAYLOAD_ROUNDS))
    loaded = statistics.median(round_trip("payload", 1) for _ in range(PROBE_PAYLOAD_ROUNDS))
    byte_s = max(MIN_BYTE_S, (loaded - single) / (2 * PROBE_PAYLOAD_BYTES))
    costs = Costs(worker_start_s=0.0, chunk_s=per_task, byte_s=byte_s, measured=True)
    costs_cache[fingerprint] = costs
    return costs
