"""Issue 10 case 13: a database with objects planted in its schema never hangs or steers ``.map``.

A trigger runs inside our own writes, so a trigger that never ends would make the
first plan write never return. Such a store is refused before diskcache opens it,
and every statement is stopped after ``STATEMENT_DEADLINE_S`` in case something
is planted after the check.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autopar import CacheWarning
from autopar.store import PlanStore, get_store
from tests import workloads
from tests.test_cache import open_store

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ITEMS = range(300)

ENDLESS = "SELECT count(*) FROM (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT i FROM r)"


def _made_store(cache_dir: Path) -> Path:
    """A store autopar made and closed, as another process would find it."""
    open_store()
    workloads.heavy_plain.plan(ITEMS)
    get_store().close()
    return cache_dir / "cache.db"


def _run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    # A child, because a statement that never ends cannot be interrupted from Python:
    # before the fix this times out instead of hanging the test run.
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


MAP_ON_TAMPERED_STORE = r"""
import warnings
from autopar import CacheWarning
from tests import workloads

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert workloads.add_one.map(range(5000)) == [x + 1 for x in range(5000)]  # a miss: it writes a plan
    assert workloads.add_one.plan(range(5000)).from_cache
found = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
print(found)
assert len(found) == 1 and "did not create" in found[0], found
"""


@pytest.mark.parametrize("when", ["BEFORE INSERT", "AFTER INSERT"])
def test_endless_trigger_is_refused_and_map_returns(cache_dir: Path, when: str) -> None:
    db = _made_store(cache_dir)
    with sqlite3.connect(db) as con:
        con.execute(f"CREATE TRIGGER planted {when} ON Cache BEGIN {ENDLESS}; END")
    done = _run_child(MAP_ON_TAMPERED_STORE)
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(db) as con:  # refused, not used: the trigger never ran
        assert con.execute("SELECT count(*) FROM Cache WHERE key LIKE 'plan:%add_one%'").fetchone() == (0,)


TRIGGER_AFTER_OPEN = r"""
import sqlite3, sys, time, warnings
from pathlib import Path
from autopar.store import STATEMENT_DEADLINE_S, PlanStore

directory = Path(sys.argv[1])
store = PlanStore(directory)
assert store.wait_open(30)  # opened and checked: nothing planted yet
store.set("plan:first", "{}")
with sqlite3.connect(directory / "cache.db") as con:
    con.execute("CREATE TRIGGER planted BEFORE INSERT ON Cache BEGIN " + sys.argv[2] + "; END")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.monotonic()
    store.set("plan:second", "{}")  # fires the trigger
    took = time.monotonic() - t0
assert store.get("plan:second") == "{}"  # kept in memory
assert not store.persistent
print(f"took {took:.2f} s", [str(w.message) for w in caught])
assert len(caught) == 1 and "ran past" in str(caught[0].message)
"""


def test_trigger_planted_after_opening_is_stopped_by_the_statement_deadline(cache_dir: Path) -> None:
    _made_store(cache_dir)
    done = _run_child(TRIGGER_AFTER_OPEN, str(cache_dir), ENDLESS)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "planted",
    [
        "CREATE TRIGGER planted AFTER DELETE ON Cache BEGIN SELECT 1; END",
        "CREATE TRIGGER on_settings BEFORE UPDATE ON Settings BEGIN SELECT 1; END",
        "CREATE VIEW planted AS SELECT key FROM Cache",
        "CREATE TABLE planted (x)",
        "CREATE INDEX planted ON Cache (length(value))",
        # diskcache's own trigger, under its own name, with another body
        "DROP TRIGGER Settings_count_insert; CREATE TRIGGER Settings_count_insert AFTER INSERT ON Cache"
        " FOR EACH ROW BEGIN UPDATE Settings SET value = value + 2 WHERE key = 'count'; END",
    ],
    ids=["trigger", "settings-trigger", "view", "table", "expression-index", "altered-trigger"],
)
def test_foreign_schema_objects_fall_back_to_memory(cache_dir: Path, planted: str) -> None:
    db = _made_store(cache_dir)
    with sqlite3.connect(db) as con:
        con.executescript(planted)
    fresh = PlanStore(cache_dir)
    with pytest.warns(CacheWarning, match="did not create"):
        assert not fresh.wait_open(30)
    fresh.set("plan:x", "{}")
    assert fresh.get("plan:x") == "{}"


def test_a_store_autopar_made_passes_its_own_check(cache_dir: Path) -> None:
    """Guards the expected-schema table against a diskcache that writes its schema differently."""
    _made_store(cache_dir)
    fresh = PlanStore(cache_dir)
    assert fresh.wait_open(30)
    fresh.set("plan:v1:f:x", "{}", tag="f")
    assert fresh.count("f", "plan:") == 1  # builds autopar's tag index
    fresh.close()
    again = PlanStore(cache_dir)  # the schema now includes the tag index
    assert again.wait_open(30)
    assert again.get("plan:v1:f:x") == "{}"
    with sqlite3.connect(cache_dir / "cache.db") as con:
        names = {name for (name,) in con.execute("SELECT name FROM sqlite_master")}
    assert "autopar_tag_rowid" in names
