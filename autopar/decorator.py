"""``@auto_parallel``: the decorator and the object it returns.

Like ``functools.lru_cache``'s wrapper, it holds the proxy, its options and its
statistics; running a call belongs to :mod:`autopar.run`. The wrapper pickles by
reference, so a decorated module-level function travels to workers under fork,
forkserver and spawn. Constructing it has no side effects beyond remembering the
function (weakly) for new pools: spawn re-imports the module in every worker, and
the store opens only when a plan is first needed.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, overload

from .backends import check_backend
from .plan import Plan
from .planner import DEFAULT_TTL_S, Options, forget_hints, plan_prefix
from .progress import make_progress
from .run import Call, Target, as_sequence, iterate, length_hint
from .serialization import Shipment
from .shipping import Shipper
from .state import StateToken, watch
from .store import get_store
from .system import default_start_method
from .workload import function_identity

if TYPE_CHECKING:
    from .explain import Explanation

__all__ = ["AutoParallel", "CacheInfo", "auto_parallel"]

P = ParamSpec("P")
R = TypeVar("R")

_VALID_START_METHODS = ("fork", "forkserver", "spawn")


class CacheInfo(NamedTuple):
    """Plan-cache statistics, with the meaning of ``functools.lru_cache``'s.

    ``hits`` and ``misses`` count this function's plan lookups in this process,
    ``maxsize`` is None (the store is bounded by its TTL, not a count), and
    ``currsize`` is the number of this function's plans stored on disk, and
    ``learned`` how many times this process corrected a stored plan after a run
    disagreed with it (see :func:`autopar.planner.learn`).
    """

    hits: int
    misses: int
    maxsize: int | None
    currsize: int
    learned: int = 0


def _check_positive(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a positive int or None, got {value!r}"
        raise ValueError(msg)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        msg = f"timeout must be a positive number of seconds or None, got {timeout!r}"
        raise ValueError(msg)


class AutoParallel(Generic[P, R]):
    """A function that still calls as itself, plus ``map``/``imap``/``plan``/``cache_info``."""

    __wrapped__: Callable[P, R]
    __qualname__: str
    __name__: str

    def __init__(
        self,
        func: Callable[P, R],
        *,
        max_workers: int | None = None,
        chunksize: int | None = None,
        start_method: str | None = None,
        use_cache: bool = True,
        ttl: float = DEFAULT_TTL_S,
        backend: str = "process",
    ) -> None:
        if not callable(func):
            msg = f"auto_parallel needs a callable, got {type(func).__name__}"
            raise TypeError(msg)
        _check_positive("max_workers", max_workers)
        _check_positive("chunksize", chunksize)
        if start_method is not None and start_method not in _VALID_START_METHODS:
            msg = f"start_method must be one of {_VALID_START_METHODS} or None, got {start_method!r}"
            raise ValueError(msg)
        check_backend(backend)
        if not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            msg = f"ttl must be a positive number of seconds, got {ttl!r}"
            raise ValueError(msg)
        functools.update_wrapper(self, func)
        # What workers call: the raw function, found on the wrapper they unpickle
        # (saves a Python-level call per item; see backends/_worker.load_function).
        self._autopar_raw = func
        self._options = Options(
            max_workers=max_workers, start_method=start_method, use_cache=bool(use_cache), ttl=float(ttl)
        )
        self._chunksize = chunksize
        self._backend = backend
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._learned = 0
        self._identity: tuple[str, str] | None = None
        self._shipper = Shipper(self, func, self._key)
        self._calls: dict[tuple[str, str], Call] = {}
        watch(self)

    # -- behaving like the function ------------------------------------------------------

    if TYPE_CHECKING:

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    else:
        # Calling the wrapper calls the original function with no Python frame in
        # between: ``obj(x)`` looks ``__call__`` up on the type, and this property
        # (a C attrgetter) hands back the raw function. A plain ``def __call__``
        # would add ~0.15 us to every call of the decorated function.
        __call__ = property(operator.attrgetter("__wrapped__"))

    def __reduce__(self) -> str:
        # Pickle by reference: workers look the wrapper up by its qualified name.
        return str(self.__qualname__)

    def __repr__(self) -> str:
        return f"<auto_parallel {getattr(self, '__module__', '?')}.{getattr(self, '__qualname__', '?')}>"

    # -- identity, state and counters ------------------------------------------------------

    @property
    def _name_digest(self) -> tuple[str, str]:
        if self._identity is None:
            self._identity = function_identity(self.__wrapped__)
        return self._identity

    def _key(self) -> str:
        return "{}:{}".format(*self._name_digest)

    def _autopar_state(self) -> tuple[str, StateToken, list[Any]]:
        """This function's key and the token of what it reads now (see :mod:`autopar.state`)."""
        return self._shipper.state()

    def _count(self, hit: bool | None) -> None:
        if hit is None:
            return
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def _count_learned(self) -> None:
        with self._lock:
            self._learned += 1

    def _start_method(self) -> str:
        return self._options.start_method or default_start_method()

    def _shipment(self) -> Shipment:
        """What to send workers for the caller's state now (:class:`~autopar.shipping.Shipper`)."""
        return self._shipper.shipment(self._start_method())

    def _ship_problem(self) -> str | None:
        return self._shipper.problem(self._start_method())

    def call(self, backend: str | None = None) -> Call:
        """The values one call of this function runs with (``backend``, or the
        decorator's): what :mod:`autopar.run`, ``optimize`` and ``explain`` use.

        Local backends' values never change for a given start method, so they are
        made once (a cache hit stays microseconds); a cluster's are asked each time.
        """
        method = self._start_method()
        name = self._backend if backend is None else backend
        cached = self._calls.get((name, method))
        if cached is not None:
            return cached
        digest_name, digest = self._name_digest
        made = Call(
            func=self.__wrapped__,
            name=digest_name,
            digest=digest,
            options=self._options,
            chunksize=self._chunksize,
            start_method=method,
            target=Target.named(name, method),
            shipment=self._shipment,
            ship_problem=self._ship_problem,
            count=self._count,
            learned=self._count_learned,
        )
        if name != "dask":
            self._calls[(name, method)] = made
        return made

    # -- the public methods -------------------------------------------------------------------

    def map(
        self,
        iterable: Iterable[Any],
        *,
        n_jobs: int | None = None,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
        backend: str | None = None,
    ) -> list[R]:
        """``list(map(f, iterable))``, in parallel when the plan says it pays.

        Explicit ``n_jobs``/``chunksize`` override the plan; with both given (or
        ``n_jobs=1``) no planning happens at all. Each item is evaluated exactly
        once: items timed while planning keep their results.

        With ``timeout`` (seconds for the whole call), every item runs in worker
        processes (one with ``n_jobs=1``), which are stopped when time runs out:
        :class:`~autopar.TaskTimeoutError` (a ``TimeoutError``) is raised. With
        ``backend="serial"`` or inside a worker, items run here and the timeout is
        checked between items (a running item cannot be interrupted here).
        ``progress=True`` draws a bar on stderr counting finished items.
        ``backend`` (``"process"``, ``"dask"``, ``"serial"``) overrides the
        decorator's; ``"dask"`` runs chunks on the active ``distributed.Client``.
        """
        _check_positive("n_jobs", n_jobs)
        _check_positive("chunksize", chunksize)
        _check_timeout(timeout)
        items = as_sequence(iterable)
        call = self.call(backend)
        bar = make_progress(len(items), self.__name__) if progress else None
        try:
            return call.map(items, n_jobs, chunksize, timeout, bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def imap(
        self,
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        n_jobs: int | None = None,
        chunksize: int | None = None,
        progress: bool = False,
        backend: str | None = None,
    ) -> Iterator[R]:
        """Stream results for large or endless inputs, planned the same way as ``map``.

        The input is read only a few chunks ahead of the workers. With
        ``ordered=False`` results come as soon as they are ready.
        """
        _check_positive("n_jobs", n_jobs)
        _check_positive("chunksize", chunksize)
        call = self.call(backend)
        source = iterate(iterable)
        n_items = length_hint(iterable)
        if not progress:
            return call.imap(source, n_items, ordered, n_jobs, chunksize, None)
        return self._imap_with_bar(call, source, n_items, ordered, n_jobs, chunksize)

    def _imap_with_bar(
        self,
        call: Call,
        source: Iterator[Any],
        n_items: int | None,
        ordered: bool,
        n_jobs: int | None,
        size: int | None,
    ) -> Iterator[R]:
        bar = make_progress(n_items, self.__name__)
        try:
            yield from call.imap(source, n_items, ordered, n_jobs, size, bar.update)
        finally:
            bar.close()

    def plan(self, iterable: Iterable[Any], *, backend: str | None = None) -> Plan:
        """What ``map(iterable)`` would do, without running the whole map.

        A few items are evaluated to measure them (their results are discarded
        here); ``Plan.data`` holds every input item.
        """
        items = as_sequence(iterable)
        return self.call(backend).plan_only(items)

    def explain(self, iterable: Iterable[Any], *, run: bool = False) -> Explanation:
        """A readable report of what ``map`` would decide and why (measured afresh).

        With ``run=True`` the whole workload also runs once per worker count, and the
        report adds measured wall time, busy time per worker and predicted vs actual.
        """
        from .explain import explain

        return explain(self, iterable, run=run)

    def cache_parameters(self) -> dict[str, Any]:
        """The decorator's options, as ``functools.lru_cache``'s ``cache_parameters()``."""
        options = self._options
        return {
            "max_workers": options.max_workers,
            "chunksize": self._chunksize,
            "start_method": options.start_method,
            "use_cache": options.use_cache,
            "ttl": options.ttl,
            "backend": self._backend,
        }

    def cache_info(self) -> CacheInfo:
        """Hits and misses of this function's plan lookups here, and plans on disk."""
        name = self._name_digest[0]
        currsize = get_store().count(name, plan_prefix(name))  # the tag index: no scan of the store
        with self._lock:
            return CacheInfo(self._hits, self._misses, None, currsize, self._learned)

    def cache_clear(self) -> None:
        """Remove this function's stored plans and hints, and reset its counters."""
        get_store().forget(self._name_digest[0])
        forget_hints()
        with self._lock:
            self._hits = 0
            self._misses = 0
            self._learned = 0


@overload
def auto_parallel(func: Callable[P, R], /) -> AutoParallel[P, R]: ...


@overload
def auto_parallel(
    *,
    max_workers: int | None = None,
    chunksize: int | None = None,
    start_method: str | None = None,
    use_cache: bool = True,
    ttl: float = DEFAULT_TTL_S,
    backend: str = "process",
) -> Callable[[Callable[P, R]], AutoParallel[P, R]]: ...


def auto_parallel(
    func: Callable[P, R] | None = None,
    /,
    *,
    max_workers: int | None = None,
    chunksize: int | None = None,
    start_method: str | None = None,
    use_cache: bool = True,
    ttl: float = DEFAULT_TTL_S,
    backend: str = "process",
) -> AutoParallel[P, R] | Callable[[Callable[P, R]], AutoParallel[P, R]]:
    """Give a one-argument function a planned parallel ``.map``.

    Use bare (``@auto_parallel``) or with keyword options
    (``@auto_parallel(max_workers=4)``). The function must be defined at module
    level for its items to run in worker processes. ``backend`` is where parallel
    work runs by default: ``"process"`` (a local pool), ``"dask"`` (the active
    ``distributed.Client``) or ``"serial"``; ``.map(backend=...)`` overrides it.

    >>> from autopar import auto_parallel
    >>> @auto_parallel
    ... def double(x):
    ...     return 2 * x
    >>> double(21)
    42
    """

    def decorate(f: Callable[P, R]) -> AutoParallel[P, R]:
        return AutoParallel(
            f,
            max_workers=max_workers,
            chunksize=chunksize,
            start_method=start_method,
            use_cache=use_cache,
            ttl=ttl,
            backend=backend,
        )

    if func is not None:
        return decorate(func)
    return decorate
