"""diskcache made safe for untrusted files: the only module that imports diskcache.

* :class:`_TextOnlyDisk` stores only ``str`` keys and values as raw SQLite text and
  refuses to read any row in another mode, so a row tampered to "pickle" mode is
  never unpickled; it never removes a file outside the cache directory.
* Before diskcache touches a database, its schema and Settings table are read
  (read-only) and refused when they hold anything diskcache and autopar did not
  write: a foreign trigger would run inside our own writes.
* SQLite stops any statement that runs past :data:`STATEMENT_DEADLINE_S`.
* A directory that is a symlink, owned by someone else, or writable by group or
  others is refused.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3  # imported where used: ``import autopar`` stays without it

__all__ = [
    "ADMIN_TIMEOUT_S",
    "DB_NAME",
    "OPEN_DEADLINE_S",
    "SET_ASIDE",
    "STATEMENT_DEADLINE_S",
    "STORE_TIMEOUT_S",
    "StoreError",
    "UnsafeRowError",
    "UnsafeStoreError",
    "check_directory",
    "connect_readonly",
    "database_problem",
    "directory_problem",
    "is_corruption",
    "open_cache",
    "was_interrupted",
]

logger = logging.getLogger("autopar")

#: SQLite busy timeout for reads and writes after opening. A plan lookup is on the
#: hot path of every ``.map``; when another process holds the write lock for long,
#: planning afresh is cheaper than waiting.
STORE_TIMEOUT_S = 0.05
#: How long ``.map`` waits for the store to open before going on without it. A
#: fresh database opens in a few ms; past this, the open finishes in the background.
OPEN_DEADLINE_S = 0.08
#: The longest one SQL statement may run before SQLite is told to stop it. Our
#: statements touch a handful of rows (ms even on a loaded machine); only something
#: planted in the database, such as a trigger running an endless recursive query,
#: runs longer, and it must not hang ``.map``.
STATEMENT_DEADLINE_S = 2.0
#: Building the tag index over an existing store reads every row once (~0.1 s at
#: 100k rows). It is built on first need by ``count``/``forget``, never by ``.map``;
#: a store too big to index in this time is queried without it.
INDEX_DEADLINE_S = 10.0
#: SQLite calls the deadline check every this many virtual-machine steps: roughly
#: every 0.1 ms of work, too rare to cost anything measurable.
_PROGRESS_STEPS = 10_000
#: The command line waits this long for a lock another process holds.
ADMIN_TIMEOUT_S = 5.0
DB_NAME = "cache.db"
SET_ASIDE = f"{DB_NAME}.corrupt-*"
#: autopar's index on (tag, rowid), so one function's rows are found without a scan.
#: Not diskcache's own ``Cache_tag_rowid``: that one is tied to the ``tag_index``
#: setting, which diskcache drops on every open by a store (such as autopar 0.1.0's)
#: opened with ``tag_index=0``.
_TAG_INDEX = "autopar_tag_rowid"

#: Every object diskcache 5 creates in ``cache.db``, as ``sqlite_master`` keeps it
#: (type, name) -> (table, SQL with whitespace collapsed); plus autopar's tag index.
#: A store holding anything else (a trigger, view, table or index) was altered.
_SCHEMA: dict[tuple[str, str], tuple[str, str | None]] = {
    ("table", "Settings"): ("Settings", "CREATE TABLE Settings ( key TEXT NOT NULL UNIQUE, value)"),
    ("index", "sqlite_autoindex_Settings_1"): ("Settings", None),
    ("table", "Cache"): (
        "Cache",
        "CREATE TABLE Cache ( rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, store_time REAL,"
        " expire_time REAL, access_time REAL, access_count INTEGER DEFAULT 0, tag BLOB, size INTEGER DEFAULT 0,"
        " mode INTEGER DEFAULT 0, filename TEXT, value BLOB)",
    ),
    ("index", "Cache_key_raw"): ("Cache", "CREATE UNIQUE INDEX Cache_key_raw ON Cache(key, raw)"),
    ("index", "Cache_expire_time"): ("Cache", "CREATE INDEX Cache_expire_time ON Cache (expire_time)"),
    ("index", "Cache_store_time"): ("Cache", "CREATE INDEX Cache_store_time ON Cache (store_time)"),
    ("index", "Cache_tag_rowid"): ("Cache", "CREATE INDEX Cache_tag_rowid ON Cache(tag, rowid)"),
    ("index", _TAG_INDEX): ("Cache", f"CREATE INDEX {_TAG_INDEX} ON Cache(tag, rowid)"),
    ("trigger", "Settings_count_insert"): (
        "Cache",
        "CREATE TRIGGER Settings_count_insert AFTER INSERT ON Cache FOR EACH ROW BEGIN"
        ' UPDATE Settings SET value = value + 1 WHERE key = "count"; END',
    ),
    ("trigger", "Settings_count_delete"): (
        "Cache",
        "CREATE TRIGGER Settings_count_delete AFTER DELETE ON Cache FOR EACH ROW BEGIN"
        ' UPDATE Settings SET value = value - 1 WHERE key = "count"; END',
    ),
    ("trigger", "Settings_size_insert"): (
        "Cache",
        "CREATE TRIGGER Settings_size_insert AFTER INSERT ON Cache FOR EACH ROW BEGIN"
        ' UPDATE Settings SET value = value + NEW.size WHERE key = "size"; END',
    ),
    ("trigger", "Settings_size_update"): (
        "Cache",
        "CREATE TRIGGER Settings_size_update AFTER UPDATE ON Cache FOR EACH ROW BEGIN"
        ' UPDATE Settings SET value = value + NEW.size - OLD.size WHERE key = "size"; END',
    ),
    ("trigger", "Settings_size_delete"): (
        "Cache",
        "CREATE TRIGGER Settings_size_delete AFTER DELETE ON Cache FOR EACH ROW BEGIN"
        ' UPDATE Settings SET value = value - OLD.size WHERE key = "size"; END',
    ),
}


class UnsafeRowError(ValueError):
    """A row in the store is not plain text: tampered, or written by something else."""


class UnsafeStoreError(ValueError):
    """The store holds settings or schema objects that neither diskcache nor autopar wrote."""


class StoreError(Exception):
    """The command line could not read or change the store as asked (it says so and exits 1)."""


def _disk_class() -> Any:
    import diskcache

    class _TextOnlyDisk(diskcache.Disk):  # type: ignore[misc]
        """A diskcache Disk that keeps str keys and values in SQLite and nothing else."""

        _frozen = False

        def __init__(self, directory: str, **_settings: Any) -> None:
            # Settings rows (disk_*) come from the database: ignore them all.
            super().__init__(directory)
            self._root = os.path.realpath(directory)
            self._frozen = True

        def __setattr__(self, name: str, value: Any) -> None:
            # diskcache applies stored "disk_*" settings with setattr; a tampered row
            # must not redirect our directory or switch storage modes.
            if self._frozen:
                return
            object.__setattr__(self, name, value)

        def put(self, key: Any) -> tuple[Any, bool]:
            if type(key) is not str:
                msg = f"autopar stores only str keys, got {type(key).__name__}"
                raise TypeError(msg)
            return key, True

        def get(self, key: Any, raw: bool) -> Any:
            if raw and type(key) is str:
                return key
            return "\x00unreadable-key"  # never unpickle a key; matches no prefix

        def store(self, value: Any, read: bool, key: Any = None) -> tuple[int, int, None, str]:
            if type(value) is not str or read:
                msg = "autopar stores only str values"
                raise TypeError(msg)
            return 0, diskcache.core.MODE_RAW, None, value

        def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> str:
            if mode == diskcache.core.MODE_RAW and type(value) is str and not read:
                return value
            msg = f"refusing a stored row in mode {mode!r}: autopar writes only text"
            raise UnsafeRowError(msg)

        def remove(self, file_path: Any) -> None:
            # Our rows never reference files; a row that does was forged. Remove
            # nothing, and certainly nothing outside the directory.
            logger.debug("autopar: ignored a request to remove %r", file_path)

    return _TextOnlyDisk


def _past_deadline(local: threading.local) -> bool:
    """SQLite's progress handler: True stops the running statement ("interrupted")."""
    return time.monotonic() > local.deadline  # type: ignore[no-any-return]


