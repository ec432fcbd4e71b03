"""The plan store for the command line: read-only inspection, and clearing that says what failed.

Nothing here runs diskcache on a database it has not checked; every failure raises
:class:`~autopar.store_sqlite.StoreError`, so ``autopar cache ...`` can say what it
could not do and exit 1.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .store_sqlite import (
    ADMIN_TIMEOUT_S,
    DB_NAME,
    SET_ASIDE,
    StoreError,
    connect_readonly,
    database_problem,
    directory_problem,
    is_corruption,
    open_cache,
)

if TYPE_CHECKING:
    pass  # imported where used: ``import autopar`` stays without it

__all__ = ["StoreError", "StoreSummary", "clear_directory", "inspect_store", "read_rows"]


@dataclasses.dataclass(frozen=True)
class StoreSummary:
    """What ``autopar cache info`` shows: nothing in it came from running diskcache."""

    directory: Path
    exists: bool
    size_bytes: int
    #: live rows per key kind, e.g. ``{"plan": 3, "costs": 1, "hint": 2}``
    counts: dict[str, int]
    #: databases set aside as corrupt by earlier runs
    set_aside: tuple[Path, ...]


def _unwritable(directory: Path) -> str | None:
    """Why autopar could not keep plans here although it may read them."""
    return None if os.access(directory, os.W_OK | os.X_OK) else f"{directory} is not writable by this user"


def _usable_db(directory: Path) -> Path | None:
    """``cache.db`` checked read-only, None when there is none yet; raises StoreError."""
    import sqlite3

    try:
        if not os.path.lexists(directory):
            return None
        problem = directory_problem(directory) or _unwritable(directory)
        if problem is not None:
            msg = f"{problem}: autopar does not use it"
            raise StoreError(msg)
        db = directory / DB_NAME
        problem = database_problem(db, ADMIN_TIMEOUT_S)
    except sqlite3.DatabaseError as exc:
        what = "corrupt" if is_corruption(exc) else "unreadable"
        msg = f"{directory / DB_NAME} is {what} ({exc})"
        raise StoreError(msg) from exc
    except OSError as exc:
        msg = f"cannot read {directory}: {exc}"
        raise StoreError(msg) from exc
    if problem is not None:
        msg = f"{db} was altered ({problem}): autopar does not use it"
        raise StoreError(msg)
    return db if db.exists() and db.stat().st_size > 0 else None


def _query(db: Path, sql: str, params: tuple[Any, ...]) -> list[Any]:
    import sqlite3

    try:
        con = connect_readonly(db, ADMIN_TIMEOUT_S)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        msg = f"cannot read {db}: {exc}"
        raise StoreError(msg) from exc


_LIVE_TEXT_ROWS = "FROM Cache WHERE raw = 1 AND typeof(key) = 'text' AND (expire_time IS NULL OR expire_time > ?)"


def inspect_store(directory: Path) -> StoreSummary:
    """Count the store's live rows without changing anything; raises :class:`StoreError`."""
    db = _usable_db(directory)
    counts: dict[str, int] = {}
    if db is not None:
        kind = "substr(key, 1, instr(key, ':') - 1)"
        rows = _query(db, f"SELECT {kind}, COUNT(*) {_LIVE_TEXT_ROWS} GROUP BY 1", (time.time(),))
        counts = {str(k): int(n) for k, n in rows}
    try:
        files = [p for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []
        size = sum(p.stat().st_size for p in files)
    except OSError as exc:
        msg = f"cannot read {directory}: {exc}"
        raise StoreError(msg) from exc
    set_aside = tuple(sorted(p for p in files if p.parent == directory and p.match(SET_ASIDE)))
    return StoreSummary(directory, os.path.lexists(directory), size, counts, set_aside)


def read_rows(directory: Path, prefix: str) -> list[tuple[str, str]]:
    """Live text rows whose key starts with ``prefix``, read-only; raises :class:`StoreError`."""
    db = _usable_db(directory)
    if db is None:
        return []
    rows = _query(
        db,
        f"SELECT key, value {_LIVE_TEXT_ROWS} AND mode = 1 AND typeof(value) = 'text'"
        " AND substr(key, 1, ?) = ? ORDER BY key",
        (time.time(), len(prefix), prefix),
    )
    return [(str(k), str(v)) for k, v in rows]


def clear_directory(directory: Path, *, tag: str | None = None) -> tuple[int, list[str]]:
    """Remove every row (or ``tag``'s), for ``autopar cache clear``; raises :class:`StoreError`.

    Clearing everything also removes databases set aside as corrupt, and a database
    autopar refuses (corrupt or altered) as a whole, without running SQL against
    it. Returns the rows removed and the names of the files removed.
    """
    import sqlite3

    import diskcache

    files: list[str] = []
    db = directory / DB_NAME
    try:
        if not os.path.lexists(directory):
            return 0, files
        problem = directory_problem(directory)
        if problem is not None:
            msg = f"{problem}: autopar leaves it alone"
            raise StoreError(msg)
        if _unwritable(directory):
            msg = f"{directory} is not writable by this user"
            raise StoreError(msg)
        if tag is None:
            for path in sorted(directory.glob(SET_ASIDE)):
                path.unlink()
                files.append(path.name)
        try:
            problem = database_problem(db, ADMIN_TIMEOUT_S)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            problem = f"corrupt: {exc}"
        if problem is not None:
            if tag is not None:
                msg = f"{db} is unusable ({problem}); `autopar cache clear` removes it"
                raise StoreError(msg)
            for path in (db, db.with_name(DB_NAME + "-wal"), db.with_name(DB_NAME + "-shm")):
                path.unlink(missing_ok=True)
            files.append(f"{db.name} ({problem})")
            return 0, files
        if not db.exists():
            return 0, files
        cache = open_cache(directory, ADMIN_TIMEOUT_S)
        try:
            return int(cache.clear() if tag is None else cache.evict(tag)), files
        finally:
            cache.close()
    except diskcache.Timeout as exc:
        msg = f"{db} is locked by another process"
        raise StoreError(msg) from exc
    except (OSError, sqlite3.Error) as exc:
        msg = f"cannot clear {directory}: {type(exc).__name__}: {exc}"
        raise StoreError(msg) from exc

