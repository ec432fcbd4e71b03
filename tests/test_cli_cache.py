"""Issue 10 case 14: ``autopar cache info/list/clear`` on a store they cannot read or change.

They say on stderr what they could not do and exit 1, instead of printing
``plans: 0`` / ``removed 0 entries``. ``info`` and ``list`` are read-only: they
never create, rename or repair anything.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autopar.cli import main
from autopar.store import get_store
from tests import workloads
from tests.test_cache import open_store

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _corrupt_store(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "cache.db").write_bytes(b"this is not a database" * 100)


@pytest.mark.parametrize("command", [["cache", "info"], ["cache", "list"], ["cache", "list", "--json"]])
def test_reading_a_corrupt_store_fails_and_changes_nothing(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    _corrupt_store(cache_dir)
    before = _snapshot(cache_dir)
    assert main(command) == 1
    out, err = capsys.readouterr()
    assert "corrupt" in err
    assert "file is not a database" in err
    assert "plans:" not in out
    assert _snapshot(cache_dir) == before  # not set aside, not replaced


def test_info_on_a_missing_store_creates_nothing(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "(not created yet)" in out
    assert "plans:          0" in out
    assert not cache_dir.exists()
    assert main(["cache", "list"]) == 0
    assert main(["cache", "clear"]) == 0
    assert not cache_dir.exists()


def test_clear_removes_a_corrupt_database_and_set_aside_copies(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _corrupt_store(cache_dir)
    (cache_dir / "cache.db.corrupt-1700000000").write_bytes(b"old")
    (cache_dir / "cache.db.corrupt-1700000000-wal").write_bytes(b"old")
    assert main(["cache", "info"]) == 1
    capsys.readouterr()
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "cache.db.corrupt-1700000000" in out
    assert "cache.db (corrupt" in out
    assert list(cache_dir.iterdir()) == []
    open_store()
    workloads.heavy_plain.plan(range(300))  # a fresh store works
    assert main(["cache", "info"]) == 0
    assert "plans:          1" in capsys.readouterr().out


def test_info_counts_set_aside_databases(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_store()
    workloads.heavy_plain.plan(range(300))
    (cache_dir / "cache.db.corrupt-1700000000").write_bytes(b"old")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "plans:          1" in out
    assert "set aside:      cache.db.corrupt-1700000000" in out


def test_altered_store_is_reported_and_only_a_full_clear_removes_it(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_store()
    workloads.heavy_plain.plan(range(300))
    get_store().close()
    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute("CREATE TRIGGER planted BEFORE DELETE ON Cache BEGIN SELECT 1; END")
    for command in (
        ["cache", "info"],
        ["cache", "list"],
        ["cache", "clear", "--function", "tests.workloads.heavy_plain"],
    ):
        assert main(command) == 1
        assert "trigger 'planted'" in capsys.readouterr().err
    assert main(["cache", "clear"]) == 0  # removes the file; runs no SQL against it
    assert "trigger 'planted'" in capsys.readouterr().out
    assert not (cache_dir / "cache.db").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_foreign_owned_directory_is_reported(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "cache.db.corrupt-1700000000").write_bytes(b"theirs")
    os.chown(cache_dir, 65534, 65534)
    for command in (["cache", "info"], ["cache", "list"], ["cache", "clear"]):
        assert main(command) == 1
        assert "owned by another user (uid 65534)" in capsys.readouterr().err
    assert (cache_dir / "cache.db.corrupt-1700000000").exists()
    assert not (cache_dir / "cache.db").exists()


def test_unwritable_directory_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a user who owns the directory but may not write it (root may write anywhere)."""
    uid = os.geteuid() or 54321  # as root: a uid of our own, in a directory that uid can reach
    outer = Path(tempfile.mkdtemp(prefix="autopar-cli-"))
    try:
        os.chmod(outer, 0o755)
        cache_dir = outer / "cache"
        monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(cache_dir))
        open_store()
        workloads.heavy_plain.plan(range(300))
        get_store().close()
        for path in [cache_dir, *cache_dir.iterdir()]:
            os.chown(path, uid, -1)
        os.chmod(cache_dir, 0o500)
        # The interpreter may live where that uid cannot read: import everything, then switch.
        script = (
            "import os, sys\n"
            "from autopar.cli import main\n"
            "import autopar.store, autopar.plan, autopar.system, autopar.planner, autopar.api, diskcache\n"
            "import autopar.store_admin, argparse, gettext, json, locale, sqlite3\n"
            f"os.geteuid() == {uid} or os.setuid({uid})\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        for command in (["cache", "info"], ["cache", "clear"]):
            done = subprocess.run(
                [sys.executable, "-c", script, *command], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 1, done.stdout + done.stderr
            assert "is not writable by this user" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        os.chmod(outer / "cache", 0o700)
        shutil.rmtree(outer)
