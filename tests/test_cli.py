"""The ``autopar`` command line, run as users run it: ``python -m autopar``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autopar._version import CACHE_FORMAT
from autopar.cli import main
from tests import workloads
from tests.test_cache import open_store

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autopar", *args], cwd=cwd, capture_output=True, text=True, timeout=120
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
    open_store()  # the commands read the database itself, as from another process
    workloads.heavy_plain.plan(range(300))
    workloads.add_one.plan(range(5000))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"location:       {cache_dir}" in out
    assert "plans:          2" in out
    assert f"format version: {CACHE_FORMAT}" in out

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


def test_clear_function_accepts_module_colon_and_dotted_names(capsys: pytest.CaptureFixture[str]) -> None:
    open_store()
    workloads.heavy_plain.plan(range(300))
    workloads.add_one.plan(range(5000))
    assert main(["cache", "clear", "--function", "tests.workloads:add_one"]) == 0
    assert "removed 1 entry of tests.workloads.add_one" in capsys.readouterr().out
    assert workloads.add_one.cache_info().currsize == 0
    assert workloads.heavy_plain.cache_info().currsize == 1
    assert main(["cache", "clear", "--function", "tests.workloads.heavy_plain"]) == 0
    assert "of tests.workloads.heavy_plain" in capsys.readouterr().out
    assert workloads.heavy_plain.cache_info().currsize == 0


def test_explain_accepts_a_dotted_name() -> None:
    done = _cli("explain", "tests.workloads.heavy_plain", "--items", "300")
    assert done.returncode == 0, done.stderr
    assert "autopar explain: tests.workloads.heavy_plain over 300 items" in done.stdout
    done = _cli("explain", "tests.workloads", "--items", "10")
    assert done.returncode == 1
    assert "tests.workloads is a module, not a function" in done.stderr


CPU_MODULE = """
import time

def cpu(x):
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass
    return 2 * x
"""


def _project(root: Path) -> Path:
    """A script next to a package that uses a relative import, as users' projects look."""
    root.mkdir()
    (root / "mymod.py").write_text(CPU_MODULE)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "helpers.py").write_text("SCALE = 5\n")
    (root / "pkg" / "job.py").write_text("from .helpers import SCALE\n\ndef scaled(x):\n    return x * SCALE\n")
    return root


def test_explain_a_function_in_a_file(tmp_path: Path) -> None:
    root = _project(tmp_path / "project")
    done = _cli("explain", "./mymod.py:cpu", "--items", "40", cwd=root)
    assert done.returncode == 0, done.stderr
    assert "autopar explain: mymod.cpu over 40 items" in done.stdout
    done = _cli("explain", str(root / "pkg" / "job.py") + ":scaled", "--items", "40", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "autopar explain: pkg.job.scaled over 40 items" in done.stdout


def test_a_function_from_a_file_runs_on_spawn_workers(tmp_path: Path) -> None:
    root = _project(tmp_path / "project")
    script = (
        "import multiprocessing, sys\n"
        "multiprocessing.set_start_method('spawn')\n"
        "from autopar.cli import main\n"
        "sys.exit(main(['explain', './mymod.py:cpu', '--items', '40', '--run', '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["function"] == "mymod.cpu"
    assert "2" in report["runs"]  # ran on two spawned workers, which imported mymod from the file's directory


def test_file_path_errors_are_clear(tmp_path: Path) -> None:
    root = _project(tmp_path / "project")
    done = _cli("explain", "./missing.py:cpu", "--items", "10", cwd=root)
    assert done.returncode == 1
    assert "no such file: ./missing.py" in done.stderr
    (root / "json.py").write_text(CPU_MODULE)  # shadowed: the standard library's json is imported first
    done = _cli("explain", "project/json.py:cpu", "--items", "10", cwd=tmp_path)
    assert done.returncode == 1
    assert "already taken" in done.stderr
    assert "Traceback" not in done.stderr


def test_clear_function_accepts_a_file_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from autopar import auto_parallel

    root = _project(tmp_path / "project")
    spec = importlib.util.spec_from_file_location("mymod", root / "mymod.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cpu = auto_parallel(module.cpu)
    open_store()
    cpu.plan(range(200))
    assert cpu.cache_info().currsize == 1
    assert main(["cache", "clear", "--function", f"{root / 'mymod.py'}:cpu"]) == 0
    assert "of mymod.cpu" in capsys.readouterr().out
    assert cpu.cache_info().currsize == 0
