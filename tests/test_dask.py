"""The Dask backend on a real ``distributed.LocalCluster``: results, order, errors, crashes, costs.

One two-worker cluster (one thread each, worker processes) serves the whole module:
it starts in about half a second, which per test would dominate the run.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Importing distributed registers tblib's pickle reducer for every exception class
# (copyreg), for the rest of the session, as it does in users' programs. It is left
# in place: later test modules then check that autopar's workers still carry
# exceptions intact (see backends/_worker.dumps_exception).
distributed = pytest.importorskip("distributed")

import autopar  # noqa: E402
from autopar import NoClientError, auto_parallel  # noqa: E402
from autopar.backends import dask as dask_backend  # noqa: E402 - only once distributed is known present
from autopar.backends.dask import (  # noqa: E402
    ClusterInfo,
    DaskBackend,
    DaskUnavailableError,
)
from autopar.errors import (  # noqa: E402
    AutoparError,
    RemoteTraceback,
    TaskTimeoutError,
    UnpicklableError,
    WorkerCrashedError,
)
from autopar.measuring import SAMPLE_MAX_ITEMS  # noqa: E402
from tests import workloads  # noqa: E402
from tests.conftest import worker_children  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
N_WORKERS = 2


# -- functions the workers run (module level: workers import them by name) -----------------


class Boom(Exception):
    """An exception with several arguments, to check they all arrive."""


def square(x: int) -> int:
    return x * x


def fresh_token(_: object) -> str:
    return uuid.uuid4().hex


def fail_on_zero_else_sleep(arg: tuple[int, str]) -> int:
    """Item 0 fails at once; the others take 0.2 s and leave a marker file."""
    x, folder = arg
    if x == 0:
        raise Boom("no zeros", x, {"detail": [1, 2]})
    time.sleep(0.2)
    (Path(folder) / f"done-{x}").touch()
    return x


def exit_on_three(x: int) -> int:
    if x == 3:
        raise SystemExit(3)
    return x


def die_once(arg: tuple[int, str]) -> int:
    """Kills its worker process on item 5, the first time only (a marker file remembers)."""
    x, folder = arg
    marker = Path(folder) / "died"
    if x == 5 and not marker.exists():
        marker.touch()
        os._exit(1)
    return x * 10


def die_always(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


#: How many times this worker process unpickled a :class:`Payload`.
PAYLOAD_LOADS = 0


class Payload:
    """Bytes that count, in each process, how often they are unpickled."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_payload, (self.data,))


def _load_payload(data: bytes) -> Payload:
    global PAYLOAD_LOADS
    PAYLOAD_LOADS += 1
    return Payload(data)


def payload_loads() -> int:
    return PAYLOAD_LOADS


def reset_payload_loads() -> None:
    global PAYLOAD_LOADS
    PAYLOAD_LOADS = 0


def size_plus(payload: Payload, x: int) -> int:
    return len(payload.data) + x


def _autopar_keys(dask_scheduler: Any) -> list[str]:
    """Run on the scheduler: the keys of autopar tasks it still tracks."""
    return [str(key) for key in dask_scheduler.tasks if str(key).startswith("autopar-")]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """The module's LocalCluster; on teardown, none of its processes may survive."""
    before = {child.pid for child in worker_children()}
    environ = dict(os.environ)  # the Nanny sets OMP_NUM_THREADS and others in os.environ
    local = distributed.LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield local
    finally:
        local.close()
        os.environ.clear()
        os.environ.update(environ)
        deadline = time.monotonic() + 10.0
        left = [c for c in worker_children() if c.pid not in before]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [c for c in worker_children() if c.pid not in before]
        for child in left:
            child.kill()
        assert not left, f"the cluster left {len(left)} process(es) behind: {[c.pid for c in left]}"


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    """A Client on the module's cluster, the default one while the module runs."""
    with distributed.Client(cluster) as connected:
        yield connected


