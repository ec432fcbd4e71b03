"""I/O-bound work: each item mostly waits (a stand-in for a network or disk call).

Run: ``python examples/io_bound.py``. autopar measures CPU time against wall time
while sampling; the report shows how little of each item is CPU.
"""

from __future__ import annotations

import time

from autopar import auto_parallel


@auto_parallel
def fetch(url: str) -> int:
    """Pretend to download ``url``: 20 ms of waiting, a little parsing."""
    time.sleep(0.02)
    return sum(map(ord, url))


def main() -> None:
    urls = [f"https://example.invalid/page/{i}" for i in range(100)]
    t0 = time.perf_counter()
    sizes = fetch.map(urls)
    elapsed = time.perf_counter() - t0
    assert sizes == [sum(map(ord, u)) for u in urls]
    report = fetch.explain(urls[:40])
    cpu = report.profile["sample"]["cpu_fraction"]
    print(f"{len(urls)} fetches in {elapsed:.2f} s (serial would take about {0.02 * len(urls):.1f} s)")
    print(f"measured CPU share of each item: {100 * cpu:.0f} %")
    print(f"plan: {fetch.plan(urls).reason}")


if __name__ == "__main__":
    main()
