"""Issue 10, cases 1-4: workers compute what the caller would compute *now*.

After the caller rebinds a global, changes a closure, a small config dict, a module
attribute, or defines a new function, the next ``.map`` must equal the serial loop
run at that moment, warm pools and cached pickles included, under every start
method. Explicit ``n_jobs``/``chunksize`` make each map use workers whatever the
machine's load; ``n_jobs`` alone goes through the planner (items probed here, the
rest in workers), which must not mix two states either.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autopar import auto_parallel
from tests.faults import settings, stateful

pytestmark = pytest.mark.timeout(90)

ITEMS = list(range(300))
RUN = {"n_jobs": 2, "chunksize": 10}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_state() -> Iterator[None]:
    yield
    stateful.SCALE = 1
    stateful.CONFIG["scale"] = 1
    settings.SCALE = 1


@pytest.mark.usefixtures("restore_state")
@pytest.mark.parametrize(
    "func",
    [stateful.scaled, stateful.scaled_via_helper, stateful.scaled_by_config, stateful.scaled_by_module_attribute],
    ids=["global", "through-a-helper", "config-dict-in-place", "module-attribute"],
)
def test_changed_module_state_is_seen_by_warm_workers(start_method: str, func: Any) -> None:
    assert func.map(ITEMS, **RUN) == ITEMS
    stateful.SCALE = 10
    stateful.CONFIG["scale"] = 10
    settings.SCALE = 10
    assert func.map(ITEMS, **RUN) == [func(x) for x in ITEMS] == [10 * x for x in ITEMS]


@pytest.mark.usefixtures("restore_state")
def test_planned_map_does_not_mix_the_probe_and_the_workers(start_method: str) -> None:
    stateful.SCALE = 7
    assert stateful.scaled.map(ITEMS, n_jobs=2) == [7 * x for x in ITEMS]


@pytest.mark.usefixtures("restore_state")
def test_unchanged_state_keeps_the_warm_pool_and_a_change_replaces_it(start_method: str) -> None:
    from autopar.backends.process import WarmPools

    def warm_pids() -> set[int]:
        (run,) = WarmPools.idle()
        return {p.pid for p in run.workers}

    first = set(stateful.pid.map(range(40), n_jobs=2, chunksize=1))
    pool = warm_pids()
    assert first <= pool
    again = set(stateful.pid.map(range(40), n_jobs=2, chunksize=1))
    assert again <= pool, "nothing changed: the warm workers serve the second map"
    assert warm_pids() == pool
    stateful.SCALE = 3  # pid() reads no SCALE, but scaled does: its change retires the pool for it
    assert stateful.scaled.map(ITEMS, **RUN) == [3 * x for x in ITEMS]
    after = set(stateful.pid.map(range(40), n_jobs=2, chunksize=1))
    assert after.isdisjoint(pool), "scaled's new state needed new workers"
    assert warm_pids().isdisjoint(pool)


@pytest.mark.usefixtures("restore_state")
def test_closures_lambdas_partials_and_wrappers_are_pickled_again_when_they_change(start_method: str) -> None:
    factor = 1
    closure = auto_parallel(lambda x: x * factor)
    partial = auto_parallel(functools.partial(stateful.multiply, 2))
    plain = auto_parallel(stateful.times_scale)  # a wrapper that cannot pickle by name
    assert closure.map(ITEMS, **RUN) == ITEMS
    assert partial.map(ITEMS, **RUN) == [2 * x for x in ITEMS]
    assert plain.map(ITEMS, **RUN) == ITEMS
    factor = 5
    stateful.SCALE = 10
    assert closure.map(ITEMS, **RUN) == [5 * x for x in ITEMS]
    assert partial.map(ITEMS, **RUN) == [20 * x for x in ITEMS]
    assert plain.map(ITEMS, **RUN) == [10 * x for x in ITEMS]


def _run_script(tmp_path: Path, body: str, method: str) -> Any:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(body))
    env_path = f"{ROOT}"
    proc = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**_env(), "PYTHONPATH": env_path},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


SCRIPT = """
    import json, sys, multiprocessing
    from autopar import auto_parallel

    SCALE = 1

    @auto_parallel
    def scaled(x):
        return x * SCALE

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[1])
        items = list(range(300))
        SCALE = 10  # set where spawn/forkserver workers never run it
        explicit = scaled.map(items, n_jobs=2, chunksize=10)
        planned = scaled.map(items, n_jobs=2)
        SCALE = 3
        again = scaled.map(items, n_jobs=2, chunksize=10)

        @auto_parallel
        def step2(x):  # defined after the workers started
            return x + SCALE

        late = step2.map(items, n_jobs=2, chunksize=10)
        print(json.dumps({"explicit": explicit, "planned": planned, "again": again, "late": late}))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_script_main_block_state_and_late_functions_reach_the_workers(tmp_path: Path, method: str) -> None:
    out = _run_script(tmp_path, SCRIPT, method)
    assert out["explicit"] == [10 * x for x in ITEMS]
    assert out["planned"] == [10 * x for x in ITEMS]
    assert out["again"] == [3 * x for x in ITEMS]
    assert out["late"] == [x + 3 for x in ITEMS]


def test_token_changes_only_when_what_the_function_reads_changes() -> None:
    from autopar.state import state_token

    def token(func: Callable[..., Any]) -> Any:
        return state_token(func)[0]

    before = token(stateful.scaled_via_helper.__wrapped__)
    assert token(stateful.scaled_via_helper.__wrapped__) == before
    stateful.SCALE = 2
    try:
        assert token(stateful.scaled_via_helper.__wrapped__) != before
    finally:
        stateful.SCALE = 1
    assert token(stateful.scaled_via_helper.__wrapped__) == before


def test_cpu_bound_work_on_a_loaded_machine_is_not_taken_for_waiting_work() -> None:
    """Time spent waiting for a CPU is not waiting on I/O (helper processes load both cores)."""
    import multiprocessing as mp

    from autopar.sampling import Sampler
    from tests import workloads

    ctx = mp.get_context("fork")
    stop = ctx.Event()
    hogs = [ctx.Process(target=_spin_until, args=(stop,)) for _ in range(4)]
    for hog in hogs:
        hog.start()
    try:
        sampler = Sampler(workloads.heavy_plain.__wrapped__)
        sampler.run(iter(range(100)), max_items=100, budget_s=0.3)
        sample = sampler.summary()
    finally:
        stop.set()
        for hog in hogs:
            hog.join(10)
    assert sample.cpu_fraction > 0.5, sample


def _spin_until(stop: Any) -> None:
    while not stop.is_set():
        pass


@pytest.mark.usefixtures("restore_state")
def test_alternating_functions_share_one_warm_pool(start_method: str) -> None:
    from autopar.backends.process import WarmPools

    def warm_pids() -> set[int]:
        (run,) = WarmPools.idle()
        return {p.pid for p in run.workers}

    assert stateful.scaled.map(ITEMS, **RUN) == ITEMS
    pool = warm_pids()
    for _ in range(2):
        assert set(stateful.pid.map(range(40), n_jobs=2, chunksize=1)) <= pool
        assert stateful.scaled_via_helper.map(ITEMS, **RUN) == ITEMS
        assert stateful.scaled.map(ITEMS, **RUN) == ITEMS
    assert warm_pids() == pool, "nothing changed: no function should have needed new workers"