@pytest.fixture(autouse=True)
def no_child_left_behind(client: Any) -> Iterator[None]:
    """conftest's check, with the module cluster's worker processes allowed.

    The cluster lives for the whole module, so its workers (and those the nanny
    restarts after a crash test) are expected children; anything else still fails
    the test, and the ``cluster`` fixture checks the workers are gone at the end.
    """
    yield
    shutdown = getattr(autopar, "shutdown", None)  # warm process pools, as conftest's check does
    if shutdown is not None:
        shutdown()
    client.wait_for_workers(N_WORKERS, timeout=30)
    deadline = time.monotonic() + 5.0
    while True:
        allowed = set(client.run(os.getpid).values())
        left = [c for c in worker_children() if c.pid not in allowed]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if left:
        for child in left:
            child.kill()
        pytest.fail(f"test left {len(left)} child process(es) behind: {[c.pid for c in left]}")


@pytest.fixture
def backend(client: Any) -> DaskBackend:
    return DaskBackend()


def _wait_for_no_autopar_tasks(client: Any, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    keys = client.run_on_scheduler(_autopar_keys)
    while keys and time.monotonic() < deadline:
        time.sleep(0.05)
        keys = client.run_on_scheduler(_autopar_keys)
    return list(keys)


# -- results and order -------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, 7, 40, 1000])
def test_map_equals_the_serial_map_in_order(backend: DaskBackend, chunksize: int) -> None:
    items = list(range(100))
    assert backend.map(square, items, start=0, n_jobs=N_WORKERS, chunksize=chunksize) == [x * x for x in items]


def test_map_starts_at_start_and_reports_progress(backend: DaskBackend) -> None:
    items = tuple(range(50))
    seen: list[int] = []
    results = backend.map(square, items, start=10, n_jobs=N_WORKERS, chunksize=7, progress=seen.append)
    assert results == [x * x for x in items[10:]]
    assert sum(seen) == 40
    assert sorted(seen) == [5, 7, 7, 7, 7, 7]
    assert backend.map(square, items, start=50, n_jobs=N_WORKERS, chunksize=7) == []


def test_equal_items_are_not_merged(backend: DaskBackend) -> None:
    results = backend.map(fresh_token, [0] * 30, start=0, n_jobs=N_WORKERS, chunksize=1)
    assert len(set(results)) == 30, "equal items (and equal chunks) must each run"


def test_imap_ordered_and_unordered(backend: DaskBackend) -> None:
    expected = [x * x for x in range(200)]
    ordered = backend.imap(square, iter(range(200)), offset=0, n_jobs=N_WORKERS, chunksize=9, ordered=True)
    assert list(ordered) == expected
    unordered = backend.imap(square, iter(range(200)), offset=0, n_jobs=N_WORKERS, chunksize=9, ordered=False)
    assert sorted(unordered) == expected


def test_imap_reads_a_bounded_amount_ahead(backend: DaskBackend, client: Any) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        x = 0
        while True:
            pulled += 1
            yield x
            x += 1

    chunksize = 2
    stream = backend.imap(square, endless(), offset=0, n_jobs=N_WORKERS, chunksize=chunksize, ordered=True)
    first = [next(stream) for _ in range(30)]
    assert first == [x * x for x in range(30)]
    bound = N_WORKERS * dask_backend.STREAM_CHUNKS_PER_THREAD + N_WORKERS * dask_backend.STREAM_BUFFER_PER_THREAD
    assert pulled <= 30 + bound * chunksize, f"read {pulled} items ahead of 30 results"
    stream.close()  # type: ignore[attr-defined]
    assert _wait_for_no_autopar_tasks(client) == [], "closing the stream must cancel its tasks"


def test_imap_names_items_from_the_offset(backend: DaskBackend) -> None:
    stream = backend.imap(exit_on_three, iter(range(10)), offset=100, n_jobs=N_WORKERS, chunksize=4, ordered=True)
    with pytest.raises(SystemExit) as info:
        list(stream)
    assert "autopar: raised while processing item 103: 3" in getattr(info.value, "__notes__", [])


# -- failures ----------------------------------------------------------------------------


def test_exception_keeps_its_type_names_the_item_and_cancels_the_rest(
    backend: DaskBackend, client: Any, tmp_path: Path
) -> None:
    items = [(x, str(tmp_path)) for x in range(40)]  # 40 x 0.2 s: 4 s on two workers if nothing is cancelled
    began = time.monotonic()
    with pytest.raises(Boom) as info:
        backend.map(fail_on_zero_else_sleep, items, start=0, n_jobs=N_WORKERS, chunksize=1)
    assert time.monotonic() - began < 1.5
    assert info.value.args == ("no zeros", 0, {"detail": [1, 2]})
    notes = getattr(info.value, "__notes__", [])
    assert any(note.startswith("autopar: raised while processing item 0: (0, ") for note in notes), notes
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_on_zero_else_sleep" in str(info.value.__cause__)
    assert _wait_for_no_autopar_tasks(client) == []
    time.sleep(0.5)  # any chunk still running would finish and leave its marker by now
    done = len(list(tmp_path.glob("done-*")))
    assert done <= 6, f"{done} items ran to completion after the failure"


def test_system_exit_in_the_function_reaches_the_caller(backend: DaskBackend) -> None:
    with pytest.raises(SystemExit) as info:
        backend.map(exit_on_three, list(range(8)), start=0, n_jobs=N_WORKERS, chunksize=2)
    assert info.value.code == 3
    assert "autopar: raised while processing item 3: 3" in getattr(info.value, "__notes__", [])


def test_keyboard_interrupt_while_waiting_cancels_the_futures(
    backend: DaskBackend, client: Any, tmp_path: Path
) -> None:
    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    items = [(x, str(tmp_path)) for x in range(1, 41)]
    with pytest.raises(KeyboardInterrupt):
        backend.map(fail_on_zero_else_sleep, items, start=0, n_jobs=N_WORKERS, chunksize=1, progress=interrupt)
    assert _wait_for_no_autopar_tasks(client) == []
    time.sleep(0.5)
    done = len(list(tmp_path.glob("done-*")))
    assert done <= 7, f"{done} items ran to completion after Ctrl-C"


def test_timeout_raises_and_cancels(backend: DaskBackend, client: Any, tmp_path: Path) -> None:
    items = [(x, str(tmp_path)) for x in range(1, 41)]
    with pytest.raises(TaskTimeoutError, match="unfinished"):
        backend.map(fail_on_zero_else_sleep, items, start=0, n_jobs=N_WORKERS, chunksize=1, timeout=0.3)
    assert _wait_for_no_autopar_tasks(client) == []


def test_unpicklable_item_is_named_before_anything_runs(backend: DaskBackend) -> None:
    items: list[Any] = [1, 2, 3, threading.Lock(), 5]
    with pytest.raises(UnpicklableError, match="item 3 cannot be sent to the cluster"):
        backend.map(square, items, start=0, n_jobs=N_WORKERS, chunksize=2)


def test_lost_worker_is_retried_by_dask(backend: DaskBackend, client: Any, tmp_path: Path) -> None:
    items = [(x, str(tmp_path)) for x in range(20)]
    results = backend.map(die_once, items, start=0, n_jobs=N_WORKERS, chunksize=2)
    assert results == [x * 10 for x in range(20)]
    assert (tmp_path / "died").exists(), "the worker really died once"
    client.wait_for_workers(N_WORKERS, timeout=30)


def test_worker_dying_on_every_attempt_raises_worker_crashed(backend: DaskBackend, client: Any) -> None:
    began = time.monotonic()
    with pytest.raises(WorkerCrashedError, match=r"Dask gave up on item \d+") as info:
        backend.map(die_always, list(range(10)), start=0, n_jobs=N_WORKERS, chunksize=1)
    assert time.monotonic() - began < 30
    assert isinstance(info.value.__cause__, distributed.KilledWorker)
    assert _wait_for_no_autopar_tasks(client) == []
    client.wait_for_workers(N_WORKERS, timeout=30)


# -- the cluster, its costs, shared arguments ---------------------------------------------


def test_cluster_reports_the_two_single_thread_workers(backend: DaskBackend, client: Any) -> None:
    info = backend.cluster()
    limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert (info.workers, info.threads, info.memory_per_worker) == (2, 2, min(limits))
    assert re.fullmatch(r"dask-w2-t2-m\d+[KMGT]?", info.fingerprint), info.fingerprint
    assert info.fingerprint == backend.cluster().fingerprint  # stable


class _FakeClient:
    def __init__(self, workers: dict[str, dict[str, int]]) -> None:
        self.info = {"workers": workers}

    def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
        assert n_workers == -1, "every worker must be listed"
        return self.info


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ({"a": {"nthreads": 4, "memory_limit": 4 << 30}}, ClusterInfo(1, 4, 4 << 30, "dask-w1-t4-m4G")),
        (
            {"a": {"nthreads": 4, "memory_limit": 4 << 30}, "b": {"nthreads": 2, "memory_limit": 512 << 20}},
            ClusterInfo(2, 6, 512 << 20, "dask-w2-t6-m512M"),
        ),
        (
            {"a": {"nthreads": 1, "memory_limit": 0}, "b": {"nthreads": 1, "memory_limit": 0}},
            ClusterInfo(2, 2, 0, "dask-w2-t2-m0"),
        ),
        (
            {"a": {"nthreads": 8, "memory_limit": 0}, "b": {"nthreads": 8, "memory_limit": 3 << 30}},
            ClusterInfo(2, 16, 3 << 30, "dask-w2-t16-m3G"),
        ),
    ],
)
def test_fingerprint_is_key_safe(workers: dict[str, dict[str, int]], expected: ClusterInfo) -> None:
    info = DaskBackend(client=_FakeClient(workers)).cluster()
    assert info == expected
    assert re.fullmatch(r"[A-Za-z0-9._-]+", info.fingerprint)


