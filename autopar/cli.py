"""The ``autopar`` command line: inspect and manage the plan cache, explain decisions.

::

    autopar cache info                  where the cache is, its size, its plans
    autopar cache list [--json]         one line per stored plan
    autopar cache clear [--function FUNCTION]
    autopar cache prune [--ttl SECONDS]
    autopar explain FUNCTION (--items N | --data FILE) [--run] [--plot PNG] [--json]

FUNCTION is ``module:function``, ``module.function`` or ``path/to/file.py:function``.
Exit codes: 0 success, 1 a failure while running (import error, unreadable data,
the function raised, a plan cache that cannot be read or changed), 2 a usage
error (argparse's convention). Errors go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import CACHE_FORMAT, __version__

__all__ = ["main"]


class CliError(Exception):
    """A failure to report on stderr with exit code 1."""


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _plans() -> list[dict[str, Any]]:
    from .plan import read_plan_record
    from .store_admin import read_rows
    from .system import usable_cpus

    now, cpus = time.time(), usable_cpus()
    rows = []
    for key, text in read_rows(_cache_dir(), "plan:"):
        record = read_plan_record(text, usable_cpus=cpus, max_workers=None)
        if record is None:
            continue
        rows.append(
            {
                "key": key,
                "function": record.function,
                "size_bucket": record.workload.get("size_bucket"),
                "time_bucket": record.workload.get("time_bucket"),
                "n_items": record.workload.get("n_items"),
                "executor": record.executor,
                "n_jobs": record.n_jobs,
                "chunksize": record.chunksize,
                "age_s": max(0.0, now - record.created),
                "reason": record.reason,
            }
        )
    return rows


def _cache_dir() -> Path:
    from .store import get_cache_dir

    try:
        return get_cache_dir()
    except RuntimeError as exc:  # no HOME and no passwd entry
        msg = str(exc)
        raise CliError(msg) from exc


def _cache_info(args: argparse.Namespace) -> int:
    """Read-only: a store autopar cannot use is reported (exit 1), never set aside or created."""
    from .store_admin import StoreError, inspect_store

    directory = _cache_dir()
    try:
        summary = inspect_store(directory)
    except StoreError as exc:
        msg = f"cannot read the plan cache: {exc}"
        raise CliError(msg) from exc
    print(f"location:       {directory}{'' if summary.exists else ' (not created yet)'}")
    print(f"size on disk:   {summary.size_bytes:,} bytes")
    print(f"plans:          {summary.counts.get('plan', 0)}")
    print(f"measured costs: {summary.counts.get('costs', 0)}")
    print(f"format version: {CACHE_FORMAT} (autopar {__version__})")
    if summary.set_aside:
        names = ", ".join(p.name for p in summary.set_aside)
        print(f"set aside:      {names} (unreadable; `autopar cache clear` removes them)")
    return 0


def _cache_list(args: argparse.Namespace) -> int:
    from .store import StoreError

    try:
        rows = _plans()
    except StoreError as exc:
        msg = f"cannot read the plan cache: {exc}"
        raise CliError(msg) from exc
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no plans stored")
        return 0
    for r in rows:
        unit = "threads" if r["executor"] == "thread" else "workers"
        plan = "serial" if r["executor"] == "serial" else f"{r['n_jobs']} {unit} x {r['chunksize']}"
        print(
            f"{r['function']}  size {r['size_bucket']} time t{r['time_bucket']}  {plan}  "
            f"age {_age(r['age_s'])}  {r['reason']}"
        )
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    from .planner import forget_hints
    from .store_admin import StoreError, clear_directory

    name = None if args.function is None else _function_name(args.function)
    try:
        removed, files = clear_directory(_cache_dir(), tag=name)
    except StoreError as exc:
        msg = f"cannot clear the plan cache: {exc}"
        raise CliError(msg) from exc
    finally:
        forget_hints()  # this process's memo of hint rows (when called in-process)
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}" + (f" of {name}" if name else ""))
    for file in files:
        print(f"removed {file}")
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    from .api import prune_expired_cache

    removed = prune_expired_cache(args.ttl)
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
    return 0


def _split_target(spec: str) -> tuple[str | None, str, Path | None, Path | None]:
    """``(module, qualname, file, root)`` from MODULE:FUNCTION, MODULE.FUNCTION or FILE.py:FUNCTION.

    ``module`` is None for the dotted form: which dot ends the module is found by
    importing. For a file, ``root`` is the directory to put on sys.path.
    """
    head, colon, qualname = spec.rpartition(":")
    if not colon:
        head, _, qualname = spec.rpartition(".")
    if not head or not qualname:
        msg = f"expected MODULE:FUNCTION (or MODULE.FUNCTION, FILE.py:FUNCTION), got {spec!r}"
        raise CliError(msg)
    if not colon:
        return None, qualname, None, None
    if head.endswith(".py") or "/" in head or os.sep in head:
        path = Path(head).resolve()
        if not path.is_file():
            msg = f"no such file: {head}"
            raise CliError(msg)
        module, root = _module_for_file(path)
        return module, qualname, path, root
    return head, qualname, None, None


def _module_for_file(path: Path) -> tuple[str, Path]:
    """The dotted name a file imports as, and the directory that must be on sys.path for it.

    A file in a package (directories with ``__init__.py``) keeps its package, so its
    relative imports work.
    """
    parts = [] if path.name == "__init__.py" else [path.stem]
    root = path.parent
    while (root / "__init__.py").is_file() and root.parent != root:
        parts.insert(0, root.name)
        root = root.parent
    if not parts or not all(part.isidentifier() for part in parts):
        msg = f"{path} cannot be imported as a module (its name is not a Python identifier)"
        raise CliError(msg)
    return ".".join(parts), root


def _function_name(spec: str) -> str:
    """The name plans are stored under (``module.qualname``), from any form the CLI accepts."""
    module, qualname, _, _ = _split_target(spec)
    return spec if module is None else f"{module}.{qualname}"


def _import(module_name: str, where: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        msg = f"cannot import {where!r}: {type(exc).__name__}: {exc}"
        raise CliError(msg) from exc


def _import_dotted(spec: str) -> tuple[Any, str]:
    """Import the longest importable module in ``a.b.c``; the module and the rest (maybe empty)."""
    parts = spec.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            return importlib.import_module(module_name), ".".join(parts[cut:])
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                continue  # no such module: the function's name has more dots
            msg = f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
            raise CliError(msg) from exc
        except Exception as exc:
            msg = f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
            raise CliError(msg) from exc
    msg = f"cannot import {parts[0]!r}: no module of that name (expected MODULE:FUNCTION or MODULE.FUNCTION)"
    raise CliError(msg)


def _load_function(spec: str) -> Callable[[Any], Any]:
    module_name, qualname, path, root = _split_target(spec)
    obj: Any
    if path is not None and root is not None and module_name is not None:
        if str(root) not in sys.path:  # spawn and forkserver workers inherit sys.path
            sys.path.insert(0, str(root))
        obj = _import(module_name, str(path))
        loaded = getattr(obj, "__file__", None)
        if loaded is None or Path(loaded).resolve() != path:
            msg = f"cannot load {path} as module {module_name!r}: that name is already taken by {loaded or obj!r}"
            raise CliError(msg)
    else:
        if os.getcwd() not in sys.path:  # like `python -m`: modules in the current directory
            sys.path.insert(0, os.getcwd())
        if module_name is None:
            obj, qualname = _import_dotted(spec)
            module_name = spec[: len(spec) - len(qualname)].rstrip(".")
        else:
            obj = _import(module_name, module_name)
    for part in qualname.split(".") if qualname else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            msg = f"{module_name!r} has no attribute {qualname!r}"
            raise CliError(msg) from None
    if not callable(obj):
        what = "a module" if inspect.ismodule(obj) else type(obj).__name__
        msg = f"{spec} is {what}, not a function (expected MODULE:FUNCTION)"
        raise CliError(msg)
    return obj  # type: ignore[no-any-return]


def _load_data(path: str) -> list[Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise CliError(msg) from exc
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            msg = f"{path} is not valid JSON: {exc}"
            raise CliError(msg) from exc
        if not isinstance(data, list):
            msg = f"{path} must hold a JSON list of items"
            raise CliError(msg)
        return data
    return text.splitlines()


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain

    func = _load_function(args.target)
    items: Sequence[Any] = range(args.items) if args.items is not None else _load_data(args.data)
    try:
        report = explain(func, items, run=args.run)
    except CliError:
        raise
    except Exception as exc:
        msg = f"{args.target} failed while being measured: {type(exc).__name__}: {exc}"
        raise CliError(msg) from exc
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report)
    if args.plot:
        try:
            path = report.plot(args.plot)
        except ImportError as exc:
            raise CliError(str(exc)) from exc
        print(f"plot written to {path}", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for documentation tools and tests)."""
    parser = argparse.ArgumentParser(prog="autopar", description="Inspect autopar's plan cache and decisions.")
    parser.add_argument("--version", action="version", version=f"autopar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cache = commands.add_parser("cache", help="inspect or manage the plan cache")
    cache_cmds = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    info = cache_cmds.add_parser("info", help="location, size, number of plans, format version")
    info.set_defaults(handler=_cache_info)
    listing = cache_cmds.add_parser("list", help="one line per stored plan")
    listing.add_argument("--json", action="store_true", help="print JSON for machines")
    listing.set_defaults(handler=_cache_list)
    clear = cache_cmds.add_parser("clear", help="remove stored plans (and databases set aside as unreadable)")
    clear.add_argument(
        "--function", metavar="FUNCTION", help="only this function's plans (module.function or module:function)"
    )
    clear.set_defaults(handler=_cache_clear)
    prune = cache_cmds.add_parser("prune", help="remove plans older than a TTL, and unreadable rows")
    prune.add_argument("--ttl", type=_non_negative_float, metavar="SECONDS", help="default: 7 days")
    prune.set_defaults(handler=_cache_prune)

    exp = commands.add_parser("explain", help="measure a function and explain the decision")
    exp.add_argument(
        "target",
        metavar="FUNCTION",
        help="module:function, module.function or file.py:function, e.g. mypkg.scoring:score",
    )
    source = exp.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", type=_positive_int, metavar="N", help="use range(N) as the input")
    source.add_argument("--data", metavar="FILE", help="a JSON list (.json) or a text file, one item per line")
    exp.add_argument("--run", action="store_true", help="also run the workload at each worker count")
    exp.add_argument("--plot", metavar="PNG", help="draw predicted (and measured) speedup to this file")
    exp.add_argument("--json", action="store_true", help="print the report as JSON")
    exp.set_defaults(handler=_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except CliError as exc:
        print(f"autopar: error: {exc}", file=sys.stderr)
        return 1
