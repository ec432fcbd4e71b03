"""How a call's arguments reach the function: one item, an argument tuple, a bound self.

``.map`` passes one item per call. ``.starmap`` (and ``.map(xs, ys)``) pass a tuple
of arguments per item, through :class:`Star`, so the one-argument run path, its
planner and its workers serve them unchanged. What a function can take is checked
here before any item runs (:func:`check_arguments`), and what a decorated method's
``self`` or a callable instance holds enters the state token that decides when
workers need a fresh copy (:class:`HolderShipper`). ``n_jobs`` gets joblib's
meaning for negative counts (:func:`worker_count`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import operator
import reprlib
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .errors import NotIterableError
from .on_error import Guard
from .shipping import Shipper
from .state import StateToken, state_token
from .system import usable_cpus

__all__ = [
    "HolderShipper",
    "Star",
    "Starred",
    "attribute_token",
    "check_arguments",
    "check_decoratable",
    "check_star_item",
    "holder_of",
    "make_shipper",
    "names_of",
    "star_digest",
    "worker_count",
    "zip_items",
    "zip_length",
]

#: Example names for the iterables of ``f.map(xs, ys, ...)`` in messages.
_ITERABLE_NAMES = ("xs", "ys", "zs")
#: What ``starmap``'s argument tuples are called in messages, by their length.
_TUPLE_NAMES = {2: "pairs", 3: "triples"}


class Star(functools.partial):  # type: ignore[type-arg]
    """``func(*args)`` for one argument tuple: how ``starmap`` calls the function.

    A ``functools.partial`` with no arguments of its own, so :mod:`autopar.state`
    follows what ``func`` reads (a changed global is seen) and a pickle carries
    ``func`` as it would alone (by reference when importable, else by value).
    ``__module__`` is ``func``'s, which decides whether it travels by value
    (see :func:`autopar.shipping.by_value`).
    """

    func: Callable[..., Any]

    def __new__(cls, func: Callable[..., Any]) -> Star:
        self = super().__new__(cls, func)
        self.__module__ = getattr(func, "__module__", None) or cls.__module__
        return self

    def __call__(self, args: Iterable[Any], /) -> Any:
        return self.func(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.func,))

    def __repr__(self) -> str:
        return f"Star({self.func!r})"


def zip_items(iterables: Sequence[Iterable[Any]]) -> Iterator[tuple[Any, ...]]:
    """One argument tuple per call, one argument from each iterable; the shortest ends it
    (the builtin ``map``'s meaning). Not iterable: :class:`NotIterableError` naming which."""
    sources = []
    for position, iterable in enumerate(iterables, 1):
        try:
            sources.append(iter(iterable))
        except TypeError:
            msg = f"autopar needs iterables of items, but argument {position} is {type(iterable).__name__}"
            raise NotIterableError(msg) from None
    return zip(*sources, strict=False)


def zip_length(iterables: Sequence[Iterable[Any]]) -> int | None:
    """How many argument tuples :func:`zip_items` makes, when every iterable's length is known."""
    lengths = [len(it) if isinstance(it, Sequence) else operator.length_hint(it, -1) for it in iterables]
    return None if not lengths or min(lengths) < 0 else min(lengths)


def star_digest(digest: str) -> str:
    """The plan digest of the starred form of a function whose digest is ``digest``.

    A starred call takes a tuple where the function takes one item: its timing,
    pickled sizes and plans are its own, never the one-argument function's.
    """
    return hashlib.blake2b(f"star:{digest}".encode(), digest_size=8).hexdigest()


def worker_count(n_jobs: int | None) -> int | None:
    """``n_jobs`` as a worker count, joblib's way: -1 is every usable CPU, -2 all but one.

    Counted from :func:`autopar.system.usable_cpus` (affinity mask, cgroup quota),
    and never below one worker. None (let the plan decide) stays None.
    """
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
        msg = f"n_jobs must be an int or None, got {n_jobs!r}"
        raise ValueError(msg)
    if n_jobs == 0:
        msg = (
            "n_jobs=0 would run no worker: pass None to let autopar decide, a positive count, "
            "or -1 for every usable CPU (-2 for all but one)"
        )
        raise ValueError(msg)
    if n_jobs > 0:
        return n_jobs
    return max(1, usable_cpus() + 1 + n_jobs)


# -- what can be decorated ------------------------------------------------------------------


def check_decoratable(func: object) -> None:
    """Raise ``TypeError`` for what ``@auto_parallel`` must not wrap, saying what to do instead.

    A class is refused: its name would then hold a wrapper, and ``isinstance(obj,
    Thing)`` or subclassing would break without a word. A ``staticmethod`` or
    ``classmethod`` object is refused with the order that works.
    """
    if isinstance(func, type):
        name = func.__name__
        msg = (
            f"auto_parallel cannot decorate the class {name}: the name would then hold a wrapper, "
            f"and isinstance(obj, {name}) and subclassing would break. "
        )
        if _calls_instances(func):
            msg += (
                f"Decorate an instance (auto_parallel({name}(...))), or a function that builds one and "
                f"calls it (@auto_parallel def run(item): return {name}(...)(item))"
            )
        else:
            msg += f"Decorate a function that builds it instead (@auto_parallel def make(item): return {name}(item))"
        raise TypeError(msg)
    if isinstance(func, staticmethod):
        msg = "auto_parallel cannot wrap a staticmethod object: put @staticmethod above @auto_parallel"
        raise TypeError(msg)
    if isinstance(func, classmethod):
        msg = (
            "auto_parallel cannot wrap a classmethod object: decorate a plain method "
            "(its instance is bound) or a module-level function instead"
        )
        raise TypeError(msg)
    if not callable(func):
        msg = f"auto_parallel needs a callable, got {type(func).__name__}"
        raise TypeError(msg)


def _calls_instances(cls: type) -> bool:
    """True when instances of ``cls`` are callable (a ``__call__`` below ``object``)."""
    return any("__call__" in vars(k) for k in cls.__mro__ if k is not object)


_FUNCTION_LIKE = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
    functools.partial,
)


