"""What a function reads by name, and a cheap token that changes when that changes.

Workers must compute what the caller would compute *now*. A worker forked before
the caller rebound a global, or a function pickled by value before that, would
silently use the old value. This module says when that can have happened: a
*state token* covers what the function reads by name, checked on every call in
microseconds, never by pickling:

* the globals its code names (nested code objects included), and through them the
  functions of the user's own code it calls, recursively (library code is skipped:
  its module state is not the caller's to change between calls);
* attributes it reads from modules (``config.SCALE``) when they are simple values;
* its closure cells, defaults and a ``functools.partial``'s arguments.

Numbers, strings, bytes and small tuples of them enter the token by value; any
other object by identity (a reference is kept, so its id cannot be reused), plus
its length for containers, and the contents of small containers of simple values.
So rebinding a name, defining a new function, changing a closure or a small config
dict are seen; an in-place change inside a large object (an array, a long list)
is not. See the README's "What workers see".
"""

from __future__ import annotations

import functools
import sys
import sysconfig
import types
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "SIMPLE_TYPES",
    "StateToken",
    "Watched",
    "is_simple",
    "is_small_data",
    "known_simple_globals",
    "known_states",
    "simple_globals",
    "state_token",
    "watch",
]

#: Values compared by value: immutable, cheap to compare, same meaning in any process.
SIMPLE_TYPES = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
#: Containers up to this length of simple values enter the token by content, so a
#: small config dict changed in place is seen; longer ones by identity and length.
SMALL_CONTAINER = 32
#: How deep the walk follows functions calling functions of the user's own code.
MAX_DEPTH = 6
#: At most this many names are looked at per token: a bound on the check's cost.
MAX_NAMES = 512

StateToken = tuple[Any, ...]

_code_names: dict[types.CodeType, tuple[str, ...]] = {}
_CODE_NAMES_MAX = 4096
_library_modules: dict[str, bool] = {}


def is_simple(value: object) -> bool:
    """True for values compared by value: numbers, strings, bytes, tuples of them."""
    kind = type(value)
    if kind in SIMPLE_TYPES:
        return True
    if isinstance(value, (tuple, frozenset)) and (kind is tuple or kind is frozenset):
        return len(value) <= SMALL_CONTAINER and all(type(v) in SIMPLE_TYPES for v in value)
    return False


