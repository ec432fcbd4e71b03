"""Generator input: items produced lazily, results streamed with ``imap``.

Run: ``python examples/generator_input.py``. ``map`` accepts a generator too (it
reads it into a list first, as ``Pool.map`` does); ``imap`` streams, reading only a
few chunks ahead of the workers, so it also works for endless inputs.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

from autopar import auto_parallel


@auto_parallel
def digest(record: bytes) -> str:
    """An expensive fingerprint: 200 rounds of SHA-256."""
    for _ in range(200):
        record = hashlib.sha256(record).digest()
    return record.hex()[:12]


def records() -> Iterator[bytes]:
    """An endless stream of records, as from a socket or a log tail."""
    for i in itertools.count():
        yield f"record-{i}".encode() * 50


def main() -> None:
    first = list(itertools.islice(digest.imap(records()), 2000))  # stops the endless input cleanly
    print(f"streamed {len(first)} digests from an endless generator; first: {first[0]}")
    again = digest.map(itertools.islice(records(), 2000))  # a finite generator: nothing lost
    assert again == first
    plan = digest.plan(itertools.islice(records(), 2000))
    print(f"map over a generator gave the same {len(again)} results; plan: {plan.reason}")


if __name__ == "__main__":
    main()
