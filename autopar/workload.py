"""Plan-store keys: who the function is and what the workload looks like, bucketed.

A key is a plain string, never a pickled object, so reading the store never needs
to unpickle. Buckets are powers of two: a plan for 10 thousand items lands in bucket
14 and one for 50 million in bucket 26, so neither is ever reused for the other.
"""

from __future__ import annotations

import functools
import hashlib
import math
import types
from collections.abc import Callable
from typing import Any

from ._version import CACHE_FORMAT

__all__ = [
    "TIME_UNIT_S",
    "costs_key",
    "function_identity",
    "hint_key",
    "key_time_bucket",
    "plan_key",
    "plan_prefix",
    "size_bucket",
    "time_bucket",
]

#: Per-item times are bucketed in powers of two of this unit. One microsecond is
#: about the cost of one Python function call, the smallest work worth telling apart.
TIME_UNIT_S = 1e-6
#: Highest time bucket: 2**40 us is twelve days per item, far past any real workload.
_MAX_TIME_BUCKET = 40
#: Simple values whose repr is stable across processes and runs, so they may enter a
#: fingerprint as text. Anything else enters only by its type name: a default such as
#: ``object()`` reprs with a memory address and would make every process miss.
_SIMPLE = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
#: Strings and bytes longer than this enter a fingerprint by their length only.
_LONG_TEXT = 256


def size_bucket(n_items: int | None) -> str:
    """``n<k>`` where ``2**(k-1) <= n_items < 2**k``; ``nu`` when the length is unknown."""
    if n_items is None:
        return "nu"
    if n_items < 0:
        msg = f"n_items must be >= 0 or None, got {n_items}"
        raise ValueError(msg)
    return f"n{n_items.bit_length()}"


def time_bucket(seconds: float) -> int:
    """``floor(log2(seconds / 1 us))`` clamped to 0..40 (sub-2-us work shares bucket 0)."""
    if math.isnan(seconds) or seconds < 2 * TIME_UNIT_S:
        return 0
    if math.isinf(seconds):
        return _MAX_TIME_BUCKET
    return min(_MAX_TIME_BUCKET, math.floor(math.log2(seconds / TIME_UNIT_S)))


def _stable(value: Any, depth: int = 0) -> str:
    """Text for a value that is the same in every process, or its type when it is not."""
    if depth > 4:
        return "..."
    if isinstance(value, (str, bytes)) and len(value) > _LONG_TEXT:
        # A large constant (an 80 MB table in a partial) is named by its size: its repr
        # would cost seconds. Plans are about cost, and cost goes with size; what the
        # function reads for its results is followed by autopar.state, not here.
        return f"{type(value).__name__}(len={len(value)})"
    if isinstance(value, _SIMPLE):
        return repr(value)
    if isinstance(value, (tuple, list)):
        inner = ",".join(_stable(v, depth + 1) for v in value)
        return f"{type(value).__name__}({inner})"
    if isinstance(value, (frozenset, set)):
        return "set(" + ",".join(sorted(_stable(v, depth + 1) for v in value)) + ")"
    if isinstance(value, dict):
        items = sorted(f"{_stable(k, depth + 1)}:{_stable(v, depth + 1)}" for k, v in value.items())
        return "dict(" + ",".join(items) + ")"
    if isinstance(value, types.CodeType):
        return _code_text(value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _code_text(code: types.CodeType) -> str:
    """The parts of a code object that decide what it computes (not its line numbers)."""
    consts = ",".join(_stable(c) for c in code.co_consts)
    return "|".join(
        (
            code.co_code.hex(),
            consts,
            ",".join(code.co_names),
            ",".join(code.co_varnames),
            ",".join(code.co_freevars),
            str(code.co_argcount),
            str(code.co_kwonlyargcount),
            str(code.co_flags),
        )
    )


def _callable_text(func: Callable[..., Any]) -> str:
    """Fingerprint text of any callable: code, defaults, closure values, partial args."""
    if isinstance(func, functools.partial):
        return "partial(" + _callable_text(func.func) + ";" + _stable(func.args) + ";" + _stable(func.keywords) + ")"
    inner = getattr(func, "__wrapped__", None)
    if inner is not None and inner is not func:
        return _callable_text(inner)
    if isinstance(func, types.MethodType):
        return "method(" + _callable_text(func.__func__) + ";" + _stable(func.__self__) + ")"
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        closure = getattr(func, "__closure__", None) or ()
        cells = []
        for cell in closure:
            try:
                cells.append(_stable(cell.cell_contents))
            except ValueError:  # an empty cell
                cells.append("<empty>")
        return "|".join(
            (
                _code_text(code),
                _stable(getattr(func, "__defaults__", None)),
                _stable(getattr(func, "__kwdefaults__", None)),
                ",".join(cells),
            )
        )
    call = next((vars(k)["__call__"] for k in type(func).__mro__ if "__call__" in vars(k)), None)
    if isinstance(call, types.FunctionType):  # an instance of a class with __call__
        return "instance(" + _callable_text(call) + ";" + _stable(func) + ")"
    return _stable(func)


def function_identity(func: Callable[..., Any]) -> tuple[str, str]:
    """``(name, digest)``: ``module.qualname`` and a hash of everything the code computes.

    The digest covers the code object (bytecode, constants, names, nested code
    objects), defaults and simple closure values, so ``x * 2`` and ``x * 3`` never
    share a plan; moving the function to another line keeps its plans.
    """
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__wrapped__", target)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    digest = hashlib.blake2b(_callable_text(func).encode(), digest_size=8).hexdigest()
    return f"{module}.{qualname}", digest


def plan_key(
    name: str,
    digest: str,
    *,
    size: str,
    tbucket: int,
    start_method: str,
    cpus: int,
    max_workers: int | None,
    executors: tuple[str, ...] = ("process",),
) -> str:
    """The plain-string key of one plan.

    The format version comes first so a new format never reads old rows; the CPU
    count and start method are in the key as well as in the stored fingerprint, so
    switching between two settings does not evict either plan.
    """
    cap = "any" if max_workers is None else str(max_workers)
    # The executors allowed: a plan made with threads allowed is never read by a
    # call that forbids them (backend="process"), nor the other way round.
    allowed = "+".join(sorted(executors))
    return f"plan:v{CACHE_FORMAT}:{name}:{digest}:{start_method}:c{cpus}:w{cap}:x{allowed}:{size}:t{tbucket}"


def plan_prefix(name: str) -> str:
    """The key prefix shared by every plan of the function called ``name``."""
    return f"plan:v{CACHE_FORMAT}:{name}:"


def hint_key(plan_key_: str) -> str:
    """The hint row for a plan key: the same key without its time bucket."""
    return "hint:" + plan_key_.rsplit(":t", 1)[0]


def key_time_bucket(plan_key_: str) -> int:
    """The time bucket a plan key ends with (``...:t12`` -> 12)."""
    return int(plan_key_.rsplit(":t", 1)[1])


def costs_key(start_method: str, cpus: int) -> str:
    """Store key of the measured costs for a start method (or cluster) and CPU count."""
    return f"costs:v{CACHE_FORMAT}:{start_method}:c{cpus}"