def test_measure_costs_on_the_live_cluster(backend: DaskBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dask_backend, "_costs", {})
    began = time.perf_counter()
    costs = backend.measure_costs()
    took = time.perf_counter() - began
    assert costs.measured
    assert costs.worker_start_s == 0.0
    assert 1e-5 < costs.chunk_s < 0.05, costs  # about a millisecond per task on loopback
    assert 1e-11 <= costs.byte_s < 1e-7, costs  # a few ns per byte
    assert took < 5, f"measuring took {took:.2f} s"  # a few rounds of tasks, not a long probe
    began = time.perf_counter()
    assert backend.measure_costs() is costs  # once per cluster fingerprint
    assert time.perf_counter() - began < 0.5


def test_big_shared_function_is_scattered_once(
    backend: DaskBackend, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scatters: list[dict[str, Any]] = []
    real_scatter = client.scatter

    def counting_scatter(data: Any, **kwargs: Any) -> Any:
        scatters.append(kwargs)
        return real_scatter(data, **kwargs)

    monkeypatch.setattr(client, "scatter", counting_scatter)
    items = list(range(24))

    client.run(reset_payload_loads)
    big = functools.partial(size_plus, Payload(bytes(5_000_000)))
    assert backend.map(big, items, start=0, n_jobs=N_WORKERS, chunksize=1) == [5_000_000 + x for x in items]
    assert len(scatters) == 1
    assert scatters[0]["broadcast"] is True
    loads = client.run(payload_loads)
    assert sum(loads.values()) <= N_WORKERS, f"the 5 MB payload was unpickled {loads} times for 24 tasks"

    scatters.clear()
    client.run(reset_payload_loads)
    small = functools.partial(size_plus, Payload(bytes(2_000)))
    assert backend.map(small, items, start=0, n_jobs=N_WORKERS, chunksize=1) == [2_000 + x for x in items]
    assert scatters == []  # small functions ride with each task...
    assert sum(client.run(payload_loads).values()) == len(items)  # ...and are unpickled per task
    assert _wait_for_no_autopar_tasks(client) == []


# -- without distributed, without a client ---------------------------------------------


def test_importing_the_backend_does_not_import_distributed() -> None:
    code = "import sys, autopar.backends.dask; print('distributed' in sys.modules, 'dask' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


NO_CLIENT = """
from autopar.backends.dask import DaskBackend, NoClientError
try:
    DaskBackend()
except NoClientError as exc:
    print(type(exc).__mro__[1:3], exc, sep="\\n")
"""


def test_no_active_client_is_a_clear_error() -> None:
    done = subprocess.run([sys.executable, "-c", NO_CLIENT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AutoparError" in done.stdout
    assert "RuntimeError" in done.stdout
    assert "Client()" in done.stdout
    assert 'Client("tcp://scheduler:8786")' in done.stdout


def test_missing_distributed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(DaskUnavailableError, match=re.escape("pip install 'autopar[dask]'")) as info:
        DaskBackend()
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, AutoparError)



# -- the decorator on the cluster ------------------------------------------------------------


@auto_parallel(backend="dask")
def cube_on_cluster(x: int) -> tuple[int, int]:
    workloads.spin(0.002)
    return x**3, os.getpid()


def test_map_with_backend_dask_plans_for_the_cluster_and_caches_it(client: Any) -> None:
    items = range(6000)
    results = workloads.light.map(items, backend="dask")
    assert [value for value, _ in results] == [2 * x for x in items]
    cluster_pids = set(client.run(os.getpid).values())
    here = [pid for _, pid in results if pid == os.getpid()]
    assert len(here) <= SAMPLE_MAX_ITEMS, "at most the sample ran here while planning"
    assert {pid for _, pid in results} - {os.getpid()} <= cluster_pids, "after sampling, items ran on the cluster"
    # A loaded machine can move one probe's time bucket past its neighbours (a fresh
    # plan, stored too); a plan that is cached is found again by one of a few lookups.
    plans = [workloads.light.plan(items, backend="dask") for _ in range(3)]
    cached = [p for p in plans if p.from_cache]
    assert cached, plans
    plan = cached[0]
    info = DaskBackend().cluster()
    assert plan.executor == "dask"
    assert plan.start_method == info.fingerprint
    assert info.fingerprint in plan.reason
    assert workloads.light.cache_info().hits >= 1
    import json

    from autopar.model import IO_BOUND_CPU_FRACTION, worker_limit
    from autopar.store import get_store

    store = get_store()
    key = next(k for k in store.list_keys() if k.startswith("plan:") and f":{info.fingerprint}:c{info.threads}:" in k)
    # One worker per cluster thread for CPU work; 2 ms of spinning that a busy
    # machine kept waiting for a CPU may measure as waiting work, which gets more.
    waits = json.loads(store.get(key) or "{}")["workload"]["cpu_fraction"] < IO_BOUND_CPU_FRACTION
    assert plan.n_jobs <= worker_limit(info.threads, None, io_bound=waits)
    local = workloads.light.plan(items)
    assert not local.from_cache, "a cluster plan is never used on this machine"
    assert local.executor == "process"


def test_the_decorator_sets_the_default_backend(client: Any) -> None:
    items = range(200)
    results = cube_on_cluster.map(items)
    assert [value for value, _ in results] == [x**3 for x in items]
    plan = cube_on_cluster.plan(items)
    assert plan.start_method.startswith("dask-"), plan  # planned for the cluster, not this machine
    assert plan.executor in ("dask", "serial")  # which one is the measured costs' call
    here = cube_on_cluster.map(items, backend="serial")
    assert {pid for _, pid in here} == {os.getpid()}
    assert cube_on_cluster.plan(items, backend="process").executor == "process"


def test_imap_with_backend_dask(client: Any) -> None:
    items = iter(range(300))
    out = list(workloads.heavy_plain.imap(items, backend="dask", ordered=False))
    assert sorted(out) == [3 * x for x in range(300)]


def test_tiny_items_stay_here_and_heavy_items_go_one_per_task(client: Any) -> None:
    assert workloads.add_one.plan(range(20_000), backend="dask").executor == "serial"
    heavy = workloads.sleepy.plan([0.05] * 8, backend="dask")
    assert heavy.executor == "dask"
    assert heavy.chunksize == 1
    assert workloads.sleepy.map([0.05] * 8, backend="dask") == [0.05] * 8


def test_a_failing_item_on_the_cluster_keeps_its_type_and_names_the_item(client: Any) -> None:
    with pytest.raises(workloads.ItemError) as info:
        workloads.fails_on_13.map(range(200), backend="dask", n_jobs=2, chunksize=10)
    assert any("item 13" in note for note in info.value.__notes__)


def test_an_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        workloads.heavy.map(range(10), backend="threads")
    with pytest.raises(ValueError, match="backend must be one of"):
        auto_parallel(backend="ray")(len)


NO_CLIENT_MAP = """
from autopar import NoClientError
from tests import workloads
try:
    workloads.heavy.map(range(10), backend="dask")
except NoClientError as exc:
    print("NoClientError:", exc)
"""


def test_backend_dask_without_a_client_is_a_clear_error() -> None:
    done = subprocess.run([sys.executable, "-c", NO_CLIENT_MAP], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NoClientError: backend='dask' runs on the active distributed.Client" in done.stdout
    assert issubclass(NoClientError, RuntimeError)
