"""CPU-bound work: estimate pi by Monte Carlo in independent batches.

Run: ``python examples/cpu_bound.py``. Prints the plan autopar chose, its reason,
and the time against the serial loop.
"""

from __future__ import annotations

import random
import time

from autopar import auto_parallel


@auto_parallel
def hits_in_circle(seed: int) -> int:
    """Throw 20,000 darts at the unit square; count those inside the quarter circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(20_000) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def main() -> None:
    seeds = range(300)
    t0 = time.perf_counter()
    serial = [hits_in_circle.__wrapped__(s) for s in seeds]
    serial_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    parallel = hits_in_circle.map(seeds)
    parallel_s = time.perf_counter() - t0
    assert parallel == serial
    plan = hits_in_circle.plan(seeds)
    print(f"pi ~= {4 * sum(parallel) / (20_000 * len(seeds)):.5f}")
    print(f"plan: {plan.reason}")
    print(f"serial {serial_s:.2f} s, autopar {parallel_s:.2f} s ({serial_s / parallel_s:.2f}x)")


if __name__ == "__main__":
    main()
