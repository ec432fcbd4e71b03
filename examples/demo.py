"""A real run of the main job: plan, run, remember.

Scores 2,000 synthetic documents (about half a millisecond of pure-Python work each) with
``@auto_parallel``, against the serial loop, twice: the first call measures and
stores a plan, the second finds it on disk. Then a tiny function on 200,000 items,
where ``multiprocessing.Pool`` is slower than a loop and autopar stays serial. Then
checksums of 1 MiB blocks: zlib releases the GIL, so autopar measures that threads
in this process pay (nothing pickled, nothing copied) and uses them.

Run with ``make demo`` (or ``python examples/demo.py``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import zlib

from autopar import auto_parallel, get_cache_dir

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
]


@auto_parallel
def score(doc: str) -> float:
    """A made-up relevance score: pure-Python work on every character."""
    total = 0
    words = doc.split()
    for word in words:
        for ch in word:
            total = (total * 31 + ord(ch)) % 1_000_003
    return total / max(1, len(words))


@auto_parallel
def shout(word: str) -> str:
    """Far too little work per item for processes to pay."""
    return word.upper()


@auto_parallel
def checksum(block: bytes) -> int:
    """zlib.crc32 of a large block: native work that releases the GIL."""
    return zlib.crc32(block)


def make_docs(n: int, words_per_doc: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=words_per_doc)) for _ in range(n)]


def timed(label: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    elapsed = time.perf_counter() - t0
    print(f"  {label:<34} {elapsed * 1e3:9.1f} ms")
    return out, elapsed


def main() -> None:
    print(f"autopar demo (plan cache: {get_cache_dir()})\n")
    docs = make_docs(2_000, 2_000)
    score.cache_clear()  # start from no stored plan, to show the miss and then the hit
    shout.cache_clear()

    print("1) score() on 2,000 documents")
    plain = score.__wrapped__  # the undecorated function: the honest baseline
    expected, serial_s = timed("serial loop  [score(d) for d in docs]", lambda: [plain(d) for d in docs])
    first, first_s = timed("score.map(docs)   first call", score.map, docs)
    print(f"     cache_info: {score.cache_info()}")
    second, second_s = timed("score.map(docs)   second call", score.map, docs)
    print(f"     cache_info: {score.cache_info()}")
    assert first == expected, "results differ from the serial loop"
    assert second == expected, "results differ from the serial loop"
    plan = score.plan(docs)
    print(f"     plan: {plan.executor}, n_jobs={plan.n_jobs}, chunksize={plan.chunksize}, from_cache={plan.from_cache}")
    print(f"     why:  {plan.reason}")
    print(f"     speedup vs serial: first call {serial_s / first_s:.2f}x, second call {serial_s / second_s:.2f}x\n")

    print("2) shout() on 200,000 words: too small to parallelise")
    words = [WORDS[i % len(WORDS)] for i in range(200_000)]
    upper = shout.__wrapped__
    expected_words, loop_s = timed("serial loop", lambda: [upper(w) for w in words])
    pool = multiprocessing.Pool()
    try:
        pooled, pool_s = timed("multiprocessing.Pool().map", pool.map, shout, words)
    finally:
        pool.close()
        pool.join()
    ours, ours_s = timed("shout.map(words)", shout.map, words)
    assert ours == expected_words == pooled
    print(f"     plan: {shout.plan(words).reason}")
    print(f"     Pool.map is {pool_s / loop_s:.1f}x the loop's time; autopar {ours_s / loop_s:.2f}x\n")

    print("3) checksum() of 300 blocks of 1 MiB: zlib releases the GIL")
    checksum.cache_clear()
    blocks = [os.urandom(1 << 20) for _ in range(300)]
    crc = checksum.__wrapped__
    expected_crcs, crc_loop_s = timed("serial loop", lambda: [crc(b) for b in blocks])
    crcs, crcs_first_s = timed("checksum.map(blocks)   first call", checksum.map, blocks)
    again, crcs_s = timed("checksum.map(blocks)   second call", checksum.map, blocks)
    assert crcs == again == expected_crcs, "results differ from the serial loop"
    crc_plan = checksum.plan(blocks)
    print(f"     plan: {crc_plan.executor}, n_jobs={crc_plan.n_jobs}, chunksize={crc_plan.chunksize}")
    print(f"     why:  {crc_plan.reason}")
    first_x, second_x = crc_loop_s / crcs_first_s, crc_loop_s / crcs_s
    print(f"     speedup vs serial: first call {first_x:.2f}x, second call {second_x:.2f}x")


if __name__ == "__main__":
    main()
