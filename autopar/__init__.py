"""autopar: a drop-in parallel map that measures before it parallelises.

::

    @auto_parallel ─► decorator (thin: options, counters, pickling by reference)
       .map(items) ─► workload key (function fingerprint + buckets) ─► plan store
                          │ miss                                    (diskcache, JSON only)
                          ▼                                               ▲
                      sampler (clocks, pickle sizes) ─► cost model ─► Plan
                                                                          │
                                          backend (serial | process | dask)

A call probes a few items (keeping their results), looks up a stored plan for
this function and workload bucket, and on a miss samples, decides with a pure
cost model and stores the decision. The work then runs serially or on a real
``multiprocessing.Pool``.
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
