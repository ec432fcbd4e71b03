"""The ``autopar`` command line: inspect and manage the plan cache, explain decisions.

::

    autopar cache info                  where the cache is, its size, its plans
    autopar cache list [--json]         one line per stored plan
    autopar cache clear [--function NAME]
    autopar cache prune [--ttl SECONDS]
    autopar explain MODULE:FUNCTION (--items N | --data FILE) [--run] [--plot PNG] [--json]

Exit codes: 0 success, 1 a failure while running (import error, unreadable data,
the function raised), 2 a usage error (argparse's convention). Errors go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
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
    from .store import get_store
    from .system import usable_cpus

    store, now, cpus = get_store(), time.time(), usable_cpus()
    rows = []
    for key in sorted(store.list_keys()):
        if not key.startswith("plan:"):
            continue
        record = read_plan_record(store.get(key), usable_cpus=cpus, max_workers=None)
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


def _cache_info(args: argparse.Namespace) -> int:
    from .store import get_cache_dir, get_store

    directory = get_cache_dir()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
    keys = get_store().list_keys()
    print(f"location:       {directory}")
    print(f"size on disk:   {size:,} bytes")
    print(f"plans:          {sum(1 for k in keys if k.startswith('plan:'))}")
    print(f"measured costs: {sum(1 for k in keys if k.startswith('costs:'))}")
    print(f"format version: {CACHE_FORMAT} (autopar {__version__})")
    return 0


def _cache_list(args: argparse.Namespace) -> int:
    rows = _plans()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no plans stored")
        return 0
    for r in rows:
        plan = "serial" if r["executor"] == "serial" else f"{r['n_jobs']} workers x {r['chunksize']}"
        print(
            f"{r['function']}  size {r['size_bucket']} time t{r['time_bucket']}  {plan}  "
            f"age {_age(r['age_s'])}  {r['reason']}"
        )
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    from .api import clear_cache
    from .planner import plan_prefix
    from .store import get_store

    if args.function is None:
        removed = clear_cache()
    else:
        store = get_store()
        removed = store.evict(args.function)
        for key in store.list_keys():
            if key.startswith((plan_prefix(args.function), "hint:" + plan_prefix(args.function))):
                removed += store.delete(key)
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    from .api import prune_expired_cache

    removed = prune_expired_cache(args.ttl)
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
    return 0


def _load_function(spec: str) -> Callable[[Any], Any]:
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        msg = f"expected MODULE:FUNCTION, got {spec!r}"
        raise CliError(msg)
    if os.getcwd() not in sys.path:  # like `python -m`: modules in the current directory
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        msg = f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        raise CliError(msg) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            msg = f"{module_name!r} has no attribute {qualname!r}"
            raise CliError(msg) from None
    if not callable(obj):
        msg = f"{spec} is not callable"
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
    clear = cache_cmds.add_parser("clear", help="remove stored plans")
    clear.add_argument("--function", metavar="NAME", help="only this function's plans (module.qualname)")
    clear.set_defaults(handler=_cache_clear)
    prune = cache_cmds.add_parser("prune", help="remove plans older than a TTL, and unreadable rows")
    prune.add_argument("--ttl", type=_non_negative_float, metavar="SECONDS", help="default: 7 days")
    prune.set_defaults(handler=_cache_prune)

    exp = commands.add_parser("explain", help="measure a function and explain the decision")
    exp.add_argument("target", metavar="MODULE:FUNCTION", help="e.g. mypkg.scoring:score")
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
