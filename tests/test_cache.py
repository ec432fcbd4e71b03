"""The plan store: hits, misses, invalidation, the on-disk format, failures."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import types
import warnings
from pathlib import Path

import pytest

import autopar
from autopar import CacheWarning, auto_parallel, clear_cache, get_cache_dir, prune_expired_cache
from autopar.store import get_store
from autopar.thread_model import MAX_THREADS
from tests import workloads
from tests.conftest import affinity_available
from tests.faults import stateful

pytestmark = pytest.mark.timeout(60)

HEAVY_ITEMS = range(300)


def _plan_rows(cache_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(cache_dir / "cache.db") as con:
        return [(k, v) for k, v in con.execute("SELECT key, value FROM Cache") if k.startswith("plan:")]


def _edit_plans(edit: types.FunctionType) -> None:
    """Rewrite every stored plan record through the store, as another process might."""
    store = get_store()
    for key in store.list_keys():
        if key.startswith("plan:"):
            record = json.loads(store.get(key) or "{}")
            edit(record)
            store.set(key, json.dumps(record))


#: Items that sleep 5 ms: their time (and so their time bucket) holds on a machine
#: whose CPUs are busy, where a CPU spin's would stretch with the load.
WAITING_ITEMS = range(100)


def test_second_call_hits_and_plan_is_stored(start_method: str, cache_dir: Path) -> None:
    f = stateful.waits
    f.cache_clear()  # counters live in the process: start this test's count at zero
    assert f.map(WAITING_ITEMS) == list(WAITING_ITEMS)
    info = f.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (0, 1, None, 1)
    assert f.map(WAITING_ITEMS) == list(WAITING_ITEMS)
    info = f.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)
    plan = f.plan(WAITING_ITEMS)
    assert plan.from_cache
    [(key, value)] = _plan_rows(cache_dir)
    record = json.loads(value)
    assert record["plan"]["executor"] == plan.executor  # what is stored is what the plan says
    assert record["system"]["start_method"] == start_method
    assert f"v{autopar._version.CACHE_FORMAT}" in key


def test_size_bucket_separates_plans() -> None:
    f = workloads.heavy_plain
    f.plan(range(300))
    f.plan(range(5000))
    assert f.cache_info().misses == 2
    assert f.cache_info().currsize == 2


def _versioned(constant: int) -> autopar.AutoParallel[[int], int]:
    namespace: dict[str, object] = {}
    source = (
        f"def scale(x):\n    t = __import__('time').thread_time() + 0.001\n"
        f"    while __import__('time').thread_time() < t: pass\n    return x * {constant}\n"
    )
    exec(compile(source, "<versioned>", "exec"), namespace)
    func = namespace["scale"]
    func.__module__ = "tests.versioned"  # type: ignore[attr-defined]
    return auto_parallel(func)  # type: ignore[arg-type]


def test_changing_a_constant_in_the_code_misses() -> None:
    twice, thrice = _versioned(2), _versioned(3)
    twice.plan(range(200))
    assert twice.plan(range(200)).from_cache
    assert not thrice.plan(range(200)).from_cache
    assert thrice.cache_info().misses == 1
    assert twice.plan(range(200)).from_cache  # the old version's plan is still there


def test_ttl_expiry_misses() -> None:
    f = auto_parallel(ttl=3600)(workloads.heavy_plain.__wrapped__)
    f.plan(HEAVY_ITEMS)
    assert f.plan(HEAVY_ITEMS).from_cache
    _edit_plans(lambda r: r.update(created=r["created"] - 7200))
    assert not f.plan(HEAVY_ITEMS).from_cache


@pytest.mark.parametrize(
    ("field", "value"),
    [("python", "2.7.18"), ("autopar", "0.0.1"), ("cache_format", 0)],
)
def test_version_changes_miss(field: str, value: object) -> None:
    f = workloads.heavy_plain
    f.plan(HEAVY_ITEMS)
    _edit_plans(lambda r: r["system"].update({field: value}))
    assert not f.plan(HEAVY_ITEMS).from_cache


@pytest.mark.parametrize(("factor", "hits"), [(1.1, True), (0.9, True), (1.3, False), (0.7, False)])
def test_memory_change_over_20_percent_misses(factor: float, hits: bool) -> None:
    f = workloads.heavy_plain
    f.plan(HEAVY_ITEMS)
    now = autopar.system.available_memory()
    _edit_plans(lambda r: r["system"].update(available_memory=int(now * factor)))
    assert f.plan(HEAVY_ITEMS).from_cache is hits


@pytest.mark.skipif(not affinity_available(), reason="needs sched_setaffinity and 2 CPUs")
def test_cpu_count_change_misses() -> None:
    f = stateful.waits
    f.plan(WAITING_ITEMS)
    original = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(original)})
        plan = f.plan(WAITING_ITEMS)
        assert not plan.from_cache
        # One usable CPU: at most 4 worker processes for waiting work (threads cost less).
        assert plan.n_jobs <= (MAX_THREADS if plan.executor == "thread" else 4), plan.reason
        _edit_plans(lambda r: r["system"].update(usable_cpus=len(original)))  # forged
    finally:
        os.sched_setaffinity(0, original)
    assert f.plan(WAITING_ITEMS).from_cache


def test_start_method_change_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    f = workloads.heavy_plain
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        multiprocessing.set_start_method("fork", force=True)
        f.plan(HEAVY_ITEMS)
        assert f.plan(HEAVY_ITEMS).from_cache
        multiprocessing.set_start_method("spawn", force=True)
        assert not f.plan(HEAVY_ITEMS).from_cache
        # the record itself is checked too, not only the key
        _edit_plans(lambda r: r["system"].update(start_method="forkserver"))
        assert not f.plan(HEAVY_ITEMS).from_cache
    finally:
        multiprocessing.set_start_method(previous, force=True)


def test_store_holds_only_text_rows(cache_dir: Path) -> None:
    workloads.heavy_plain.map(HEAVY_ITEMS)
    workloads.add_one.map(range(5000))
    with sqlite3.connect(cache_dir / "cache.db") as con:
        rows = con.execute("SELECT key, raw, mode, filename, typeof(key), typeof(value), value FROM Cache").fetchall()
    assert len(rows) >= 3  # two plans and the machine's measured costs
    for key, raw, mode, filename, key_type, value_type, value in rows:
        assert (raw, mode, filename, key_type, value_type) == (1, 1, None, "text", "text"), key
        assert isinstance(json.loads(value), dict)


def test_cache_dir_from_environment(cache_dir: Path) -> None:
    assert get_cache_dir() == cache_dir
    workloads.heavy_plain.plan(HEAVY_ITEMS)
    assert (cache_dir / "cache.db").is_file()
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache_dir / "cache.db").stat().st_mode) == 0o600


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AUTOPAR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert get_cache_dir() == tmp_path / "xdg" / "autopar"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_cache_dir() == tmp_path / "home" / ".cache" / "autopar"


def test_use_cache_false_never_stores() -> None:
    f = auto_parallel(use_cache=False)(workloads.heavy_plain.__wrapped__)
    f.plan(HEAVY_ITEMS)
    f.plan(HEAVY_ITEMS)
    info = f.cache_info()
    assert (info.hits, info.misses, info.currsize) == (0, 2, 0)


def test_cache_clear_and_clear_cache() -> None:
    f = workloads.heavy_plain
    f.plan(range(300))
    f.plan(range(3000))
    workloads.add_one.plan(range(5000))
    assert f.cache_info().currsize == 2
    f.cache_clear()
    assert f.cache_info() == (0, 0, None, 0, 0)
    assert workloads.add_one.cache_info().currsize == 1
    assert clear_cache() >= 1
    assert workloads.add_one.cache_info().currsize == 0


def test_prune_expired_cache() -> None:
    workloads.heavy_plain.plan(range(300))
    workloads.add_one.plan(range(5000))
    assert prune_expired_cache() == 0
    _edit_plans(lambda r: r.update(created=r["created"] - 3600))
    assert prune_expired_cache(ttl_seconds=1800) == 2
    assert workloads.add_one.cache_info().currsize == 0


def test_measured_costs_are_stored_and_reused() -> None:
    store = get_store()
    workloads.heavy_plain.plan(HEAVY_ITEMS)
    [key] = [k for k in store.list_keys() if k.startswith("costs:")]
    first = json.loads(store.get(key) or "{}")
    assert first["costs"]["worker_start_s"] > 0
    workloads.heavy.plan(HEAVY_ITEMS)  # another function: the machine's costs are reused
    assert json.loads(store.get(key) or "{}")["created"] == first["created"]


def test_corrupt_database_warns_once_and_map_still_works(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.warns(CacheWarning, match="corrupt"):
        assert workloads.heavy_plain.map(HEAVY_ITEMS) == [3 * x for x in HEAVY_ITEMS]
    assert list(cache_dir.glob("cache.db.corrupt-*")), "the bad file was not set aside"
    assert workloads.heavy_plain.plan(HEAVY_ITEMS).from_cache  # a fresh store works


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_cache_dir_warns_and_map_still_works(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o500)
    with pytest.warns(CacheWarning):
        assert workloads.heavy_plain.map(HEAVY_ITEMS) == [3 * x for x in HEAVY_ITEMS]


def test_uncreatable_cache_dir_warns_once_and_map_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(blocker / "cache"))  # fails even for root
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = workloads.heavy_plain.map(HEAVY_ITEMS)
        second = workloads.heavy_plain.map(HEAVY_ITEMS)
    assert first == second == [3 * x for x in HEAVY_ITEMS]
    assert "cannot create" in str(record[0].message)
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1
    assert workloads.heavy_plain.cache_info().hits == 1  # the in-memory fallback still plans once


def test_unsafe_cache_dir_is_refused(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o777)
    os.chmod(cache_dir, 0o777)
    with pytest.warns(CacheWarning, match="writable by group or others"):
        assert workloads.heavy_plain.map(HEAVY_ITEMS) == [3 * x for x in HEAVY_ITEMS]
    assert not (cache_dir / "cache.db").exists()
    # planning still works, in memory, and warns only once
    assert workloads.heavy_plain.plan(HEAVY_ITEMS).from_cache


def test_tampered_pickle_row_is_never_unpickled(cache_dir: Path, tmp_path: Path) -> None:
    import pickle

    f = workloads.heavy_plain
    f.plan(HEAVY_ITEMS)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {marker}",))

    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute("UPDATE Cache SET mode = 4, value = ? WHERE key LIKE 'plan:%'", (pickle.dumps(Payload()),))
    plan = f.plan(HEAVY_ITEMS)
    assert not marker.exists(), "a pickled row was unpickled"
    assert not plan.from_cache


def test_poisoned_values_are_clamped() -> None:
    f = workloads.heavy_plain
    f.plan(HEAVY_ITEMS)
    _edit_plans(lambda r: r["plan"].update(n_jobs=10**6, chunksize=0))
    plan = f.plan(HEAVY_ITEMS)
    assert plan.from_cache
    assert 1 <= plan.n_jobs <= autopar.system.usable_cpus()
    assert plan.chunksize >= 1
    assert f.map(HEAVY_ITEMS) == [3 * x for x in HEAVY_ITEMS]
    _edit_plans(lambda r: r["plan"].update(n_jobs="4"))
    assert not f.plan(HEAVY_ITEMS).from_cache


def test_time_bucket_comes_from_a_real_measurement() -> None:
    f = workloads.sleepy
    f.plan([0.0001] * 40)
    f.plan([0.02] * 40)  # 200x slower items: a different time bucket, a different plan
    assert f.cache_info().misses == 2
    assert f.cache_info().currsize == 2


def test_a_hit_evaluates_only_the_probe_items() -> None:
    """A hit must not re-sample: it evaluates only the probe's handful of items."""
    calls = []

    @auto_parallel
    def counted(x: int) -> int:
        calls.append(x)
        workloads.spin(0.001)
        return x

    counted.plan(range(2000))
    sampled = len(calls)
    calls.clear()
    assert counted.plan(range(2000)).from_cache
    assert 1 <= len(calls) < sampled


