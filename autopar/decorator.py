"""``@auto_parallel``: the decorator and the object it returns (orchestration only).

The wrapper pickles by reference, like ``functools.lru_cache``'s C wrapper, so a
decorated module-level function travels to workers under fork, forkserver and
spawn. Constructing it has no side effects: spawn re-imports the module in every
worker, and the store opens only when a plan is first needed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, overload

from .backends import ProcessBackend, SerialBackend
from .errors import NotIterableError, UnpicklableError
from .plan import Plan, serial_plan

if TYPE_CHECKING:
    from .explain import Explanation
from .planner import DEFAULT_TTL_S, LEARN_MIN_S, Cluster, Options, Planned, forget_hints, learn, make_plan, plan_prefix
from .progress import make_progress
from .serialization import Shipment, ShippedFunction
from .state import StateToken, state_token, watch
from .store import get_store
from .system import default_start_method, in_worker, usable_cpus
from .workload import function_identity

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


BACKENDS = ("process", "dask", "serial")


@dataclasses.dataclass(frozen=True)
class Target:
    """A call's backend: its name, and for a cluster the runner and what planning needs."""

    name: str
    runner: Any = None
    cluster: Cluster | None = None


def _check_backend(backend: object) -> None:
    if backend not in BACKENDS:
        msg = f"backend must be one of {BACKENDS}, got {backend!r}"
        raise ValueError(msg)