def is_small_data(value: object) -> bool:
    """True for simple values and small dicts, lists and sets of simple values.

    These are what :func:`simple_globals` sends to spawn and forkserver workers: a
    copy of them means the same as the original (no identity a copy could break).
    """
    if is_simple(value):
        return True
    kind = type(value)
    if kind is dict:
        return len(value) <= SMALL_CONTAINER and all(  # type: ignore[arg-type]
            is_simple(k) and is_simple(v)
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    if kind is list or kind is set:
        return len(value) <= SMALL_CONTAINER and all(is_simple(v) for v in value)  # type: ignore[arg-type, attr-defined]
    return False


def _names(code: types.CodeType) -> tuple[str, ...]:
    """Every name the code (and code nested in it) looks up, cached per code object."""
    names = _code_names.get(code)
    if names is None:
        found: dict[str, None] = dict.fromkeys(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(dict.fromkeys(_names(const)))
        names = tuple(found)
        if len(_code_names) >= _CODE_NAMES_MAX:
            _code_names.clear()
        _code_names[code] = names
    return names


def _prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(sorted(found))


_LIBRARY_PREFIXES = _prefixes()


def _is_library(module_name: str | None) -> bool:
    """True for modules of the standard library and installed packages (not the user's code)."""
    if module_name is None:
        return True
    known = _library_modules.get(module_name)
    if known is not None:
        return known
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module_name == "__main__" or module_name == "__mp_main__":
        library = False
    elif module_name.partition(".")[0] == "autopar":
        library = True  # autopar's own state (which process is a worker) is never the caller's to send
    elif path is None:
        library = module is not None  # built-in or frozen module; unknown names count as user code
    else:
        library = str(path).startswith(_LIBRARY_PREFIXES)
    _library_modules[module_name] = library
    return library


class _Walk:
    """One token computation: entries in order, references kept, functions visited."""

    __slots__ = ("budget", "entries", "keep", "seen")

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.keep: list[Any] = []
        self.seen: set[int] = set()
        self.budget = MAX_NAMES

    def value(self, value: Any, depth: int) -> None:
        if type(value) in SIMPLE_TYPES:
            self.entries.append(value)
            return
        self.entries.append(id(value))
        self.keep.append(value)
        if isinstance(value, (list, dict, set, tuple, frozenset)):
            size = len(value)
            self.entries.append(size)
            if size <= SMALL_CONTAINER:
                parts = value.items() if isinstance(value, dict) else value
                for part in parts:
                    if is_simple(part):
                        self.entries.append(part)
                    else:
                        self.entries.append(id(part))
                        self.keep.append(part)
        elif callable(value) and not isinstance(value, type):
            self.callable(value, depth + 1)

    def callable(self, func: Any, depth: int) -> None:
        if depth > MAX_DEPTH or id(func) in self.seen or self.budget <= 0:
            return
        self.seen.add(id(func))
        if isinstance(func, functools.partial):
            self.callable(func.func, depth)
            for arg in func.args:
                self.value(arg, depth)
            for name, arg in func.keywords.items():
                self.entries.append(name)
                self.value(arg, depth)
            return
        wrapped = getattr(func, "_autopar_raw", None)
        if wrapped is not None:
            self.callable(wrapped, depth)
            return
        if isinstance(func, types.MethodType):
            self.value(func.__self__, depth)
            self.callable(func.__func__, depth)
            return
        if not isinstance(func, types.FunctionType):
            call = next((vars(k)["__call__"] for k in type(func).__mro__ if "__call__" in vars(k)), None)
            if isinstance(call, types.FunctionType) and not _is_library(getattr(call, "__module__", None)):
                self.callable(call, depth)
            return
        self._function(func, depth)

    def _function(self, func: types.FunctionType, depth: int) -> None:
        if depth > 0 and _is_library(func.__module__):
            return
        code = func.__code__
        self.entries.append(id(code))
        self.keep.append(code)
        for default in func.__defaults__ or ():
            self.value(default, depth)
        for arg in (func.__kwdefaults__ or {}).values():
            self.value(arg, depth)
        for cell in func.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                self.entries.append("<empty>")
                continue
            self.value(contents, depth)
        namespace = func.__globals__
        names = _names(code)
        modules: list[types.ModuleType] = []
        for name in names:
            self.budget -= 1
            if self.budget <= 0:
                return
            if name not in namespace:
                self.entries.append(None)  # missing now; defined later is a change
                continue
            value = namespace[name]
            if isinstance(value, types.ModuleType):
                self.entries.append(id(value))
                modules.append(value)
                continue
            self.entries.append(name)
            self.value(value, depth)
        for module in modules:  # ``config.SCALE``: simple attributes read off modules
            attrs = vars(module)
            for name in names:
                attr = attrs.get(name)
                if attr is not None and type(attr) in SIMPLE_TYPES:
                    self.entries.append(name)
                    self.entries.append(attr)


def state_token(func: Callable[..., Any]) -> tuple[StateToken, list[Any]]:
    """The token of what ``func`` reads now, and the references that keep its ids valid.

    Two tokens compare equal only when nothing the function reads by name was
    rebound (or, for simple values and small containers, changed) in between.
    """
    walk = _Walk()
    walk.callable(func, 0)
    return tuple(walk.entries), walk.keep


def simple_globals(func: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """The simple-valued globals ``func`` reads, by module: ``{module: {name: value}}``.

    Spawn and forkserver workers import the function's module afresh; these are the
    values a caller may have rebound since (``mymod.SCALE = 10``), sent to workers
    so they compute what the caller would. Only simple values and small containers
    of them travel this way (:func:`is_small_data`): they have no identity a copy
    could break (a sentinel ``object()`` would), and containers are updated in place.
    """
    found: dict[str, dict[str, Any]] = {}
    stack: list[tuple[Any, int]] = [(func, 0)]
    seen: set[int] = set()
    while stack:
        target, depth = stack.pop()
        while isinstance(target, functools.partial):
            # Functions among a partial's arguments (a per-worker setup, a callback)
            # read globals too.
            stack.extend((arg, depth + 1) for arg in (*target.args, *target.keywords.values()) if callable(arg))
            target = target.func
        target = getattr(target, "_autopar_raw", target)
        if isinstance(target, types.MethodType):
            target = target.__func__
        if not isinstance(target, types.FunctionType) or id(target) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(target))
        module = target.__module__
        if depth > 0 and _is_library(module):
            continue
        namespace = target.__globals__
        values = found.setdefault(str(namespace.get("__name__", module)), {})
        for name in _names(target.__code__):
            if name not in namespace:
                continue
            value = namespace[name]
            if is_small_data(value):
                values[name] = value
            elif isinstance(value, types.FunctionType):
                stack.append((value, depth + 1))
            elif isinstance(value, types.ModuleType) and not _is_library(value.__name__):
                attrs = found.setdefault(value.__name__, {})
                for attr_name in _names(target.__code__):
                    attr = vars(value).get(attr_name)
                    if attr is not None and is_small_data(attr):
                        attrs[attr_name] = attr
        for cell in target.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:
                continue
            if isinstance(contents, types.FunctionType):
                stack.append((contents, depth + 1))
    return {module: values for module, values in found.items() if values}


class Watched(Protocol):
    """What the registry needs of a decorated function (``AutoParallel``)."""

    def _autopar_state(self) -> tuple[str, StateToken, list[Any]]: ...

    @property
    def __wrapped__(self) -> Callable[..., Any]: ...


_registry: weakref.WeakSet[Any] = weakref.WeakSet()


def watch(wrapper: Watched) -> None:
    """Remember a decorated function, so a new pool can record what its workers saw."""
    _registry.add(wrapper)


def known_states() -> tuple[dict[str, StateToken], list[Any]]:
    """The state of every decorated function alive now, as new workers will see it.

    Recorded when a pool starts: under fork the workers hold exactly this state, so
    the pool may serve a function later only while its token is unchanged.
    """
    tokens: dict[str, StateToken] = {}
    keep: list[Any] = []
    for wrapper in list(_registry):
        try:
            key, token, refs = wrapper._autopar_state()
        except Exception:  # noqa: BLE001 - a function we cannot inspect is simply unknown
            continue
        tokens[key] = token
        keep.append(refs)
    return tokens, keep


def known_simple_globals() -> dict[str, dict[str, Any]]:
    """Simple globals of every decorated function alive now, merged by module."""
    merged: dict[str, dict[str, Any]] = {}
    for wrapper in list(_registry):
        try:
            found = simple_globals(wrapper.__wrapped__)
        except Exception:  # noqa: BLE001
            continue
        for module, values in found.items():
            merged.setdefault(module, {}).update(values)
    return merged