def open_store() -> autopar.store.PlanStore:
    """The process's store, once open: on a loaded machine opening may outlast what ``.map`` waits.

    Tests that then read or change the database from outside need what was planned
    on disk, not in the memory kept meanwhile.
    """
    store = get_store()
    assert store.wait_open(30)  # a hang guard, not a timing assertion
    return store


def _unrelated_rows(cache_dir: Path, n: int) -> None:
    """``n`` rows of 50 other functions, written by diskcache itself in one transaction."""
    import diskcache

    open_store().close()  # autopar creates the directory and database first
    with diskcache.Cache(str(cache_dir), statistics=0, tag_index=0) as cache, cache.transact():
        for i in range(n):
            cache.set(f"plan:v1:other.fn{i % 50}:{i}:n8:t10", "{}", tag=f"other.fn{i % 50}", expire=3600)


def test_count_and_forget_work_by_tag_and_prefix(cache_dir: Path) -> None:
    store = open_store()
    for i in range(3):
        store.set(f"plan:v1:mod.f:{i}", "{}", tag="mod.f", expire=3600)
    store.set("hint:plan:v1:mod.f:0", "7", tag="mod.f", expire=3600)
    store.set("plan:v1:mod.g:0", "{}", tag="mod.g")
    store.set("plan:v1:mod.f:untagged", "{}")
    store.set("plan:v1:mod.f:gone", "{}", tag="mod.f", expire=3600)
    with sqlite3.connect(cache_dir / "cache.db") as con:  # it expired since (diskcache culls it on the next write)
        con.execute("UPDATE Cache SET expire_time = ? WHERE key = 'plan:v1:mod.f:gone'", (time.time() - 1,))
    assert store.count("mod.f", "plan:v1:mod.f:") == 3
    assert store.count("mod.f", "hint:") == 1
    assert store.count("mod.f") == 4
    assert store.count("mod.g", "plan:") == 1
    assert store.count("nobody", "") == 0
    assert store.forget("mod.f") == 5  # the expired row too: it was still on disk
    assert store.count("mod.f") == 0
    assert store.get("plan:v1:mod.g:0") == "{}"
    assert store.get("plan:v1:mod.f:untagged") == "{}"
    assert store.forget("mod.f") == 0