def _check_positive(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a positive int or None, got {value!r}"
        raise ValueError(msg)


def as_sequence(iterable: Iterable[Any]) -> Sequence[Any]:
    """Lists, tuples and ranges as they are; any other iterable read into a list."""
    if isinstance(iterable, (list, tuple, range)):
        return iterable
    try:
        iterator = iter(iterable)
    except TypeError:
        msg = f"autopar needs an iterable of items, got {type(iterable).__name__}"
        raise NotIterableError(msg) from None
    return list(iterator)


def _iterate(iterable: Iterable[Any]) -> Iterator[Any]:
    try:
        return iter(iterable)
    except TypeError:
        msg = f"autopar needs an iterable of items, got {type(iterable).__name__}"
        raise NotIterableError(msg) from None


def _by_value(func: Callable[..., Any], start_method: str) -> bool:
    """True for a function from ``__main__`` that workers cannot see as the caller does.

    From a REPL, a notebook or ``python -c`` there is no ``__main__`` file for
    spawn/forkserver workers to import (and a fork pool started before the function
    existed lacks it). From a script, spawn/forkserver workers re-run its top level
    but not its ``if __name__ == "__main__":`` block, so globals set there would
    differ. By value, the function travels with the globals it reads. Fork workers
    share the caller's memory as of their start, which :meth:`PoolRun.serves` checks.
    """
    if getattr(func, "__module__", None) != "__main__":
        return False
    if getattr(sys.modules.get("__main__"), "__file__", None) is None:
        return True
    return start_method != "fork"


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
        _check_backend(backend)
        if not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            msg = f"ttl must be a positive number of seconds, got {ttl!r}"
            raise ValueError(msg)
        functools.update_wrapper(self, func)
        # What workers call: the raw function, found on the wrapper they unpickle
        # (saves a Python-level call per item; see backends/_worker.run_chunk).
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
        self._ship: Shipment | None = None
        self._ship_error: tuple[StateToken, str, str] | None = None
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

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _name_digest(self) -> tuple[str, str]:
        if self._identity is None:
            self._identity = function_identity(self.__wrapped__)
        return self._identity

    def _count(self, hit: bool | None) -> None:
        if hit is None:
            return
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def _plan(
        self, source: Iterator[Any], n_items: int | None, *, use_cache: bool = True, cluster: Cluster | None = None
    ) -> Planned:
        name, digest = self._name_digest
        options = self._options
        if not use_cache:
            options = Options(options.max_workers, options.start_method, False, options.ttl)
        planned = make_plan(
            self.__wrapped__,
            name,
            digest,
            source,
            n_items,
            options,
            get_store(),
            ship_problem=self._ship_problem,
            cluster=cluster,
        )
        self._count(planned.hit)
        return planned

    def _target(self, backend: str | None) -> Target:
        """Where this call's parallel work runs: ``backend``, else the decorator's."""
        name = self._backend if backend is None else backend
        _check_backend(name)
        if name != "dask" or in_worker():  # nested in a worker, a map runs serially anyway
            return Target(name)
        from .backends.dask import DaskBackend  # imports distributed: only when asked for

        dask = DaskBackend()
        info = dask.cluster()
        cluster = Cluster(info.fingerprint, info.threads, info.memory_per_worker * info.workers, dask.measure_costs)
        return Target(name, dask, cluster)

    def _start_method(self) -> str:
        return self._options.start_method or default_start_method()

    def _resolve(
        self, plan: Plan, n_jobs: int | None, chunksize: int | None, remaining: int | None
    ) -> tuple[str, int, int]:
        """Executor, workers and chunk size after explicit arguments override the plan."""
        chunksize = chunksize if chunksize is not None else self._chunksize
        cap = self._options.max_workers
        if n_jobs is not None:
            n = n_jobs if cap is None else min(n_jobs, cap)
            if remaining is not None:
                n = min(n, max(1, remaining))
            if n <= 1:
                return "serial", 1, 1
            if chunksize is None:
                if plan.executor == "process":
                    chunksize = plan.chunksize
                elif remaining is not None:
                    chunksize = max(1, math.ceil(remaining / (4 * n)))  # Pool.map's default
                else:
                    chunksize = 1
            return "process", n, chunksize
        if plan.executor == "serial":
            return "serial", 1, 1
        return "process", plan.n_jobs, chunksize if chunksize is not None else plan.chunksize

    def _autopar_state(self) -> tuple[str, StateToken, list[Any]]:
        """This function's key and the token of what it reads now (see :mod:`autopar.state`)."""
        name, digest = self._name_digest
        token, keep = state_token(self.__wrapped__)
        return f"{name}:{digest}", token, keep

    def _shipment(self, start_method: str | None = None) -> Shipment:
        """What to send workers for the caller's state *now*; raises if it cannot be sent.

        By reference (this wrapper, by its qualified name) when workers can import
        it and see the same state; by value (cloudpickle, globals included) for a
        function from ``__main__`` under spawn/forkserver or an interactive session,
        and for lambdas and closures. Pickled again whenever the token of what the
        function reads changes, so a warm worker never runs a stale copy.
        """
        method = start_method or self._start_method()
        key, token, keep = self._autopar_state()
        shipped = self._ship
        if shipped is not None and shipped.token == token and shipped.key == f"{key}:{method}":
            return shipped
        error = self._ship_error
        if error is not None and error[0] == token and error[1] == method:
            raise UnpicklableError(error[2])
        try:
            shipped = self._pickle(method, f"{key}:{method}", token, keep)
        except UnpicklableError as exc:
            self._ship_error = (token, method, str(exc))
            raise
        self._ship, self._ship_error = shipped, None
        return shipped

    def _pickle(self, method: str, key: str, token: StateToken, keep: list[Any]) -> Shipment:
        func = self.__wrapped__
        if not _by_value(func, method):
            try:
                return Shipment.of(self, key=key, token=token, keep=keep)
            except Exception:  # noqa: BLE001 - not importable by name: try by value
                pass
        try:
            return Shipment.of(ShippedFunction(func), key=key, token=token, keep=keep)
        except Exception as exc:
            name = self._name_digest[0]
            msg = (
                f"{name} cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
                "pass n_jobs=1 to run it here"
            )
            raise UnpicklableError(msg) from exc

    def _shipping(self) -> tuple[Callable[[Any], Any] | None, str | None]:
        """What to send workers now, or why nothing can be sent (for reports)."""
        try:
            return self._shipment().func, None
        except UnpicklableError as exc:
            return None, str(exc)

    def _ship_problem(self) -> str | None:
        return self._shipping()[1]

    def _map_with_timeout(
        self,
        items: Sequence[Any],
        n_jobs: int | None,
        chunksize: int | None,
        timeout: float,
        tick: Callable[[int], None] | None,
        target: Target,
    ) -> list[R]:
        """Every item in workers, none here: an item stuck in this process could not be
        interrupted, so the probe is skipped and Pool's default chunking is used."""
        cap = self._options.max_workers
        cpus = target.cluster.threads if target.cluster is not None else usable_cpus()
        n = min(n_jobs or cpus, cap or len(items), len(items))
        n = max(1, n)
        size = chunksize or self._chunksize or max(1, math.ceil(len(items) / (4 * n)))
        backend = target.runner if target.runner is not None else ProcessBackend(self._start_method(), reuse=True)
        send = self._shipment() if target.runner is None else self._shipment().func
        return backend.map(send, items, start=0, n_jobs=n, chunksize=size, timeout=timeout, progress=tick)

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
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            msg = f"timeout must be a positive number of seconds or None, got {timeout!r}"
            raise ValueError(msg)
        items = as_sequence(iterable)
        target = self._target(backend)
        bar = make_progress(len(items), self.__name__) if progress else None
        tick = bar.update if bar is not None else None
        try:
            return self._map(items, n_jobs, chunksize, timeout, tick, target)
        finally:
            if bar is not None:
                bar.close()

    def _map(
        self,
        items: Sequence[Any],
        n_jobs: int | None,
        chunksize: int | None,
        timeout: float | None,
        tick: Callable[[int], None] | None,
        target: Target,
    ) -> list[R]:
        here = in_worker() or target.name == "serial"
        if len(items) == 0 or here or (n_jobs == 1 and timeout is None):
            # In this process an item cannot be interrupted: a timeout is checked
            # between items (a worker process would stop a stuck item; n_jobs=1 with
            # a timeout gets one, below).
            return SerialBackend().map(self.__wrapped__, items, progress=tick, timeout=timeout)
        if timeout is not None:
            return self._map_with_timeout(items, n_jobs, chunksize, float(timeout), tick, target)
        fixed_chunks = chunksize if chunksize is not None else self._chunksize
        planned: Planned | None = None
        if n_jobs is not None and fixed_chunks is not None:
            executor, n, size = self._resolve(_FIXED, n_jobs, fixed_chunks, len(items))
            done: list[Any] = []
        else:
            planned = self._plan(iter(items), len(items), cluster=target.cluster)
            done = planned.sampler.results
            executor, n, size = self._resolve(planned.plan, n_jobs, chunksize, len(items) - len(done))
            if tick is not None:
                tick(len(done))
        start = len(done)
        busy: dict[int, float] = {}
        began = time.perf_counter()
        if executor == "serial":
            results = SerialBackend().map(self.__wrapped__, items, start=start, progress=tick)
        elif target.runner is not None:
            results = target.runner.map(
                self._shipment().func, items, start=start, n_jobs=n, chunksize=size, progress=tick
            )
        else:
            backend = ProcessBackend(self._start_method(), reuse=True)
            results = backend.map(
                self._shipment(), items, start=start, n_jobs=n, chunksize=size, progress=tick, busy=busy
            )
        if planned is not None:
            self._learn(planned, executor, len(results), time.perf_counter() - began, busy)
        results[:0] = done  # a memmove; ``done + results`` would copy every result again
        return results

    def _learn(self, planned: Planned, executor: str, n_run: int, wall_s: float, busy: dict[int, float]) -> None:
        """Let the planner correct the stored plan from this run, when it ran as planned."""
        if executor != planned.plan.executor or executor not in ("serial", "process"):
            return  # explicit arguments overrode the plan, or a cluster ran it (no busy times yet)
        if executor == "process" and not busy:
            return  # explicit arguments overrode the plan: this run says nothing about it
        if wall_s < LEARN_MIN_S or n_run <= 0:
            return
        item_s = wall_s / n_run if executor == "serial" else sum(busy.values()) / n_run
        store = get_store()
        name = self._name_digest[0]
        if learn(planned, name, store, n_run=n_run, wall_s=wall_s, item_s=item_s, ship_problem=self._ship_problem):
            with self._lock:
                self._learned += 1

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
        target = self._target(backend)
        source = _iterate(iterable)
        hint = len(iterable) if isinstance(iterable, Sequence) else operator.length_hint(iterable, 0)
        n_items = hint if hint or isinstance(iterable, Sequence) else None
        if not progress:
            return self._imap(source, n_items, ordered, n_jobs, chunksize, None, target)
        return self._imap_with_bar(source, n_items, ordered, n_jobs, chunksize, target)

    def _imap_with_bar(
        self,
        source: Iterator[Any],
        n_items: int | None,
        ordered: bool,
        n_jobs: int | None,
        chunksize: int | None,
        target: Target,
    ) -> Iterator[R]:
        bar = make_progress(n_items, self.__name__)
        try:
            yield from self._imap(source, n_items, ordered, n_jobs, chunksize, bar.update, target)
        finally:
            bar.close()

    def _imap(
        self,
        source: Iterator[Any],
        n_items: int | None,
        ordered: bool,
        n_jobs: int | None,
        chunksize: int | None,
        tick: Callable[[int], None] | None,
        target: Target,
    ) -> Iterator[R]:
        if in_worker() or n_jobs == 1 or target.name == "serial":
            yield from SerialBackend().imap(self.__wrapped__, source, progress=tick)
            return
        fixed_chunks = chunksize if chunksize is not None else self._chunksize
        offset = 0
        if n_jobs is not None and fixed_chunks is not None:  # nothing to plan, as in map()
            executor, n, size = self._resolve(_FIXED, n_jobs, fixed_chunks, n_items)
        else:
            planned = self._plan(source, n_items, cluster=target.cluster)
            if tick is not None:
                tick(len(planned.sampler.results))
            yield from planned.sampler.results
            offset = len(planned.sampler.items)
            remaining = None if n_items is None else n_items - offset
            executor, n, size = self._resolve(planned.plan, n_jobs, chunksize, remaining)
        if executor == "serial":
            yield from SerialBackend().imap(self.__wrapped__, source, offset=offset, progress=tick)
            return
        if target.runner is not None:
            yield from target.runner.imap(
                self._shipment().func, source, offset=offset, n_jobs=n, chunksize=size, ordered=ordered, progress=tick
            )
            return
        backend = ProcessBackend(self._start_method(), reuse=True)
        yield from backend.imap(
            self._shipment(), source, offset=offset, n_jobs=n, chunksize=size, ordered=ordered, progress=tick
        )

    def plan(self, iterable: Iterable[Any], *, backend: str | None = None) -> Plan:
        """What ``map(iterable)`` would do, without running the whole map.

        A few items are evaluated to measure them (their results are discarded
        here); ``Plan.data`` holds every input item.
        """
        items = as_sequence(iterable)
        target = self._target(backend)
        if in_worker():
            return serial_plan(_IN_WORKER, data=items)
        if target.name == "serial":
            return serial_plan("serial: backend='serial'", data=items)
        planned = self._plan(iter(items), len(items), cluster=target.cluster)
        return dataclasses.replace(planned.plan, data=items)

    def explain(self, iterable: Iterable[Any], *, run: bool = False) -> Explanation:
        """A readable report of what ``map`` would decide and why (measured afresh).

        With ``run=True`` the whole workload also runs once per worker count, and the
        report adds measured wall time, busy time per worker and predicted vs actual.
        """
        from .explain import explain

        return explain(self, iterable, run=run)

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


_FIXED = serial_plan("explicit n_jobs and chunksize")
_IN_WORKER = "serial: inside an autopar worker (no nested pools)"


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
