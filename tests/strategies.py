"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from autopar.model import Costs, Workload
from autopar.system import SystemInfo

item_seconds = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
byte_counts = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)

workloads = st.builds(
    Workload,
    n_items=st.none() | st.integers(min_value=0, max_value=10**9),
    item_s=item_seconds,
    cv=st.none() | st.floats(min_value=0.0, max_value=20.0),
    cpu_fraction=st.floats(min_value=0.0, max_value=4.0),
    in_bytes=byte_counts,
    out_bytes=byte_counts,
    pickle_s=st.floats(min_value=0.0, max_value=1.0),
)

costs = st.builds(
    Costs,
    worker_start_s=st.floats(min_value=1e-4, max_value=2.0),
    chunk_s=st.floats(min_value=1e-6, max_value=0.01),
    byte_s=st.floats(min_value=1e-12, max_value=1e-7),
    measured=st.booleans(),
)

cpus = st.integers(min_value=1, max_value=128)

systems = st.builds(
    SystemInfo,
    usable_cpus=cpus,
    start_method=st.sampled_from(["fork", "forkserver", "spawn"]),
    available_memory=st.integers(min_value=1, max_value=2**42),
    python=st.sampled_from(["3.10.14", "3.11.7", "3.14.0"]),
    autopar=st.sampled_from(["0.1.0", "0.2.0"]),
    cache_format=st.integers(min_value=0, max_value=3),
)

# Arbitrary JSON, for feeding the record readers what a hostile disk might hold.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
