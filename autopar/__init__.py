"""autopar: a drop-in parallel map that measures before it parallelises.

One call walks straight through the package, each step in its own module::

    decorator   AutoParallel: proxy, options, counters, cache_info/parameters/clear
       │ .map / .imap / .plan
    run         Call: (plan, overrides, backend) -> results + RunRecord
       │ plan                                        │ runs that ran as planned
    planner     probe -> look up -> sample -> decide -> save    learning
       │  sampling (clocks, CPU waits, pickle sizes)   model (pure cost model)
       │  workload (fingerprint, buckets, keys)        plan (Plan, stored records)
       │  costs (measured costs kept)   hints   store (+ store_sqlite, store_admin)
       ▼ execution
    backends    registry of Backend: serial | process | dask
                  chunks (one pipeline: cut, pickle, evaluate, translate, collect)
                  process -> pool (a watched Pool) + warm (kept between calls)
                  _worker (in the workers), failures, calibration (measures itself)
    shipping    how the function reaches workers; state: what it reads, as a token

A call probes a few items (keeping their results), looks up a stored plan for this
function and workload bucket, and on a miss samples, decides with a pure cost model
and stores the decision. The work then runs serially or on a backend. Everything
outside ``__all__`` is internal and may change without notice.
"""

from ._version import __version__
from .api import clear_cache, optimize, prune_expired_cache
from .backends.process import shutdown
from .decorator import AutoParallel, CacheInfo, auto_parallel
from .errors import (
    AutoparError,
    AutoparWarning,
    CacheWarning,
    DaskUnavailableError,
    NoClientError,
    NotIterableError,
    RemoteTraceback,
    TaskTimeoutError,
    UnpicklableError,
    WorkerCrashedError,
)
from .explain import Explanation, explain
from .on_error import RemoteError
from .plan import Plan
from .store import get_cache_dir

__all__ = [
    "AutoParallel",
    "AutoparError",
    "AutoparWarning",
    "CacheInfo",
    "CacheWarning",
    "DaskUnavailableError",
    "Explanation",
    "NoClientError",
    "NotIterableError",
    "Plan",
    "RemoteError",
    "RemoteTraceback",
    "TaskTimeoutError",
    "UnpicklableError",
    "WorkerCrashedError",
    "__version__",
    "auto_parallel",
    "clear_cache",
    "explain",
    "get_cache_dir",
    "optimize",
    "prune_expired_cache",
    "shutdown",
]