def holder_of(func: Callable[..., Any]) -> object | None:
    """The object whose attributes ``func`` reads: a bound method's instance, a callable
    instance itself; None for functions, builtins and partials (their state is the
    globals and arguments :mod:`autopar.state` follows)."""
    raw = getattr(func, "_autopar_raw", None)
    if raw is not None and raw is not func:  # an @auto_parallel wrapper, wrapped again
        return holder_of(raw)
    if isinstance(func, types.MethodType):
        holder = func.__self__
        return None if isinstance(holder, (type, types.ModuleType)) else holder
    if isinstance(func, _FUNCTION_LIKE):
        return None
    return func


def names_of(func: Callable[..., Any]) -> dict[str, str]:
    """``__module__``, ``__name__`` and ``__qualname__`` for any callable: its own, those of
    the function a partial wraps, or its class's (a callable instance)."""
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    kind = type(target)
    module = (
        getattr(target, "__module__", None)
        or getattr(getattr(target, "__objclass__", None), "__module__", None)
        or kind.__module__
    )
    name = getattr(target, "__name__", None) or kind.__name__
    qualname = getattr(target, "__qualname__", None) or kind.__qualname__
    return {"__module__": str(module), "__name__": str(name), "__qualname__": str(qualname)}


# -- the state a bound self carries ---------------------------------------------------------------


def _attributes(obj: object) -> dict[str, Any]:
    """``obj``'s instance attributes: its ``__dict__`` and filled ``__slots__``."""
    found: dict[str, Any] = {}
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        found.update((k, v) for k, v in attrs.items() if isinstance(k, str))
    for klass in type(obj).__mro__:
        slots = vars(klass).get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and slot not in found:
                try:
                    found[slot] = getattr(obj, slot)
                except AttributeError:  # an empty slot
                    continue
    return found


def attribute_token(obj: object) -> tuple[StateToken, list[Any]]:
    """The state token of ``obj``'s attributes, with :mod:`autopar.state`'s meaning.

    Simple values and small containers of them by value, other objects by identity:
    ``self.threshold = 0.7`` is seen, a large array changed in place is not.
    """
    return state_token(functools.partial(dict, **_attributes(obj)))


class HolderShipper(Shipper):
    """A :class:`~autopar.shipping.Shipper` whose token also covers the attributes of the
    object the function reads them from (a bound ``self``, a callable instance).

    Workers receive that object pickled with the function, so a rebound attribute
    must make a new shipment, as a rebound global does.
    """

    def __init__(self, wrapper: Any, func: Callable[..., Any], key: Callable[[], str], holder: object) -> None:
        super().__init__(wrapper, func, key)
        self._holder = holder

    def state(self) -> tuple[str, StateToken, list[Any]]:
        key, token, keep = super().state()
        extra, refs = attribute_token(self._holder)
        return key, (*token, *extra), [*keep, *refs]


class Starred:
    """A decorated function's starred or guarded form, as :func:`autopar.state.watch`
    needs it: ``__wrapped__`` is the :class:`Star` (or :class:`~autopar.on_error.Guard`)
    workers run, ``shipper`` makes its shipment under the form's key, so a pool
    records what that form reads."""

    def __init__(self, func: Callable[[Any], Any], shipper: Shipper) -> None:
        self.__wrapped__ = func
        self.shipper = shipper

    def _autopar_state(self) -> tuple[str, StateToken, list[Any]]:
        return self.shipper.state()


