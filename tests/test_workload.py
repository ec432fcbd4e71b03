"""Buckets, keys and function fingerprints."""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from autopar._version import CACHE_FORMAT
from autopar.workload import function_identity, plan_key, size_bucket, time_bucket


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_size_bucket_is_monotone_and_separates_factors_of_two(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert int(size_bucket(lo)[1:]) <= int(size_bucket(hi)[1:])
    if hi >= 2 * lo + 1 and lo > 0:
        assert size_bucket(lo) != size_bucket(hi)


def test_ten_thousand_never_shares_with_fifty_million() -> None:
    assert size_bucket(10_000) != size_bucket(50_000_000)
    assert size_bucket(None) == "nu"


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False), st.floats(min_value=0, max_value=1e7))
def test_time_bucket_is_monotone_and_bounded(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert 0 <= time_bucket(lo) <= time_bucket(hi) <= 40
    if lo > 2e-6 and hi >= 4 * lo and time_bucket(lo) < 40:
        assert time_bucket(hi) > time_bucket(lo)


def test_time_bucket_edge_values() -> None:
    assert time_bucket(float("nan")) == 0
    assert time_bucket(float("inf")) == 40
    assert time_bucket(-1.0) == 0


@given(
    st.text(min_size=1, max_size=30),
    st.sampled_from(["nu", "n0", "n14", "n26"]),
    st.integers(min_value=0, max_value=40),
    st.sampled_from(["fork", "spawn"]),
    st.integers(min_value=1, max_value=256),
    st.none() | st.integers(min_value=1, max_value=64),
)
def test_keys_are_plain_strings_with_the_format_version(
    name: str, size: str, tb: int, method: str, cpus: int, cap: int | None
) -> None:
    key = plan_key(name, "abcd", size=size, tbucket=tb, start_method=method, cpus=cpus, max_workers=cap)
    assert type(key) is str
    assert key.startswith(f"plan:v{CACHE_FORMAT}:{name}:")
    other = plan_key(name, "abcd", size=size, tbucket=tb + 1, start_method=method, cpus=cpus, max_workers=cap)
    assert other != key


def _times(k: int) -> object:
    def scale(x: int) -> int:
        return x * k

    return scale


def test_constants_defaults_and_closures_change_the_digest() -> None:
    def twice(x):  # type: ignore[no-untyped-def]
        return x * 2

    def thrice(x):  # type: ignore[no-untyped-def]
        return x * 3

    def with_default(x, k=2):  # type: ignore[no-untyped-def]
        return x * k

    def with_other_default(x, k=3):  # type: ignore[no-untyped-def]
        return x * k

    def nested_two(x):  # type: ignore[no-untyped-def]
        return (lambda y: y * 2)(x)

    def nested_three(x):  # type: ignore[no-untyped-def]
        return (lambda y: y * 3)(x)

    pairs = [
        (twice, thrice),
        (with_default, with_other_default),
        (nested_two, nested_three),
        (_times(2), _times(3)),
    ]
    for a, b in pairs:
        assert function_identity(a)[1] != function_identity(b)[1], (a, b)  # type: ignore[arg-type]
    assert function_identity(_times(2)) == function_identity(_times(2))  # type: ignore[arg-type]


def test_partial_arguments_change_the_digest_and_names_are_qualified() -> None:
    a = functools.partial(pow, 2)
    b = functools.partial(pow, 3)
    assert function_identity(a)[1] != function_identity(b)[1]
    name, _ = function_identity(test_time_bucket_edge_values)
    assert name == "tests.test_workload.test_time_bucket_edge_values"


def test_digest_is_stable_across_processes() -> None:
    import subprocess
    import sys

    code = (
        "from autopar.workload import function_identity\n"
        "from tests.workloads import heavy\n"
        "print(function_identity(heavy.__wrapped__)[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from tests.workloads import heavy

    assert out.stdout.strip() == function_identity(heavy.__wrapped__)[1]
