"""The ``autopar`` command line, run as users run it: ``python -m autopar``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autopar.cli import main
from tests import workloads

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autopar", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_everywhere() -> None:
    for args in ([], ["cache"], ["cache", "list"], ["explain"]):
        done = _cli(*args, "--help")
        assert done.returncode == 0, done.stderr
        assert "usage: autopar" in done.stdout


def test_usage_errors_exit_2_on_stderr() -> None:
    done = _cli("cache", "frobnicate")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
    assert done.stdout == ""
    done = _cli("explain", "tests.workloads:heavy_plain")  # neither --items nor --data
    assert done.returncode == 2
    done = _cli("explain", "tests.workloads:heavy_plain", "--items", "0")
    assert done.returncode == 2


def test_runtime_errors_exit_1_on_stderr() -> None:
    done = _cli("explain", "no_such_module_xyz:f", "--items", "10")
    assert done.returncode == 1
    assert "cannot import 'no_such_module_xyz'" in done.stderr
    done = _cli("explain", "tests.workloads:missing", "--items", "10")
    assert done.returncode == 1
    assert "has no attribute 'missing'" in done.stderr
    done = _cli("explain", "tests.workloads", "--items", "10")
    assert done.returncode == 1
    assert "MODULE:FUNCTION" in done.stderr


def test_cache_info_list_clear_prune(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workloads.heavy_plain.plan(range(300))
    workloads.add_one.plan(range(5000))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"location:       {cache_dir}" in out
    assert "plans:          2" in out
    assert "format version: 1" in out

    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert any("tests.workloads.heavy_plain" in line and "2 workers" in line for line in lines)
    assert any("tests.workloads.add_one" in line and "serial" in line for line in lines)

    assert main(["cache", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["function"] for r in rows} == {"tests.workloads.heavy_plain", "tests.workloads.add_one"}
    assert all({"size_bucket", "time_bucket", "n_jobs", "chunksize", "age_s", "reason"} <= set(r) for r in rows)

    assert main(["cache", "clear", "--function", "tests.workloads.add_one"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert workloads.add_one.cache_info().currsize == 0
    assert workloads.heavy_plain.cache_info().currsize == 1

    assert main(["cache", "prune", "--ttl", "0"]) == 0
    assert "removed" in capsys.readouterr().out
    assert workloads.heavy_plain.cache_info().currsize == 0
    assert main(["cache", "clear"]) == 0


def test_explain_from_the_command_line(tmp_path: Path) -> None:
    done = _cli("explain", "tests.workloads:heavy_plain", "--items", "300")
    assert done.returncode == 0, done.stderr
    assert "autopar explain: tests.workloads.heavy_plain over 300 items" in done.stdout
    assert "decision: 2 workers" in done.stdout
    data = tmp_path / "items.json"
    data.write_text(json.dumps(list(range(5000))))
    done = _cli("explain", "tests.workloads:add_one", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["plan"]["executor"] == "serial"


def test_explain_with_a_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "speedup.png"
    done = _cli("explain", "tests.workloads:heavy_plain", "--items", "300", "--run", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "after real runs" in done.stdout
