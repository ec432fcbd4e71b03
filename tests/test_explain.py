"""``f.explain()`` / ``autopar.explain()`` reports, progress bars and logging."""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import autopar
from autopar.explain import Explanation
from autopar.model import Workload, choose_plan
from autopar.plan import Plan
from autopar.progress import PlainProgress
from tests import workloads
from tests.conftest import MACHINE_COSTS


def test_explain_report_reads_well_and_matches_the_plan() -> None:
    report = workloads.heavy_plain.explain(range(300))
    text = str(report)
    assert report.plan.executor == "process"
    for expected in ("per item", "spread cv", "transfer per item", "machine costs", "predictions", "decision:", "why:"):
        assert expected in text, expected
    assert "<- chosen" in text
    assert report.predicted_speedups()[report.plan.n_jobs] == pytest.approx(report.plan.estimated_speedup)
    assert not report.runs
    assert workloads.heavy_plain.cache_info().currsize == 0, "explain must not write the cache"


def test_explain_with_real_runs_measures_every_worker_count() -> None:
    report = workloads.heavy.explain(range(200), run=True)
    assert report.plan.executor == "process"
    # Up to the CPUs, and the chosen count: 2 ms of spinning that a busy machine
    # interrupted can measure as waiting work, planned on more workers than CPUs.
    assert set(report.runs) == set(range(1, autopar.system.usable_cpus() + 1)) | {report.plan.n_jobs}
    chosen = report.runs[report.plan.n_jobs]
    assert chosen.n_jobs == report.plan.n_jobs
    assert chosen.wall_s > 0
    assert 1 <= len(chosen.busy_s) <= report.plan.n_jobs  # a worker that drew no chunk has no busy time
    assert os.getpid() not in chosen.busy_s
    assert 0.0 <= chosen.overhead_share < 1.0
    assert set(report.measured_speedups()) == set(report.runs)
    text = str(report)
    assert "after real runs" in text
    assert "worker busy time" in text
    assert "overhead share" in text


def test_explain_runs_the_chosen_plan_when_it_has_more_workers_than_cpus() -> None:
    # Sleeping items wait: the plan overlaps the waits on more threads than CPUs.
    # The report used to run only up to the CPU count and miss the chosen plan.
    report = workloads.sleepy.explain([0.005] * 80, run=True)
    assert report.plan.executor == "thread", report.plan.reason
    assert report.plan.n_jobs > 2
    assert report.runs[report.plan.n_jobs].n_jobs == report.plan.n_jobs
    assert "chosen plan: wall" in str(report)


def _explanation(w: Workload, cpus: int) -> Explanation:
    """A report on the pure model's decision for ``w``, as explain() would build it."""
    costs = MACHINE_COSTS["fork"]
    d = choose_plan(w, costs, usable_cpus=cpus)
    plan = Plan(d.executor, d.n_jobs, d.chunksize, d.estimated_speedup, d.reason, start_method="fork")
    sample = {"n_timed": 64, "mean_s": w.item_s, "median_s": w.item_s, "cv": w.cv, "cpu_fraction": w.cpu_fraction}
    sample |= {"in_bytes": w.in_bytes, "out_bytes": w.out_bytes, "pickle_s": w.pickle_s}
    profile = {
        "sample": sample,
        "costs": asdict(costs),
        "system": {"start_method": "fork"},
        "serial_s": d.serial_s,
        "predicted_s": d.predicted_s,
        "candidates": [asdict(c) for c in d.candidates],
        "considered": [asdict(c) for c in d.considered],
    }
    return Explanation("m.f", w.n_items or 0, plan, profile)


def test_the_chosen_plan_is_in_the_table_even_when_many_are_predicted_faster() -> None:
    # Waiting work with uneven items: the fewest workers within 3 % of the fastest
    # win, and here more than a table's rows (12) of configurations are faster.
    report = _explanation(Workload(n_items=1000, item_s=0.001, cv=0.5, cpu_fraction=0.1), cpus=2)
    ranked = sorted(report.profile["considered"], key=lambda c: c["predicted_s"])
    chosen = (report.plan.n_jobs, report.plan.chunksize)
    assert [(c["n_jobs"], c["chunksize"]) for c in ranked].index(chosen) >= 12
    text = str(report)
    [row] = [line for line in text.splitlines() if line.endswith("<- chosen")]
    assert row.split()[:3] == ["process", *(str(n) for n in chosen)]
    assert f"decision: {chosen[0]} workers, chunks of {chosen[1]}" in text
    assert f"... {len(ranked) - 13} more in to_dict()" in text


def test_explain_a_plain_function_serial() -> None:
    report = autopar.explain(abs, range(-3000, 3000))
    assert report.plan.executor == "serial"
    assert "decision: serial" in str(report)
    assert report.to_dict()["plan"]["executor"] == "serial"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = workloads.heavy_plain.explain(range(300), run=True)
    out = report.plot(tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    report = autopar.explain(abs, range(100))
    with pytest.raises(ImportError, match=r"pip install 'autopar\[plot\]'"):
        report.plot(tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_plain_progress_counts_items_known_and_unknown() -> None:
    stream = io.StringIO()
    bar = PlainProgress(10, "f", stream=stream)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert stream.getvalue().rstrip().endswith("s")
    assert "10/10 items (100.0 %)" in stream.getvalue()
    stream = io.StringIO()
    bar = PlainProgress(None, "g", stream=stream)
    bar.update(7)
    bar.close()
    assert "g: 7 items" in stream.getvalue()


@pytest.mark.parametrize("kind", ["serial", "process"])
def test_map_progress_counts_every_item_on_stderr(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    func = workloads.add_one if kind == "serial" else workloads.heavy_plain
    n = 3000 if kind == "serial" else 300
    assert func.map(range(n), progress=True) == [func.__wrapped__(x) for x in range(n)]
    err = capsys.readouterr().err
    assert f"{n}/{n}" in err.replace(",", ""), err[-300:]


def test_imap_progress_with_a_generator_of_unknown_length(capsys: pytest.CaptureFixture[str]) -> None:
    results = list(workloads.heavy_plain.imap((x for x in range(200)), progress=True))
    assert results == [3 * x for x in range(200)]
    err = capsys.readouterr().err.replace(",", "")
    assert "200" in err
    assert "it" in err  # tqdm's or the plain counter's unit


def test_decisions_and_cache_events_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="autopar")
    # Tiny items: the probe's median of 16 puts both calls in one time bucket
    # however busy the machine (one 2 ms item, once interrupted, may not).
    workloads.add_one.map(range(3000))
    workloads.add_one.map(range(3000))
    messages = [r.getMessage() for r in caplog.records if r.name == "autopar"]
    assert any("planned" in m for m in messages)
    assert any("plan cache hit" in m for m in messages)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "autopar")


@pytest.mark.timeout(120)
def test_explain_says_what_real_runs_back_the_stored_plan() -> None:
    from tests import workloads

    items = list(range(300))
    workloads.heavy_plain.map(items)
    workloads.heavy_plain.map(items)
    report = workloads.heavy_plain.explain(items)
    text = str(report)
    assert "stored plan (what calls run now)" in text
    stored = report.profile["stored"]
    assert sum(runs["runs"] for runs in stored["evidence"].values()) == 2, stored
    assert "real run(s)" in text
