"""Functions the user's own process pools run, each calling an autopar ``.map`` inside."""

from __future__ import annotations

from tests.faults import stateful


def inner_map(n: int) -> list[int]:
    """Runs in a worker of the user's Pool / ProcessPoolExecutor: must not start a pool."""
    return stateful.scaled.map(range(n), n_jobs=2, chunksize=5)