@functools.cache
def _cache_class() -> Any:
    import sqlite3

    import diskcache

    class _GuardedCache(diskcache.Cache):  # type: ignore[misc]
        """A diskcache.Cache whose statements SQLite stops after :data:`STATEMENT_DEADLINE_S`."""

        @property
        def _con(self) -> sqlite3.Connection:
            # diskcache makes one connection per thread (and per process after a fork).
            con: sqlite3.Connection = diskcache.Cache._con.fget(self)
            local = self._local
            if getattr(local, "guarded", None) is not con:
                local.deadline = time.monotonic() + STATEMENT_DEADLINE_S
                con.set_progress_handler(functools.partial(_past_deadline, local), _PROGRESS_STEPS)
                local.guarded = con
            return con

        @property
        def _sql(self) -> Any:
            # Every statement diskcache runs goes through here: each gets its own deadline.
            execute = self._con.execute
            local = self._local

            def timed(*args: Any) -> sqlite3.Cursor:
                local.deadline = time.monotonic() + STATEMENT_DEADLINE_S
                return execute(*args)

            return timed

        _tag_indexed = False

        def ensure_tag_index(self) -> None:
            """Create autopar's (tag, rowid) index once, when first needed (not on ``.map``'s path).

            A store that is locked or too big to index in time is queried without it.
            """
            if self._tag_indexed:
                return
            con = self._con
            self._local.deadline = time.monotonic() + INDEX_DEADLINE_S
            try:  # a no-op, taking no lock, once the index exists
                con.execute(f"CREATE INDEX IF NOT EXISTS {_TAG_INDEX} ON Cache(tag, rowid)")
                self._tag_indexed = True
            except sqlite3.OperationalError as exc:  # locked or interrupted: the next call retries
                logger.debug("autopar: tag index not built yet: %s", exc)

        def evict(self, tag: str, retry: bool = False) -> int:
            self.ensure_tag_index()
            return int(super().evict(tag, retry=retry))

        def count_tagged(self, tag: str, prefix: str, now: float) -> int:
            """Live text-keyed rows with ``tag`` whose key starts with ``prefix`` (one indexed query)."""
            self.ensure_tag_index()
            ((n,),) = self._sql(
                "SELECT COUNT(*) FROM Cache WHERE tag = ? AND raw = 1 AND typeof(key) = 'text'"
                " AND substr(key, 1, ?) = ? AND (expire_time IS NULL OR expire_time > ?)",
                (tag, len(prefix), prefix, now),
            ).fetchall()
            return int(n)

    return _GuardedCache


