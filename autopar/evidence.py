"""Evidence from real runs, kept with a stored plan: FFTW's "wisdom" for maps.

For each configuration a function has actually run (``serial``, ``process:2:64``),
the last few runs' seconds per item: wall (what the caller waited) and busy (the
work itself, net of waiting for a CPU). The cost model proposes configurations;
evidence disposes: once :data:`MIN_RUNS` runs back a configuration, its measured
time replaces the prediction. The *lower* median is used, so one slow run (a busy
moment on a shared machine) moves nothing.

Pure values: read from untrusted JSON (every number checked), written back as JSON.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["MAX_RUNS", "MIN_RUNS", "Evidence", "Runs", "config_name", "lower_median", "parse_config"]

#: Runs kept per configuration (the oldest is dropped first).
MAX_RUNS = 5
#: Configurations kept per plan: those with the fewest runs go first.
MAX_CONFIGS = 6
#: Runs of a configuration before its measured time is trusted over the model.
MIN_RUNS = 2
#: A configuration with :data:`MAX_RUNS` runs is settled: a further run within this
#: factor of its lower median adds nothing, and is not written to the store.
SETTLED_BAND = 1.5
#: Largest believable seconds per item (a day): anything else in a record is forged.
_MAX_PER_ITEM_S = 86_400.0


def config_name(executor: str, n_jobs: int, chunksize: int) -> str:
    """``serial``, or ``process:<workers>:<chunk size>`` (``thread:...`` for threads):
    a configuration's name in records."""
    return "serial" if executor == "serial" or n_jobs <= 1 else f"{executor}:{n_jobs}:{chunksize}"


def parse_config(name: str) -> tuple[str, int, int] | None:
    """``(executor, n_jobs, chunksize)`` from :func:`config_name`'s text, or None."""
    if name == "serial":
        return "serial", 1, 1
    parts = name.split(":")
    if len(parts) != 3 or parts[0] not in ("process", "thread") or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    n_jobs, chunksize = int(parts[1]), int(parts[2])
    executor = "thread" if parts[0] == "thread" else "process"
    return (executor, n_jobs, chunksize) if n_jobs >= 2 and chunksize >= 1 else None


def lower_median(values: tuple[float, ...]) -> float:
    """The median, or of an even count the lower middle value: one high outlier
    (a run slowed by other processes) never raises it."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True)
class Runs:
    """The last runs of one configuration, seconds per item."""

    wall: tuple[float, ...] = ()
    busy: tuple[float, ...] = ()

    @property
    def count(self) -> int:
        return len(self.wall)


@dataclass(frozen=True)
class Evidence:
    """Every configuration's recent runs, and how many untried ones were tried."""

    runs: Mapping[str, Runs] = field(default_factory=dict)
    trials: int = 0
    last: float = 0.0
    """When the last run was recorded (seconds since the epoch; 0: never)."""

    @classmethod
    def from_record(cls, obj: object) -> Evidence:
        """Evidence read back from a stored plan; anything malformed is left out."""
        if not isinstance(obj, dict):
            return cls()
        runs: dict[str, Runs] = {}
        body = obj.get("runs")
        if isinstance(body, dict):
            for name, value in list(body.items())[:MAX_CONFIGS]:
                if not isinstance(name, str) or parse_config(name) is None or not isinstance(value, dict):
                    continue
                wall, busy = _numbers(value.get("wall")), _numbers(value.get("busy"))
                if wall and len(wall) == len(busy):
                    runs[name] = Runs(wall, busy)
        trials = obj.get("trials")
        last = obj.get("last")
        when = 0.0
        if isinstance(last, (int, float)) and not isinstance(last, bool) and 0 <= last <= time.time() + 60:
            when = float(last)
        return cls(runs, trials if type(trials) is int and 0 <= trials <= 1000 else 0, when)

    def to_record(self) -> dict[str, Any]:
        return {
            "runs": {name: {"wall": list(r.wall), "busy": list(r.busy)} for name, r in self.runs.items()},
            "trials": self.trials,
            "last": self.last,
        }

    def add(self, config: str, wall_per_item: float, busy_per_item: float) -> Evidence:
        """This evidence with one more run of ``config``."""
        old = self.runs.get(config, Runs())
        runs = dict(self.runs)
        runs[config] = Runs((*old.wall, wall_per_item)[-MAX_RUNS:], (*old.busy, busy_per_item)[-MAX_RUNS:])
        while len(runs) > MAX_CONFIGS:
            fewest = min((n for n in runs if n != config), key=lambda n: runs[n].count)
            del runs[fewest]
        return replace(self, runs=runs, last=time.time())

    def repeated(self, window_s: float) -> bool:
        """True when the last run was recorded less than ``window_s`` ago: calls come
        often enough that the next one finds the workers of this one still running."""
        return self.last > 0 and 0 <= time.time() - self.last <= window_s

    def count(self, config: str) -> int:
        """Runs kept of ``config``."""
        runs = self.runs.get(config)
        return runs.count if runs is not None else 0

    def measured(self, config: str) -> float | None:
        """Seconds per item ``config`` took (lower median), once :data:`MIN_RUNS` back it."""
        runs = self.runs.get(config)
        if runs is None or runs.count < MIN_RUNS:
            return None
        return lower_median(runs.wall)

    def settled(self, config: str, wall_per_item: float) -> bool:
        """True when another run like this one would teach nothing (no store write)."""
        runs = self.runs.get(config)
        if runs is None or runs.count < MAX_RUNS:
            return False
        typical = lower_median(runs.wall)
        return typical / SETTLED_BAND <= wall_per_item <= typical * SETTLED_BAND

    def item_s(self) -> tuple[float, int]:
        """Median busy seconds per item over every kept run, and how many runs."""
        busy = [b for r in self.runs.values() for b in r.busy if b > 0]
        return (statistics.median(busy), len(busy)) if busy else (0.0, 0)


def _numbers(value: object) -> tuple[float, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for v in value[:MAX_RUNS]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return ()
        if not 0 <= v <= _MAX_PER_ITEM_S:
            return ()
        out.append(float(v))
    return tuple(out)