def test_count_and_forget_among_20k_unrelated_rows(cache_dir: Path) -> None:
    _unrelated_rows(cache_dir, 20_000)
    f = workloads.heavy_plain
    name = f"{f.__module__}.{f.__qualname__}"
    f.plan(range(300))
    f.plan(range(3000))
    store = get_store()
    prefix = autopar.planner.plan_prefix(name)
    assert store.count(name, prefix) == 2 == sum(1 for k in store.list_keys() if k.startswith(prefix))
    assert store.count("other.fn7", "plan:") == 400
    removed = store.forget(name)
    assert removed >= 2  # its plans, and a hint row if its items were heavy
    assert store.count(name, "") == 0
    assert store.count("other.fn7", "plan:v1:other.fn7:") == 400
    with sqlite3.connect(cache_dir / "cache.db") as con:
        plan = con.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM Cache WHERE tag = ? AND raw = 1 AND substr(key, 1, 2) = ?",
            ("x", "pl"),
        ).fetchall()
    assert any("autopar_tag_rowid" in str(row) for row in plan), plan  # an index search, not a scan


def test_count_and_forget_on_a_broken_store_warn_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = autopar.store.PlanStore(blocker / "cache")
    with pytest.warns(CacheWarning, match="cannot create"):
        assert store.count("mod.f", "plan:") == 0
    # Once: another CacheWarning would fail the test (the test config makes it an error).
    assert store.forget("mod.f") == 0
    store.set("plan:v1:mod.f:0", "{}", tag="mod.f")  # kept in memory
    assert store.count("mod.f", "plan:") == 1
    assert store.forget("mod.f") == 1
    assert store.count("mod.f", "plan:") == 0
