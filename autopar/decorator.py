"""``@auto_parallel``: the decorator and the object it returns.

Like ``functools.lru_cache``'s wrapper, it holds the proxy, its options and its
statistics; running a call belongs to :mod:`autopar.run`. The wrapper pickles by
reference, so a decorated module-level function travels to workers under fork,
forkserver and spawn. Constructing it has no side effects beyond remembering the
function (weakly) for new pools: spawn re-imports the module in every worker, and
the store opens only when a plan is first needed.

``starmap`` and ``map(xs, ys)`` run the same path over argument tuples, and a
decorated method binds as a function does (``obj.method.map``); what reaches the
function, and whether it can take it, is :mod:`autopar.arguments`'s. With
``on_error="return"`` a guarded form runs instead, and exceptions take their items'
places in the results (:mod:`autopar.on_error`).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import reprlib
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, overload

from .arguments import (
    Star,
    Starred,
    check_arguments,
    check_decoratable,
    check_star_item,
    make_shipper,
    names_of,
    star_digest,
    worker_count,
    zip_items,
    zip_length,
)
from .backends import check_backend
from .on_error import Guard, IndexedGuard, check_on_error, guard_digest, restore, restored
from .plan import Plan
from .planner import DEFAULT_TTL_S, Options, forget_hints, plan_prefix
from .progress import make_progress
from .run import Call, Target, as_sequence, iterate, length_hint
from .shipping import Shipper
from .state import StateToken, watch
from .store import get_store
from .system import default_start_method
from .worker_setup import WithSetup, setup_digest, setup_name
from .workload import function_identity

if TYPE_CHECKING:
    from .explain import Explanation

__all__ = ["AutoParallel", "CacheInfo", "auto_parallel"]

P = ParamSpec("P")
R = TypeVar("R")

_VALID_START_METHODS = ("fork", "forkserver", "spawn")

_repr = reprlib.Repr()
_repr.maxother = 80


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
    """A function that still calls as itself, plus ``map``/``starmap``/``imap``/``plan``/``cache_info``.

    Decorating a method works as a method: ``obj.method`` is a bound ``AutoParallel``
    whose ``map`` passes ``obj`` along (pickled with the function), keyed by the
    method's qualified name; its counters are the method's.
    """

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
        backend: str = "auto",
        on_error: str = "raise",
        setup: Callable[[], Any] | None = None,
    ) -> None:
        check_decoratable(func)
        check_on_error(on_error)
        if setup is not None and not callable(setup):
            msg = f"setup must be a callable taking no arguments, got {type(setup).__name__}"
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
        # A function's own attributes are copied, as functools.wraps does; a callable
        # instance's are not (they could shadow map or plan). Names come from the
        # function, the one a partial wraps, or a callable instance's class.
        updated = functools.WRAPPER_UPDATES if isinstance(func, types.FunctionType) else ()
        functools.update_wrapper(self, func, updated=updated)
        vars(self).update(names_of(func))
        # What workers call: the raw function, found on the wrapper they unpickle
        # (saves a Python-level call per item; see backends/_worker.load_function).
        self._autopar_raw = func
        self._options = Options(
            max_workers=max_workers, start_method=start_method, use_cache=bool(use_cache), ttl=float(ttl)
        )
        self._chunksize = chunksize
        self._backend = backend
        self._on_error = on_error
        #: Runs once per worker; its result is the function's first argument in maps.
        self._setup = setup
        #: The decorated function itself; for a bound method, the class's AutoParallel,
        #: which keeps the counters and the signature checks already passed.
        self._owner: AutoParallel[..., R] = self
        self._attr_name = self.__name__
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._learned = 0
        self._fits: set[tuple[bool, int]] = set()
        self._bound_template: dict[str, Any] | None = None  # what every bound copy shares
        # Made when first needed: a bound method called directly needs none of them.
        self._identity: tuple[str, str] | None = None
        self._ship: Shipper | None = None
        self._calls: dict[tuple[str, str, bool, bool, bool], Call] = {}
        self._forms: dict[tuple[bool, bool, bool], Starred] = {}  # (star, guard, indexed): see _form
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

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._attr_name = name  # how a bound copy is found again on its instance
        self._bound_template = None

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> AutoParallel[P, R]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> AutoParallel[..., R]: ...

    def __get__(self, instance: object, owner: type[Any] | None = None) -> AutoParallel[..., R]:
        """On a class, this wrapper; on an instance, a bound one (as a function gives a method).

        The wrapped callable decides, as it would undecorated: a builtin or a callable
        instance stored on a class does not bind, and this wrapper is returned as is.
        """
        bind = getattr(type(self.__wrapped__), "__get__", None)
        if instance is None or bind is None:
            return self
        template = self._bound_template
        if template is None:
            template = self._bound_template = {
                "__module__": self.__module__,
                "__name__": self.__name__,
                "__qualname__": self.__qualname__,
                "__doc__": self.__doc__,
                "_options": self._options,
                "_chunksize": self._chunksize,
                "_backend": self._backend,
                "_on_error": self._on_error,
                "_setup": self._setup,
                "_owner": self._owner,
                "_attr_name": self._attr_name,
                "_bound_template": None,
                "_identity": None,
                "_ship": None,
            }
        bound: AutoParallel[..., R] = object.__new__(type(self))
        attrs = vars(bound)
        attrs.update(template)  # one C call: a method called directly pays ~1 us for its binding
        attrs["__wrapped__"] = attrs["_autopar_raw"] = bind(self.__wrapped__, instance, owner)
        attrs["_instance"] = instance
        attrs["_calls"] = {}
        attrs["_forms"] = {}
        return bound

    def __reduce__(self) -> str | tuple[Any, ...]:
        if self._owner is not self:  # bound: found again on its instance, which travels with it
            return (getattr, (vars(self)["_instance"], self._attr_name))
        # Pickle by reference: workers look the wrapper up by its qualified name.
        return str(self.__qualname__)

    def __repr__(self) -> str:
        name = f"{getattr(self, '__module__', '?')}.{getattr(self, '__qualname__', '?')}"
        if "_instance" in vars(self):
            return f"<bound auto_parallel {name} of {_repr.repr(vars(self)['_instance'])}>"
        return f"<auto_parallel {name}>"

    # -- identity, state and counters ------------------------------------------------------

    @property
    def _name_digest(self) -> tuple[str, str]:
        if self._identity is None:
            self._identity = function_identity(self.__wrapped__)
        return self._identity

    def _key(self) -> str:
        return "{}:{}".format(*self._name_digest)

    def _form_digest(self, star: bool, guard: bool, indexed: bool) -> str:
        """The plan digest of a form: starred (``starmap``), guarded (``on_error="return"``), or both
        (and with the per-worker setup, when there is one)."""
        digest = self._name_digest[1]
        if self._setup is not None:
            digest = setup_digest(digest, self._setup)
        if star:
            digest = star_digest(digest)
        if guard:
            digest = guard_digest(digest, indexed=indexed)
        return digest

    def _form_key(self, star: bool, guard: bool, indexed: bool) -> str:
        return f"{self._name_digest[0]}:{self._form_digest(star, guard, indexed)}"

    @property
    def _shipper(self) -> Shipper:
        shipper = self._ship
        if shipper is None:
            shipper = self._ship = make_shipper(self, self.__wrapped__, self._key)
        return shipper

    def _autopar_state(self) -> tuple[str, StateToken, list[Any]]:
        """This function's key and the token of what it reads now (see :mod:`autopar.state`)."""
        return self._shipper.state()

    def _count(self, hit: bool | None) -> None:
        if hit is None:
            return
        owner = self._owner
        with owner._lock:
            if hit:
                owner._hits += 1
            else:
                owner._misses += 1

    def _count_learned(self) -> None:
        owner = self._owner
        with owner._lock:
            owner._learned += 1

    def _start_method(self) -> str:
        return self._options.start_method or default_start_method()

    def _form(self, star: bool, guard: bool, indexed: bool) -> Starred:
        """A starred and/or guarded form, made on first use; the decorated function's
        forms are watched like it. Workers get the same wrapping of this wrapper
        (pickled by name) or, by value, of the function."""
        form = self._forms.get((star, guard, indexed))
        if form is None:
            func: Callable[[Any], Any] = self.__wrapped__
            wrapper: Callable[[Any], Any] = self
            if self._setup is not None:  # innermost: the setup's result is the first argument
                func, wrapper = WithSetup(self._setup, func), WithSetup(self._setup, wrapper)
            if star:
                func, wrapper = Star(func), Star(wrapper)
            if guard:
                kind = IndexedGuard if indexed else Guard
                func, wrapper = kind(func), kind(wrapper)
            key = functools.partial(self._form_key, star, guard, indexed)
            form = self._forms[(star, guard, indexed)] = Starred(func, make_shipper(wrapper, func, key))
            if self._owner is self:
                watch(form)
        return form

    def call(
        self, backend: str | None = None, *, star: bool = False, on_error: str = "raise", indexed: bool = False
    ) -> Call:
        """The values one call of this function runs with (``backend``, or the
        decorator's): what :mod:`autopar.run`, ``optimize`` and ``explain`` use.
        With ``star``, each item is an argument tuple (``starmap``). With
        ``on_error="return"`` the function is guarded: an exception comes back as a
        :class:`~autopar.on_error.Raised` marker (``indexed``: items are ``(index,
        item)`` pairs, for unordered streams), for :func:`~autopar.on_error.restore`.

        Local backends' values never change for a given start method, so they are
        made once (a cache hit stays microseconds); a cluster's are asked each time.
        """
        method = self._start_method()
        name = self._backend if backend is None else backend
        guard = on_error == "return"
        indexed = indexed and guard
        cached = self._calls.get((name, method, star, guard, indexed))
        if cached is not None:
            return cached
        digest_name, digest = self._name_digest
        func: Callable[[Any], Any] = self.__wrapped__
        shipper = self._shipper
        if star or guard or self._setup is not None:
            form = self._form(star, guard, indexed)
            func, shipper, digest = form.__wrapped__, form.shipper, self._form_digest(star, guard, indexed)
        made = Call(
            func=func,
            name=digest_name,
            digest=digest,
            options=self._options,
            chunksize=self._chunksize,
            start_method=method,
            # Per-worker setup holds what is often bound to one thread (a database
            # connection, a model with its own thread pool): its functions get processes.
            target=Target.named(name, method, threads=self._setup is None),
            shipment=lambda: shipper.shipment(self._start_method()),
            ship_problem=lambda: shipper.problem(self._start_method()),
            count=self._count,
            learned=self._count_learned,
        )
        if name != "dask":
            self._calls[(name, method, star, guard, indexed)] = made
        return made

    @property
    def _checked(self) -> Callable[..., Any]:
        """What a map's arguments must fit: the function, less its setup argument."""
        func: Callable[..., Any] = self.__wrapped__
        return func if self._setup is None else functools.partial(func, None)

    def _check_fits(self, n_args: int) -> None:
        """Refuse, before any item runs, a function that cannot take ``n_args`` arguments."""
        shape = (self._owner is not self, n_args)
        fits = self._owner._fits
        if shape not in fits:
            check_arguments(self._checked, n_args, self.__name__)
            fits.add(shape)

    def _check_first(self, item: object) -> None:
        """Refuse a ``starmap`` whose first argument tuple does not fit the function."""
        if isinstance(item, (tuple, list)) and (self._owner is not self, len(item)) in self._owner._fits:
            return
        n_args = check_star_item(self._checked, item, self.__name__)
        if n_args is not None:
            self._owner._fits.add((self._owner is not self, n_args))

    # -- the public methods -------------------------------------------------------------------

    def map(
        self,
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        n_jobs: int | None = None,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
        backend: str | None = None,
        on_error: str | None = None,
    ) -> list[R]:
        """``list(map(f, iterable, *iterables))``, in parallel when the plan says it pays.

        With several iterables, each call takes one argument from each, and the
        shortest ends the map (the builtin ``map``'s meaning). A function that cannot
        take one item per call is refused before any item runs, naming the fix.

        Explicit ``n_jobs``/``chunksize`` override the plan; with both given (or
        ``n_jobs=1``) no planning happens at all. ``n_jobs=-1`` is every usable CPU,
        ``-2`` all but one (joblib's meaning). Each item is evaluated exactly
        once: items timed while planning keep their results.

        With ``timeout`` (seconds for the whole call), every item runs in worker
        processes (one with ``n_jobs=1``), which are stopped when time runs out:
        :class:`~autopar.TaskTimeoutError` (a ``TimeoutError``) is raised. With
        ``backend="serial"`` or inside a worker, items run here and the timeout is
        checked between items (a running item cannot be interrupted here). With
        ``backend="thread"`` the threads stop taking chunks, and an item already
        running finishes in the background (a Python thread cannot be killed).
        ``progress=True`` draws a bar on stderr counting finished items.
        ``backend`` (``"auto"``, ``"process"``, ``"thread"``, ``"dask"``,
        ``"serial"``) overrides the decorator's; ``"dask"`` runs chunks on the
        active ``distributed.Client``.

        ``on_error`` overrides the decorator's: ``"raise"`` (the default) raises the
        first exception the function raises, noted with its item; with ``"return"``
        each ``Exception`` takes its item's place in the results, with that note,
        the rest goes on, and the ``autopar`` logger says how many at WARNING
        (``KeyboardInterrupt``, ``SystemExit`` and a crashed worker still raise).
        """
        jobs = worker_count(n_jobs)
        _check_positive("chunksize", chunksize)
        _check_timeout(timeout)
        policy = self._policy(on_error)
        self._check_fits(1 + len(iterables))
        if iterables:
            items = as_sequence(zip_items((iterable, *iterables)))
            call = self.call(backend, star=True, on_error=policy)
        else:
            items = as_sequence(iterable)
            call = self.call(backend, on_error=policy)
        return self._map(call, items, jobs, chunksize, timeout, progress, policy)

    def starmap(
        self,
        iterable: Iterable[Iterable[Any]],
        *,
        n_jobs: int | None = None,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
        backend: str | None = None,
        on_error: str | None = None,
    ) -> list[R]:
        """``[f(*args) for args in iterable]`` (``Pool.starmap``'s meaning), planned as ``map``.

        Each item is one call's argument tuple. The first is checked against the
        function's signature before any item runs. Options as for :meth:`map`.

        >>> @auto_parallel
        ... def add(a, b):
        ...     return a + b
        >>> add.starmap([(1, 2), (3, 4)])
        [3, 7]
        >>> add.map([1, 3], [2, 4, 6])
        [3, 7]
        """
        jobs = worker_count(n_jobs)
        _check_positive("chunksize", chunksize)
        _check_timeout(timeout)
        policy = self._policy(on_error)
        items = as_sequence(iterable)
        if len(items) > 0:
            self._check_first(items[0])
        call = self.call(backend, star=True, on_error=policy)
        return self._map(call, items, jobs, chunksize, timeout, progress, policy)

    def _policy(self, on_error: str | None) -> str:
        """The call's ``on_error``: its own, else the decorator's."""
        if on_error is None:
            return self._on_error
        check_on_error(on_error, per_call=True)
        return on_error

    def _map(
        self,
        call: Call,
        items: Sequence[Any],
        n_jobs: int | None,
        size: int | None,
        timeout: float | None,
        bar: bool,
        policy: str,
    ) -> list[R]:
        progress = make_progress(len(items), self.__name__) if bar else None
        try:
            results = call.map(items, n_jobs, size, timeout, progress.update if progress is not None else None)
        finally:
            if progress is not None:
                progress.close()
        if policy == "return":
            restore(results, self.__qualname__)
        return results

    def imap(
        self,
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        n_jobs: int | None = None,
        chunksize: int | None = None,
        progress: bool = False,
        backend: str | None = None,
        on_error: str | None = None,
    ) -> Iterator[R]:
        """Stream results for large or endless inputs, planned the same way as ``map``.

        The input is read only a few chunks ahead of the workers. With
        ``ordered=False`` results come as soon as they are ready. Several iterables
        are zipped, as for :meth:`map`. ``on_error`` as for :meth:`map`: with
        ``"return"`` exceptions come in their items' places as they come, and the
        count is logged when the stream ends (or is closed).
        """
        jobs = worker_count(n_jobs)
        _check_positive("chunksize", chunksize)
        policy = self._policy(on_error)
        self._check_fits(1 + len(iterables))
        indexed = not ordered  # unordered results carry their index when returned as exceptions
        if iterables:
            every = (iterable, *iterables)
            call = self.call(backend, star=True, on_error=policy, indexed=indexed)
            return self._stream(call, zip_items(every), zip_length(every), ordered, jobs, chunksize, progress, policy)
        call = self.call(backend, on_error=policy, indexed=indexed)
        source = iterate(iterable)
        return self._stream(call, source, length_hint(iterable), ordered, jobs, chunksize, progress, policy)

    def istarmap(
        self,
        iterable: Iterable[Iterable[Any]],
        *,
        ordered: bool = True,
        n_jobs: int | None = None,
        chunksize: int | None = None,
        progress: bool = False,
        backend: str | None = None,
        on_error: str | None = None,
    ) -> Iterator[R]:
        """``f(*args)`` for each argument tuple, streamed as :meth:`imap` streams.

        The first tuple is checked against the function's signature when the first
        result is asked for, before any worker starts. ``on_error`` as for :meth:`imap`.
        """
        jobs = worker_count(n_jobs)
        _check_positive("chunksize", chunksize)
        policy = self._policy(on_error)
        call = self.call(backend, star=True, on_error=policy, indexed=not ordered)
        source = iterate(iterable)
        return self._checked_stream(call, source, length_hint(iterable), ordered, jobs, chunksize, progress, policy)

    def _checked_stream(
        self,
        call: Call,
        source: Iterator[Any],
        n_items: int | None,
        ordered: bool,
        n_jobs: int | None,
        size: int | None,
        bar: bool,
        policy: str,
    ) -> Iterator[R]:
        """The stream, once the first item passed :meth:`_check_first`: read when the
        first result is asked for, before anything starts (a pool opens before it reads)."""
        for first in source:
            self._check_first(first)
            rest = itertools.chain((first,), source)
            yield from self._stream(call, rest, n_items, ordered, n_jobs, size, bar, policy)
            break

    def _stream(
        self,
        call: Call,
        source: Iterator[Any],
        n_items: int | None,
        ordered: bool,
        n_jobs: int | None,
        size: int | None,
        bar: bool,
        policy: str,
    ) -> Iterator[R]:
        if policy == "return" and not ordered:
            source = enumerate(source)  # what an IndexedGuard takes: see call(indexed=True)
        if not bar:
            results = call.imap(source, n_items, ordered, n_jobs, size, None)
        else:
            results = self._stream_with_bar(call, source, n_items, ordered, n_jobs, size)
        return restored(results, self.__qualname__) if policy == "return" else results

    def _stream_with_bar(
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

    def plan(self, iterable: Iterable[Any], *iterables: Iterable[Any], backend: str | None = None) -> Plan:
        """What ``map(iterable, *iterables)`` would do, without running the whole map.

        A few items are evaluated to measure them (their results are discarded
        here); ``Plan.data`` holds every input item (argument tuples, with several
        iterables).
        """
        self._check_fits(1 + len(iterables))
        if iterables:
            items = as_sequence(zip_items((iterable, *iterables)))
            return self.call(backend, star=True, on_error=self._on_error).plan_only(items)
        return self.call(backend, on_error=self._on_error).plan_only(as_sequence(iterable))

    def explain(self, iterable: Iterable[Any], *, run: bool = False) -> Explanation:
        """A readable report of what ``map`` would decide and why (measured afresh).

        With ``run=True`` the whole workload also runs once per worker count, and the
        report adds measured wall time, busy time per worker and predicted vs actual.
        """
        from .explain import explain

        return explain(self, iterable, run=run)

    def partial(self, *args: Any, **kwargs: Any) -> AutoParallel[..., R]:
        """This function with arguments fixed, as ``functools.partial``, and the same options.

        The fixed arguments travel once per worker, not once per chunk: past 64 KiB
        the function is deposited once and each worker reads it once (numpy arrays
        are mapped read-only, see :mod:`autopar.depot`). Keep the result to reuse it:
        its plans and its shipment are its own.

        >>> @auto_parallel
        ... def scale(x, factor):
        ...     return x * factor
        >>> scale.partial(factor=3).map([1, 2])
        [3, 6]
        """
        fixed = functools.partial(self.__wrapped__, *args, **kwargs)
        options = self._options
        return AutoParallel(
            fixed,
            max_workers=options.max_workers,
            chunksize=self._chunksize,
            start_method=options.start_method,
            use_cache=options.use_cache,
            ttl=options.ttl,
            backend=self._backend,
            on_error=self._on_error,
            setup=self._setup,
        )

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
            "on_error": self._on_error,
            "setup": None if self._setup is None else setup_name(self._setup),
        }

    def cache_info(self) -> CacheInfo:
        """Hits and misses of this function's plan lookups here, and plans on disk
        (its ``starmap`` plans and, for a method, its bound plans included)."""
        name = self._name_digest[0]
        currsize = get_store().count(name, plan_prefix(name))  # the tag index: no scan of the store
        owner = self._owner
        with owner._lock:
            return CacheInfo(owner._hits, owner._misses, None, currsize, owner._learned)

    def cache_clear(self) -> None:
        """Remove this function's stored plans and hints, and reset its counters."""
        get_store().forget(self._name_digest[0])
        forget_hints()
        owner = self._owner
        with owner._lock:
            owner._hits = 0
            owner._misses = 0
            owner._learned = 0


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
    backend: str = "auto",
    on_error: str = "raise",
    setup: Callable[[], Any] | None = None,
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
    backend: str = "auto",
    on_error: str = "raise",
    setup: Callable[[], Any] | None = None,
) -> AutoParallel[P, R] | Callable[[Callable[P, R]], AutoParallel[P, R]]:
    """Give a one-argument function a planned parallel ``.map``.

    Use bare (``@auto_parallel``) or with keyword options
    (``@auto_parallel(max_workers=4)``). The function must be defined at module
    level for its items to run in worker processes. ``backend`` is where parallel
    work runs by default: ``"auto"`` (worker processes, or threads in this process
    when the sample measured that the work releases the GIL), ``"process"``
    (processes only: for functions that are not thread-safe), ``"thread"``
    (threads only), ``"dask"`` (the active ``distributed.Client``) or
    ``"serial"``; ``.map(backend=...)`` overrides it.
    ``on_error`` is what a call does when the function raises for an item:
    ``"raise"`` (the default) or ``"return"`` (the exception takes the item's place
    in the results); ``.map(on_error=...)`` overrides it. ``setup`` runs once in each
    worker process (and once here when items run here), and its result is
    the function's first argument in maps: ``@auto_parallel(setup=load_model)`` on
    ``def predict(model, x)``; called directly, the function is itself.

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
            on_error=on_error,
            setup=setup,
        )

    if func is not None:
        return decorate(func)
    return decorate
