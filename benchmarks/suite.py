"""The benchmark suite: eleven workloads of different shapes, each a module-level
function (importable by spawn workers) with a data factory.

Sizes are chosen so each serial run takes roughly 0.3-1.5 s on a 2-core machine:
long enough to measure, short enough to repeat every method several times.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from autopar import auto_parallel

#: Loop iterations per millisecond of CPU in :func:`_burn` (43 ns each, measured on
#: the 2-core benchmark machine with CPython 3.11).
ITERATIONS_PER_MS = 23_000


def _spin(seconds: float) -> int:
    """A fixed amount of CPU work, about ``seconds`` long on an idle core.

    Not a wall-clock loop: work that only waits for the clock finishes just as
    fast on an oversubscribed machine, which would flatter too many workers.
    """
    acc = 0
    for i in range(int(seconds * 1000 * ITERATIONS_PER_MS)):
        acc = (acc * 31 + i) % 1_000_003
    return acc


@auto_parallel
def trivial(x: int) -> int:
    return x + 1


@auto_parallel
def cheap(x: int) -> int:
    _spin(20e-6)
    return x


@auto_parallel
def heavy(x: int) -> int:
    _spin(0.002)
    return x


@auto_parallel
def very_heavy(x: int) -> int:
    _spin(0.25)
    return x


@auto_parallel
def tailed(cost: float) -> float:
    _spin(cost)
    return cost


@auto_parallel
def big_input(blob: bytes) -> int:
    """A checksum of 1 MB: ~0.1 ms of work, less than moving the megabyte to a worker."""
    return zlib.crc32(blob)


@auto_parallel
def big_output(x: int) -> bytes:
    return bytes([x % 256]) * (1 << 20)


@auto_parallel
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


_LOG = re.compile(r"(?P<ip>\d+\.\d+\.\d+\.\d+) - - \[(?P<ts>[^\]]+)\] \"(?P<method>\w+) (?P<path>\S+)")


@auto_parallel
def regex_logs(lines: list[str]) -> int:
    hits = 0
    for line in lines:
        match = _LOG.match(line)
        if match and match.group("method") == "GET":
            hits += len(match.group("path"))
    return hits


@auto_parallel
def json_roundtrip(doc: str) -> str:
    obj = json.loads(doc)
    obj["total"] = sum(r["value"] for r in obj["rows"])
    return json.dumps(obj, sort_keys=True)


@auto_parallel
def compress(block: bytes) -> int:
    return len(zlib.compress(block, 6))


def _log_batches(n: int) -> list[list[str]]:
    rng = random.Random(1)
    return [
        [
            f"10.0.{rng.randrange(256)}.{rng.randrange(256)} - - [24/Nov/2026:20:{i % 60:02d}:00 +0000] "
            f'"{rng.choice(["GET", "POST"])} /api/items/{rng.randrange(10**6)}?q={"x" * rng.randrange(40)} HTTP/1.1"'
            for i in range(200)
        ]
        for _ in range(n)
    ]


def _json_docs(n: int) -> list[str]:
    rng = random.Random(2)
    return [
        json.dumps({"id": i, "rows": [{"key": f"k{j}", "value": rng.random()} for j in range(400)]}) for i in range(n)
    ]


def _blocks(n: int) -> list[bytes]:
    rng = random.Random(3)
    words = [bytes(rng.choices(b"abcdefghij", k=8)) for _ in range(500)]
    return [b" ".join(rng.choices(words, k=7000)) for _ in range(n)]


def _tailed_costs(n: int) -> list[float]:
    rng = random.Random(4)
    # lognormal with sigma 1.2: mean ~0.8 ms, a few items 20x the median
    return [min(0.05, 0.0004 * math.exp(rng.gauss(0, 1.2))) for _ in range(n)]


@dataclass(frozen=True)
class Workload:
    """A benchmark case: the decorated function and a factory for fresh input."""

    name: str
    func: Any
    make: Callable[[], Iterable[Any]]
    note: str


WORKLOADS = [
    Workload("trivial", trivial, lambda: list(range(200_000)), "x + 1 on 200k ints"),
    Workload("cheap", cheap, lambda: list(range(20_000)), "20 us of CPU x 20k"),
    Workload("heavy", heavy, lambda: list(range(400)), "2 ms of CPU x 400"),
    Workload("very_heavy", very_heavy, lambda: list(range(6)), "0.25 s of CPU x 6"),
    Workload("tailed", tailed, lambda: _tailed_costs(800), "lognormal item costs, 800 items"),
    Workload("big_input", big_input, lambda: [bytes(1 << 20)] * 300, "1 MB inputs, CRC32 each, x 300"),
    Workload("big_output", big_output, lambda: list(range(100)), "1 MB outputs x 100"),
    Workload("sleepy", sleepy, lambda: [0.005] * 200, "sleep 5 ms x 200 (I/O-like)"),
    Workload("regex", regex_logs, lambda: _log_batches(500), "regex over 500 x 200 log lines"),
    Workload("json", json_roundtrip, lambda: _json_docs(400), "json load + dump, 400 docs"),
    Workload("compress", compress, lambda: _blocks(150), "zlib of 150 x 63 KB"),
    Workload("generator", heavy, lambda: (x for x in range(400)), "2 ms x 400 from a generator"),
]
