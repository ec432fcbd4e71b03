"""Benchmark workloads: module-level functions (importable by spawn workers) and data."""

from __future__ import annotations

import random
import re
import time

from autopar import auto_parallel

LOG_LINE = re.compile(r"(?P<ip>\d+\.\d+\.\d+\.\d+) - - \[(?P<ts>[^\]]+)\] \"(?P<method>\w+) (?P<path>\S+)")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@auto_parallel
def heavy_uniform(x: int) -> int:
    """2 ms of CPU per item."""
    _spin(0.002)
    return x * x


@auto_parallel
def trivial(x: int) -> int:
    """A trivial operation: the case where Pool is several times slower than a loop."""
    return x + 1


@auto_parallel
def parse_logs(lines: list[str]) -> int:
    """Regex over a batch of 50 access-log lines: realistic text work."""
    hits = 0
    for line in lines:
        match = LOG_LINE.match(line)
        if match and match.group("method") == "GET":
            hits += len(match.group("path"))
    return hits


def log_batches(n_batches: int, seed: int = 1) -> list[list[str]]:
    rng = random.Random(seed)
    methods = ["GET", "POST", "PUT"]
    return [
        [
            f"10.0.{rng.randrange(256)}.{rng.randrange(256)} - - [24/Nov/2026:20:{i % 60:02d}:00 +0000] "
            f'"{rng.choice(methods)} /api/v1/items/{rng.randrange(10**6)}?q={"x" * rng.randrange(40)} HTTP/1.1"'
            for i in range(50)
        ]
        for _ in range(n_batches)
    ]