def open_cache(directory: Path, timeout: float) -> Any:
    """diskcache on ``directory`` with autopar's Disk, settings and statement deadlines."""
    return _cache_class()(str(directory), timeout=timeout, disk=_disk_class(), **_SETTINGS)


def was_interrupted(exc: BaseException | None) -> bool:
    """True when a statement was stopped at its deadline (diskcache's ROLLBACK may fail after)."""
    import sqlite3

    while exc is not None:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return True
        exc = exc.__context__
    return False


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "not a database"/"malformed" errors (not locks or permissions)."""
    import sqlite3

    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


#: Settings autopar opens the cache with; diskcache stores them in its Settings
#: table and re-applies that table on every open.
_SETTINGS = {"statistics": 0, "tag_index": 0, "eviction_policy": "least-recently-stored"}


def connect_readonly(db: Path, deadline_s: float) -> sqlite3.Connection:
    """A read-only connection whose statements stop after ``deadline_s`` in all."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=STORE_TIMEOUT_S)
    deadline = time.monotonic() + deadline_s
    con.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
    return con


def _schema_problem(objects: list[tuple[Any, ...]]) -> str | None:
    """Say which object in ``sqlite_master`` neither diskcache nor autopar created."""
    for kind, name, table, sql in objects:
        expected = _SCHEMA.get((kind, name))
        found = None if sql is None else " ".join(str(sql).replace("IF NOT EXISTS ", "").split())
        if expected is None or expected != (table, found):
            return f"a {kind} {name!r} on {table!r} that autopar did not create"
    return None


def _settings_problem(rows: list[tuple[Any, ...]]) -> str | None:
    """Say which Settings row autopar did not write.

    diskcache applies stored settings before any check of ours could run: a
    ``sqlite_*`` row becomes a PRAGMA and a ``disk_*`` row an attribute of the Disk.
    A table with unknown keys or values other than the ones autopar writes is
    refused, so nothing from it is applied.
    """
    import diskcache.core

    expected: dict[str, Any] = {**diskcache.core.DEFAULT_SETTINGS, **_SETTINGS}
    for key, value in rows:
        if key in diskcache.core.METADATA:
            if type(value) is not int:
                return f"tampered Settings row {key!r}"
        elif key not in expected or value != expected[key]:
            return f"unexpected Settings row {key!r} = {value!r}"
    return None


def database_problem(db: Path, deadline_s: float = STATEMENT_DEADLINE_S) -> str | None:
    """Read the schema and Settings (read-only) and say what in them autopar would not use.

    Raises ``sqlite3.DatabaseError`` for a file that is not a readable database.
    """
    if not db.exists() or db.stat().st_size == 0:
        return None
    con = connect_readonly(db, deadline_s)
    try:
        objects = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        problem = _schema_problem(objects)
        if problem is None and ("table", "Settings", "Settings") in {row[:3] for row in objects}:
            problem = _settings_problem(con.execute("SELECT key, value FROM Settings").fetchall())
    finally:
        con.close()
    return problem


def directory_problem(directory: Path) -> str | None:
    """Why an existing directory is unsafe to use (symlink, someone else's, writable by others)."""
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        return f"{directory} is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{directory} is owned by another user (uid {info.st_uid})"
    if info.st_mode & 0o022:
        return f"{directory} is writable by group or others (mode {oct(info.st_mode & 0o777)})"
    return None


def check_directory(directory: Path) -> str | None:
    """Create the directory 0700, or say why an existing one is unsafe to use."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory_problem(directory)
    except OSError as exc:
        return f"cannot create {directory}: {exc}"


