"""Large constants travel once per worker, not once per chunk, and are cleaned up."""

from __future__ import annotations

import functools
import gc
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from autopar import auto_parallel
from autopar.depot import INLINE_MAX, Deposit
from tests import depot_helpers

pytestmark = pytest.mark.timeout(120)

TABLE_BYTES = 4 * 2**20


def _table() -> bytes:
    return bytes(range(256)) * (TABLE_BYTES // 256)


def test_a_partial_holding_a_large_table_is_deposited_once(start_method: str) -> None:
    table = _table()
    func = auto_parallel(functools.partial(depot_helpers.lookup, table=table))
    items = list(range(200))
    assert func.map(items, n_jobs=2, chunksize=5) == [table[x] + len(table) for x in items]
    shipment = func.call().shipment()
    assert isinstance(shipment.deposit, Deposit), "4 MiB of constants are not sent with each of the 40 chunks"
    assert len(pickle.dumps(shipment.payload)) < 1024, "each chunk carries only where it lies"
    assert shipment.once_bytes >= TABLE_BYTES
    assert all(Path(p).exists() for p in (shipment.deposit.path, *shipment.deposit.buffers))


def test_the_plan_counts_the_function_once_per_worker_not_per_chunk() -> None:
    table = _table()
    func = auto_parallel(functools.partial(depot_helpers.heavy_lookup, table=table))
    plan = func.plan(list(range(300)))
    assert plan.executor == "process", plan.reason
    from autopar.plan import read_plan_record
    from autopar.store import get_store
    from autopar.system import usable_cpus

    store = get_store()
    keys = [k for k in store.list_keys() if k.startswith("plan:")]
    records = [read_plan_record(store.get(k), usable_cpus=usable_cpus(), max_workers=None) for k in keys]
    (workload,) = [r.workload for r in records if r is not None]
    assert workload["worker_load_bytes"] >= TABLE_BYTES, "read once by each worker"
    assert workload["chunk_bytes"] < 1024, "not carried by every chunk"


def test_a_function_read_once_per_worker_costs_each_worker_its_bytes() -> None:
    from autopar.model import Workload, predict_parallel, prior_costs

    costs = prior_costs("fork")
    plain = Workload(n_items=1000, item_s=1e-3)
    heavy = Workload(n_items=1000, item_s=1e-3, worker_load_bytes=80e6)
    extra = predict_parallel(heavy, costs, 2, 10, 2) - predict_parallel(plain, costs, 2, 10, 2)
    assert extra == pytest.approx(80e6 * costs.byte_s), "the workers read it at the same time"
    slow_setup = Workload(n_items=1000, item_s=1e-3, worker_setup_s=0.3)
    extra = predict_parallel(slow_setup, costs, 2, 10, 2) - predict_parallel(plain, costs, 2, 10, 2)
    assert extra == pytest.approx(0.3), "each worker sets up once, all at once"
    assert predict_parallel(heavy, costs, 2, 10, 2, warm=2) == predict_parallel(plain, costs, 2, 10, 2, warm=2)


def test_numpy_constants_are_mapped_read_only_in_workers(start_method: str) -> None:
    numpy = pytest.importorskip("numpy")
    table = numpy.arange(2**21, dtype=numpy.float64)  # 16 MiB
    func = auto_parallel(functools.partial(depot_helpers.array_lookup, table=table))
    results = func.map(list(range(0, 2**21, 2**14)), n_jobs=2, chunksize=4)
    assert [value for value, _, _ in results] == [float(x) for x in range(0, 2**21, 2**14)]
    in_workers = [writeable for _, writeable, pid in results if pid != os.getpid()]
    assert in_workers, "the items ran on workers"
    assert not any(in_workers), "workers map the array's pages read-only instead of copying them"
    assert func.call().shipment().deposit.buffers, "the array is a file of its own"  # type: ignore[union-attr]


def test_small_functions_still_travel_inline() -> None:
    func = auto_parallel(functools.partial(depot_helpers.lookup, table=b"\x01" * 100))
    assert func.map(list(range(10)), n_jobs=2, chunksize=2) == [101] * 10
    shipment = func.call().shipment()
    assert shipment.deposit is None
    assert len(shipment.blob) <= INLINE_MAX


def test_files_go_when_the_function_goes() -> None:
    func = auto_parallel(functools.partial(depot_helpers.lookup, table=_table()))
    func.map(list(range(20)), n_jobs=2, chunksize=5)
    deposit = func.call().shipment().deposit
    assert deposit is not None
    paths = [Path(deposit.path), *map(Path, deposit.buffers)]
    assert all(p.exists() for p in paths)
    import autopar

    autopar.shutdown()
    del func
    gc.collect()
    assert not any(p.exists() for p in paths)


def test_a_killed_processs_depot_is_swept_by_the_next(tmp_path: Path) -> None:
    from autopar import depot

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = depot._root()
    stale = root / f"{depot._PREFIX}{dead.pid}-test"
    stale.mkdir()
    (stale / "left.pkl").write_bytes(b"x")
    script = (
        "import pickle\n"
        "from autopar import depot\n"
        "depot.deposit(b'x' * 10, [], object)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parent.parent)
    assert not stale.exists()


def test_explain_shows_the_functions_own_bytes() -> None:
    func = auto_parallel(functools.partial(depot_helpers.heavy_lookup, table=_table()))
    text = str(func.explain(list(range(300))))
    assert "read once by each worker" in text
    assert "4.0 MB read once by each worker" in text, text


def test_files_go_when_the_pool_ends_and_come_back_when_needed() -> None:
    import autopar

    table = _table()
    func = auto_parallel(functools.partial(depot_helpers.lookup, table=table))
    items = list(range(40))
    expected = [table[x] + len(table) for x in items]
    assert func.map(items, n_jobs=2, chunksize=5) == expected
    first = func.call().shipment().deposit
    assert first is not None
    assert Path(first.path).exists(), "kept while the pool is warm"
    autopar.shutdown()
    assert not Path(first.path).exists(), "the warm pool ended: its large functions go"
    assert func.map(items, n_jobs=2, chunksize=5) == expected, "deposited again for the new pool"
    second = func.call().shipment().deposit
    assert second is not None
    assert second.path != first.path


def test_partial_fixes_arguments_that_travel_once(start_method: str) -> None:
    table = _table()
    fixed = lookup_decorated.partial(table=table)
    items = list(range(100))
    assert fixed.map(items, n_jobs=2, chunksize=5) == [table[x] + len(table) for x in items]
    assert fixed.call().shipment().deposit is not None
    assert fixed.cache_parameters() == lookup_decorated.cache_parameters()
    assert fixed(3) == table[3] + len(table), "called directly, it is the partial"


def test_a_large_constant_names_the_plan_by_its_size() -> None:
    from autopar.workload import function_identity

    one = functools.partial(depot_helpers.lookup, table=_table())
    other = functools.partial(depot_helpers.lookup, table=bytes(TABLE_BYTES))
    assert function_identity(one) == function_identity(other), "same size, same cost: same plan"
    short = functools.partial(depot_helpers.lookup, table=bytes(10))
    assert function_identity(one) != function_identity(short)


lookup_decorated = auto_parallel(depot_helpers.lookup)


def test_a_pool_of_another_size_does_not_lose_the_files_the_call_needs() -> None:
    """The warm pool was the files' last holder; the call opening a new pool of
    another size retires it, and must still find them (found by a second reader)."""
    table = _table()
    func = auto_parallel(functools.partial(depot_helpers.lookup, table=table))
    items = list(range(60))
    expected = [table[x] + len(table) for x in items]
    assert func.map(items, n_jobs=2, chunksize=5) == expected
    assert func.map(items, n_jobs=3, chunksize=5) == expected
    assert func.map(items, n_jobs=2, chunksize=5) == expected


def test_planning_alone_writes_no_files() -> None:
    func = auto_parallel(functools.partial(depot_helpers.lookup, table=_table()))
    shipment = func.call().shipment()
    assert shipment.once_bytes >= TABLE_BYTES, "its size is known to the plan"
    assert shipment.deposit is None, "nothing written until a pool needs it"
    assert func.map(list(range(10)), n_jobs=1) == [depot_helpers.lookup(x, _table()) for x in range(10)]
    assert func.call().shipment().deposit is None
