"""Issue 10 case 12: no home directory (``HOME`` unset, no passwd entry) must not break ``.map``."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child: the uid change and the environment must not leak into the test run.
CHILD = r"""
import os, sys, warnings
import autopar
from autopar import CacheWarning
from tests import workloads

how, warm_dir = sys.argv[1], sys.argv[2]
# Load every module a map needs while the interpreter's files are readable (a
# uid without an account may not read /root, where Python may live).
os.environ["AUTOPAR_CACHE_DIR"] = warm_dir
assert workloads.heavy_plain.map(range(300)) == [3 * x for x in range(300)]
autopar.shutdown()  # workers of this uid; the next ones are the new uid's
del os.environ["AUTOPAR_CACHE_DIR"]
if how == "setuid":
    os.setuid(int(sys.argv[3]))  # a real uid with no passwd entry
else:
    import pwd

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    pwd.getpwuid = no_entry
assert "HOME" not in os.environ
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        autopar.get_cache_dir()
    except RuntimeError as exc:
        print(f"get_cache_dir: {exc}")
    assert workloads.heavy_plain.map(range(3000)) == [3 * x for x in range(3000)]
    assert workloads.add_one.map(range(5000)) == [x + 1 for x in range(5000)]
    assert workloads.add_one.plan(range(5000)).from_cache  # planned once, kept in memory
    print("cache_info:", workloads.add_one.cache_info())
autopar.shutdown()
found = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
print("warnings:", found)
assert len(found) == 1, found
assert "home" in found[0], found
print("ok")
"""


def _free_uid() -> int:
    for uid in range(54321, 60000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("no free uid")


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            "setuid",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a uid with no account"),
        ),
        "no-passwd-entry",  # for runs without root: pwd.getpwuid raises as for such a uid
    ],
)
def test_map_without_a_home_directory_plans_in_memory(how: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "AUTOPAR_CACHE_DIR", "XDG_CACHE_HOME")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, how, str(tmp_path / "warm"), str(_free_uid())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "get_cache_dir: no home directory" in done.stdout
    assert done.stdout.rstrip().endswith("ok")


def test_cli_without_a_home_directory_says_so(tmp_path: Path) -> None:
    script = (
        "import pwd, sys\n"
        "def no_entry(uid): raise KeyError(uid)\n"
        "pwd.getpwuid = no_entry\n"
        "from autopar.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "AUTOPAR_CACHE_DIR", "XDG_CACHE_HOME")}
    for args in (["cache", "info"], ["cache", "list"], ["cache", "clear"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "no home directory" in done.stderr
        assert "AUTOPAR_CACHE_DIR" in done.stderr
        assert "Traceback" not in done.stderr