def make_shipper(wrapper: Any, func: Callable[..., Any], key: Callable[[], str]) -> Shipper:
    """The shipper for ``func`` (or its :class:`Star` or guarded form): one that also
    watches its holder's attributes when it has one."""
    target = func
    while isinstance(target, (Star, Guard)):
        target = target.func
    holder = holder_of(target)
    if holder is None:
        return Shipper(wrapper, func, key)
    return HolderShipper(wrapper, func, key, holder)


# -- does the function take what a call passes? -------------------------------------------


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The function's own signature (a decorator's ``*args`` wrapper is taken at its word),
    or None when it has none (some builtins)."""
    try:
        return inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):
        return None


def _arity(signature: inspect.Signature) -> tuple[int, int | None]:
    """(required, most) positional arguments; most is None with ``*args``."""
    required = most = 0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            most += 1
            required += param.default is param.empty
        elif param.kind is param.VAR_POSITIONAL:
            return required, None
    return required, most


def _takes(required: int, most: int | None) -> str:
    if most is None:
        return f"at least {required}"
    if most == required:
        return str(required)
    return f"{required} to {most}"


def _missing_keywords(signature: inspect.Signature) -> list[str]:
    return [
        name
        for name, param in signature.parameters.items()
        if param.kind is param.KEYWORD_ONLY and param.default is param.empty
    ]


def check_arguments(func: Callable[..., Any], n_args: int, name: str, *, star_item: object = None) -> None:
    """Raise ``TypeError`` when ``func`` cannot be called with ``n_args`` positional arguments.

    ``.map(items)`` passes one, ``.map(xs, ys)`` one per iterable, ``.starmap`` the
    length of ``star_item`` (its first item). The message names the way that works.
    A function with no signature to read (some builtins) is not checked: its first
    call says what is wrong, naming the item.
    """
    signature = _signature(func)
    if signature is None:
        return
    try:
        signature.bind(*range(n_args))
    except TypeError as exc:
        msg = _misfit(signature, n_args, name, star_item, exc)
        raise TypeError(msg) from None


def _misfit(signature: inspect.Signature, n_args: int, name: str, star_item: object, exc: TypeError) -> str:
    required, most = _arity(signature)
    fits_count = required <= n_args and (most is None or n_args <= most)
    keywords = _missing_keywords(signature)
    if fits_count and keywords:
        listed = ", ".join(keywords)
        return (
            f"{name}() needs the keyword argument{'s' if len(keywords) > 1 else ''} {listed}; "
            f".map passes only positional arguments: give {listed} a default, "
            f"or decorate a function that passes {'them' if len(keywords) > 1 else 'it'}"
        )
    takes = _takes(required, most)
    if star_item is not None:
        return (
            f"{name}() takes {takes} positional arguments, but starmap's item 0 has {n_args}: "
            f"{_short(star_item)}; each item is one call's argument tuple"
        )
    if n_args > 1:
        return (
            f"{name}() takes {takes} positional arguments, but .map was given {n_args} iterables "
            f"(each call takes one argument from each)"
        )
    if most == 0:
        return f"{name}() takes no arguments; .map passes one item at a time: give it a parameter for the item"
    if required > 1:
        tuples = _TUPLE_NAMES.get(required, "tuples")
        iterables = ", ".join(_ITERABLE_NAMES[:required]) if required <= len(_ITERABLE_NAMES) else "xs, ys, ..."
        return (
            f"{name}() takes {takes} positional arguments; .map passes one item at a time: "
            f"use {name}.starmap({tuples}) or {name}.map({iterables}), or functools.partial to fix all but one"
        )
    return f"{name}() cannot be called with {n_args} positional argument(s): {exc}"


def check_star_item(func: Callable[..., Any], item: object, name: str) -> int | None:
    """Check ``starmap``'s first item against ``func``; its length, or None when unknown.

    Only the first item is checked (cheaply, with no call): the others would fail
    as the first does, naming their item.
    """
    try:
        iter(item)  # type: ignore[call-overload]
    except TypeError:
        msg = (
            f"{name}.starmap needs an iterable of argument tuples, but item 0 is {_short(item)} "
            f"({type(item).__name__}): use {name}.map(items) to pass one argument per call"
        )
        raise TypeError(msg) from None
    if not isinstance(item, (tuple, list)):
        return None  # a lazy iterable: its length is not known without consuming it
    check_arguments(func, len(item), name, star_item=item)
    return len(item)


def _short(value: object) -> str:
    return reprlib.repr(value)
