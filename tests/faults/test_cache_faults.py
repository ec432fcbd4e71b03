"""Issue 4, the plan store as untrusted, fallible input: it never breaks ``.map``."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import autopar
from autopar import CacheWarning
from autopar.store import PlanStore, get_store
from tests import workloads
from tests.conftest import watch_children

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ITEMS = range(300)
EXPECTED = [3 * x for x in ITEMS]


def _run(module: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=90, **kwargs
    )


def _timed_first_map(func: Any, items: Any) -> float:
    t0 = time.perf_counter()
    assert func.map(items) == [func.__wrapped__(x) for x in items]
    return time.perf_counter() - t0


def _fresh_store_latency(cache_dir: Path) -> float:
    """How long the first map of a tiny workload takes on a healthy, empty store."""
    return _timed_first_map(workloads.add_one, range(3000))


def test_corrupt_db_adds_under_100ms(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy = _fresh_store_latency(cache_dir)
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir(mode=0o700)
    (broken_dir / "cache.db").write_bytes(os.urandom(8192))
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(broken_dir))
    with pytest.warns(CacheWarning, match="corrupt") as record:
        broken = _timed_first_map(workloads.add_one, range(3001))  # another size bucket: a real miss
    assert sum("corrupt" in str(w.message) for w in record) == 1, [str(w.message) for w in record]
    assert list(broken_dir.glob("cache.db.corrupt-*"))
    # No lock wait or retry loop: well under a second even on a loaded machine (on a
    # quiet one the difference is tens of milliseconds).
    assert broken - healthy < 1.0, f"corrupt store added {1e3 * (broken - healthy):.0f} ms"


def test_disk_full_warns_once_and_every_map_is_right() -> None:
    done = _run("tests.faults.disk_full")
    assert done.returncode == 0, done.stdout + done.stderr


def test_directory_deleted_mid_run(cache_dir: Path) -> None:
    assert workloads.heavy_plain.map(ITEMS) == EXPECTED
    for path in sorted(cache_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    cache_dir.rmdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # whether SQLite notices is up to it
        assert workloads.heavy_plain.map(range(5000)) == [3 * x for x in range(5000)]
        assert workloads.add_one.map(range(777)) == [x + 1 for x in range(777)]


def test_write_lock_held_by_another_process_delays_map_under_100ms(cache_dir: Path) -> None:
    assert workloads.add_one.map(range(64)) == list(range(1, 65))  # creates and opens the store
    healthy = _timed_first_map(workloads.add_one, range(3000))
    locker = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.locker", str(cache_dir / "cache.db"), "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        with pytest.warns(CacheWarning, match="locked"):
            held = _timed_first_map(workloads.add_one, range(5000))  # a miss: it must write
        # The lock is held 10 s: anything near that means autopar waited for it.
        assert held - healthy < 1.0, f"the lock added {1e3 * (held - healthy):.0f} ms"
        # a new process-wide store (as in another process) must not wait 60 s in diskcache's constructor
        fresh = PlanStore(cache_dir)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheWarning)
            fresh.set("plan:probe", "{}")
            assert fresh.get("plan:probe") == "{}"  # kept in memory meanwhile
        assert time.perf_counter() - t0 < 1.0  # not diskcache's 60 s of retries
    finally:
        locker.kill()
        locker.wait()


def test_pickled_key_and_pickle_mode_value_never_run(cache_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    workloads.heavy_plain.plan(ITEMS)
    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, mode, value)"
            " VALUES (?, 0, 0, NULL, 0, 1, 'x')",
            (pickle.dumps(Payload()),),
        )
        con.execute("UPDATE Cache SET mode = 4, value = ? WHERE key LIKE 'costs:%'", (pickle.dumps(Payload()),))
    workloads.heavy_plain.cache_info()
    autopar.prune_expired_cache()
    workloads.heavy.plan(ITEMS)  # reads the (poisoned) measured costs
    workloads.heavy_plain.cache_clear()
    assert not marker.exists(), "a pickled key or value was unpickled"


@pytest.mark.parametrize(
    "poison",
    [
        {"n_jobs": 10**6},
        {"n_jobs": 0},
        {"n_jobs": -1},
        {"n_jobs": "4"},
        {"n_jobs": float("nan")},
        {"n_jobs": None},
        {"chunksize": 0},
        {"chunksize": 10**12},
        {"executor": "threads"},
        {"reason": 42},
    ],
    ids=repr,
)
def test_poisoned_plans_are_ignored_or_clamped(poison: dict[str, Any]) -> None:
    f = workloads.heavy_plain
    f.plan(ITEMS)
    store = get_store()
    [key] = [k for k in store.list_keys() if k.startswith("plan:")]
    record = json.loads(store.get(key) or "{}")
    record["plan"].update(poison)
    store.set(key, json.dumps(record))
    with watch_children() as watch:
        assert f.map(ITEMS) == EXPECTED
    assert watch.peak <= autopar.system.usable_cpus()
    plan = f.plan(ITEMS)
    assert 1 <= plan.n_jobs <= autopar.system.usable_cpus()
    assert 1 <= plan.chunksize <= autopar.plan.MAX_CHUNKSIZE


def test_wrong_schema_is_ignored() -> None:
    f = workloads.heavy_plain
    f.plan(ITEMS)
    store = get_store()
    for bad in ("[]", "null", '{"format": 1, "kind": "plan"}', "{not json", json.dumps({"plan": "x"})):
        # Every plan row: 2 ms items sit on a time-bucket edge, so a re-plan may
        # store its plan under the neighbouring bucket's key.
        for key in [k for k in store.list_keys() if k.startswith("plan:")]:
            store.set(key, bad)
        assert not f.plan(ITEMS).from_cache


def test_row_with_outside_filename_reads_and_deletes_nothing(cache_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    assert get_store().wait_open(30), "the store opens (a loaded machine may take a while)"
    workloads.heavy_plain.plan(ITEMS)
    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL WHERE key LIKE 'plan:%'", (str(victim),))
    assert not workloads.heavy_plain.plan(ITEMS).from_cache  # refused, re-planned, overwritten
    workloads.heavy_plain.cache_clear()
    autopar.clear_cache()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize(
    ("key", "value"),
    [("sqlite_journal_mode", "delete"), ("disk__directory", "/"), ("sqlite_foo", "1"), ("count", "x")],
)
def test_tampered_settings_fall_back_to_memory(cache_dir: Path, key: str, value: str) -> None:
    assert get_store().wait_open(30), "the store opens (a loaded machine may take a while)"
    workloads.heavy_plain.plan(ITEMS)
    get_store().close()
    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute("INSERT OR REPLACE INTO Settings VALUES (?, ?)", (key, value))
    fresh = PlanStore(cache_dir)
    with pytest.warns(CacheWarning, match="Settings"):
        assert not fresh.wait_open(30)  # refused (waiting: a loaded machine may open slowly)
    fresh.set("plan:x", "{}")
    assert fresh.get("plan:x") == "{}"


def test_symlinked_cache_dir_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    cache_dir.symlink_to(real)
    with pytest.warns(CacheWarning, match="symlink"):
        assert workloads.heavy_plain.map(ITEMS) == EXPECTED
    assert not (real / "cache.db").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_cache_dir_owned_by_another_user_is_refused(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, 65534, 65534)
    with pytest.warns(CacheWarning, match="owned by another user"):
        assert workloads.heavy_plain.map(ITEMS) == EXPECTED
    assert not (cache_dir / "cache.db").exists()


def test_eight_processes_by_four_threads_share_one_store(cache_dir: Path) -> None:
    workloads.add_one.map(range(100))  # create the store first
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.faults.hammer", str(i), "4"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    outcomes = [(p.wait(timeout=90), p.stderr.read() if p.stderr else "") for p in procs]
    assert all(code == 0 for code, _ in outcomes), outcomes
    with sqlite3.connect(cache_dir / "cache.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        modes = {row[0] for row in con.execute("SELECT DISTINCT mode FROM Cache")}
    assert modes == {1}


def test_plans_stored_while_the_database_opens_reach_the_disk(cache_dir: Path) -> None:
    """A store that is only slow to open (here: locked) is not broken: no warning, nothing lost."""
    assert workloads.add_one.map(range(64)) == list(range(1, 65))  # creates the store
    get_store().close()
    locker = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.locker", str(cache_dir / "cache.db"), "30"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        fresh = PlanStore(cache_dir)
        fresh.set("plan:v1:early", "{}", tag="early")  # diskcache's constructor waits for the lock
        assert fresh.get("plan:v1:early") == "{}"
        assert not fresh.persistent
    finally:
        locker.kill()
        locker.wait()
    assert fresh.wait_open(30)  # a hang guard, not a timing assertion
    assert fresh.get("plan:v1:early") == "{}"
    assert fresh.count("early", "plan:") == 1
    fresh.close()
    assert PlanStore(cache_dir).get("plan:v1:early") == "{}"  # on disk, for the next process
