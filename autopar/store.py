"""The plan store: JSON text in a diskcache (SQLite) directory, never pickle.

This is the only module that imports diskcache. The disk is untrusted input:

* :class:`_TextOnlyDisk` stores only ``str`` keys and values as raw SQLite text and
  refuses to read any row in another mode, so a row tampered to "pickle" mode is
  never unpickled; it never removes a file outside the cache directory.
* The directory is created 0700 and the database 0600; a directory that is a
  symlink, owned by someone else, or writable by group or others is refused.
* Before diskcache touches a database, its schema and Settings table are read
  (read-only) and refused when they hold anything diskcache and autopar did not
  write: a foreign trigger would run inside our own writes.
* SQLite stops any statement that runs past :data:`STATEMENT_DEADLINE_S`.
* Opening runs in a helper thread with a deadline, because diskcache's
  constructor retries a locked database for up to 60 s whatever timeout is given.

Any failure makes the store warn once (:class:`~autopar.errors.CacheWarning`) and
carry on in memory, so ``.map`` never breaks because of its cache. The command
line's functions at the end (:func:`inspect_store`, :func:`read_rows`,
:func:`clear_directory`) raise :class:`StoreError` instead, so it can say what it
could not do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CacheWarning

if TYPE_CHECKING:
    import sqlite3  # imported where used: ``import autopar`` stays without it

__all__ = [
    "PlanStore",
    "StoreError",
    "StoreSummary",
    "clear_directory",
    "get_cache_dir",
    "get_store",
    "inspect_store",
    "read_rows",
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
_DB_NAME = "cache.db"
_SET_ASIDE = f"{_DB_NAME}.corrupt-*"
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


def get_cache_dir() -> Path:
    """Where plans are stored: ``$AUTOPAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/autopar``
    (absolute values only, as the XDG spec says), else ``~/.cache/autopar``.

    Raises ``RuntimeError`` when the home directory cannot be found (no ``HOME``
    and no passwd entry); ``.map`` then plans in memory.

    >>> get_cache_dir().name
    'autopar-cache'
    """
    found = _find_cache_dir()
    if isinstance(found, str):
        raise RuntimeError(found)
    return found


def _find_cache_dir() -> Path | str:
    """The cache directory, or why there is none (memoised per environment)."""
    env = os.environ
    inputs = (env.get("AUTOPAR_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))
    found = _dir_memo.get(inputs)
    if found is None:
        override, xdg, _ = inputs
        try:
            if override:
                found = Path(override).expanduser().absolute()
            elif xdg and os.path.isabs(xdg):
                found = Path(xdg) / "autopar"
            else:
                found = Path.home() / ".cache" / "autopar"
        except RuntimeError:  # pathlib: "Could not determine home directory."
            found = "no home directory (HOME is unset and this user has no passwd entry); set AUTOPAR_CACHE_DIR"
        _dir_memo[inputs] = found
    return found


# Building a Path costs ~10 us; .map asks for the directory on every call.
_dir_memo: dict[tuple[str | None, str | None, str | None], Path | str] = {}


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


def _open_cache(directory: Path, timeout: float) -> Any:
    """diskcache on ``directory`` with autopar's Disk, settings and statement deadlines."""
    return _cache_class()(str(directory), timeout=timeout, disk=_disk_class(), **_SETTINGS)


def _was_interrupted(exc: BaseException | None) -> bool:
    """True when a statement was stopped at its deadline (diskcache's ROLLBACK may fail after)."""
    import sqlite3

    while exc is not None:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return True
        exc = exc.__context__
    return False


def _is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "not a database"/"malformed" errors (not locks or permissions)."""
    import sqlite3

    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


#: Settings autopar opens the cache with; diskcache stores them in its Settings
#: table and re-applies that table on every open.
_SETTINGS = {"statistics": 0, "tag_index": 0, "eviction_policy": "least-recently-stored"}


def _connect_readonly(db: Path, deadline_s: float) -> sqlite3.Connection:
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


def _database_problem(db: Path, deadline_s: float = STATEMENT_DEADLINE_S) -> str | None:
    """Read the schema and Settings (read-only) and say what in them autopar would not use.

    Raises ``sqlite3.DatabaseError`` for a file that is not a readable database.
    """
    if not db.exists() or db.stat().st_size == 0:
        return None
    con = _connect_readonly(db, deadline_s)
    try:
        objects = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        problem = _schema_problem(objects)
        if problem is None and ("table", "Settings", "Settings") in {row[:3] for row in objects}:
            problem = _settings_problem(con.execute("SELECT key, value FROM Settings").fetchall())
    finally:
        con.close()
    return problem


def _directory_problem(directory: Path) -> str | None:
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


def _check_directory(directory: Path) -> str | None:
    """Create the directory 0700, or say why an existing one is unsafe to use."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        return _directory_problem(directory)
    except OSError as exc:
        return f"cannot create {directory}: {exc}"


class PlanStore:
    """Text values under string keys, on disk when possible, else in memory.

    All methods are thread-safe and never raise for a storage problem: a failed
    read is a miss, a failed write is skipped, and the first failure warns once.
    ``problem`` names a reason known before opening (no home directory): such a
    store never touches the disk.
    """

    def __init__(self, directory: Path, *, problem: str | None = None) -> None:
        self.directory = directory
        self._problem = problem
        self._lock = threading.Lock()
        self._cache: Any = None
        self._memory: dict[str, tuple[str, str | None, float | None]] = {}
        self._opener: threading.Thread | None = None
        self._open_result: list[Any] = []
        self._failed = False
        self._warned = False
        self._waited = False

    # -- opening ---------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        """True while plans go to disk, False once the store fell back to memory."""
        return self._backend() is not None

    def wait_open(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` s for the database to open; True when on disk.

        ``.map`` never waits past :data:`OPEN_DEADLINE_S`; maintenance calls
        (clearing, pruning) wait, or they would act on the memory kept meanwhile.
        """
        opener = self._opener if self._backend() is None else None
        if opener is not None:
            opener.join(timeout)
        return self.persistent

    def _fail(self, problem: str) -> None:
        logger.debug("autopar: plan store problem: %s", problem)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"autopar plan cache at {self.directory} unusable ({problem}); planning in memory for this process",
                CacheWarning,
                stacklevel=4,
            )

    def _open_in_thread(self) -> None:
        try:
            db = self.directory / _DB_NAME
            if not db.exists():
                fd = os.open(db, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
                os.close(fd)
            problem = _database_problem(db)
            if problem is not None:
                raise UnsafeStoreError(problem)
            self._open_result.append(_open_cache(self.directory, STORE_TIMEOUT_S))
        except BaseException as exc:  # noqa: BLE001 - reported through _fail
            self._open_result.append(exc)

    def _set_aside_corrupt(self) -> bool:
        """Rename an unreadable database so a fresh one can be made; True if done."""
        db = self.directory / _DB_NAME
        try:
            if not db.exists():
                return False
            target = db.with_name(f"{_DB_NAME}.corrupt-{int(time.time())}")
            os.replace(db, target)
            for suffix in ("-wal", "-shm"):
                side = db.with_name(_DB_NAME + suffix)
                if side.exists():
                    os.replace(side, target.with_name(target.name + suffix))
        except OSError:
            return False
        logger.debug("autopar: set aside corrupt plan cache as %s", target)
        return True

    def _backend(self) -> Any:
        """The open diskcache.Cache, opening it on first use; None when unusable."""
        if self._cache is not None:
            return self._cache
        if self._failed:
            return None
        with self._lock:
            for attempt in range(2):
                if self._cache is not None or self._failed:
                    return self._cache
                if self._opener is None:
                    problem = self._problem or _check_directory(self.directory)
                    if problem is not None:
                        self._failed = True
                        self._fail(problem)
                        return None
                    self._opener = threading.Thread(target=self._open_in_thread, name="autopar-store-open", daemon=True)
                    self._opener.start()
                # Wait for the open once; later calls only look whether it finished.
                self._opener.join(0.0 if self._waited else OPEN_DEADLINE_S)
                self._waited = True
                if not self._open_result:
                    # Slow (a loaded machine) or locked: not broken. Plan in memory until the
                    # open finishes; if it fails (diskcache gives up on a lock after 60 s), that warns.
                    logger.debug("autopar: plan store still opening; planning in memory meanwhile")
                    return None
                result = self._open_result[0]
                if not isinstance(result, BaseException):
                    self._adopt_memory(result)
                    self._cache = result
                    return result
                if attempt == 0 and _is_corruption(result):
                    # "file is not a database" / "malformed": set it aside, make a new one.
                    self._fail(f"corrupt database set aside: {result}")
                    if self._set_aside_corrupt():
                        self._open_result.clear()
                        self._opener = None
                        self._waited = False  # the fresh database gets its own deadline
                        continue
                self._failed = True
                self._fail(f"{type(result).__name__}: {result}")
                return None
            return None

    def _adopt_memory(self, cache: Any) -> None:
        """Write what was stored in memory while the database was opening.

        Otherwise those rows would be hidden once reads go to disk, and lost at exit.
        """
        now = time.time()
        for key, (text, tag, deadline) in list(self._memory.items()):
            if deadline is None or deadline > now:
                try:
                    cache.set(key, text, tag=tag, expire=None if deadline is None else deadline - now)
                except Exception:  # noqa: BLE001 - left in memory; the next operation reports a real failure
                    return
            self._memory.pop(key, None)

    def _broken(self, exc: BaseException) -> None:
        """A read or write failed: a lock timeout is a miss, anything else ends disk use."""
        import diskcache

        if isinstance(exc, diskcache.Timeout):
            self._fail("the database is locked by another process")
            return
        if _was_interrupted(exc):
            self._fail(f"a statement ran past {STATEMENT_DEADLINE_S:g} s and was stopped")
        else:
            self._fail(f"{type(exc).__name__}: {exc}")
        self._failed = True
        cache, self._cache = self._cache, None
        if cache is not None:
            with contextlib.suppress(Exception):  # already failing; closing is best effort
                cache.close()

    # -- the interface -----------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """The text stored under ``key``, or None (missing, expired or unreadable)."""
        cache = self._backend()
        if cache is None:
            entry = self._memory.get(key)
            if entry is None:
                return None
            if entry[2] is not None and entry[2] < time.time():
                self._memory.pop(key, None)
                return None
            return entry[0]
        try:
            value = cache.get(key)
        except UnsafeRowError as exc:
            logger.debug("autopar: ignoring unsafe row %r: %s", key, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - sqlite3/OSError/Timeout: go on without
            self._broken(exc)
            return None
        return value if isinstance(value, str) else None

    def set(self, key: str, text: str, *, tag: str | None = None, expire: float | None = None) -> None:
        """Store ``text`` under ``key`` (best effort)."""
        cache = self._backend()
        if cache is None:
            deadline = None if expire is None else time.time() + expire
            self._memory[key] = (text, tag, deadline)
            return
        try:
            cache.set(key, text, expire=expire, tag=tag)
        except Exception as exc:  # noqa: BLE001
            self._broken(exc)
            self._memory[key] = (text, tag, None if expire is None else time.time() + expire)

    def delete(self, key: str) -> bool:
        """Remove one key; True if it was there."""
        found = self._memory.pop(key, None) is not None
        cache = self._backend()
        if cache is not None:
            try:
                found = bool(cache.delete(key)) or found
            except Exception as exc:  # noqa: BLE001
                self._broken(exc)
        return found

    def list_keys(self) -> list[str]:
        """Every readable key (a snapshot). Reads the whole store: prefer :meth:`count`."""
        found = list(self._memory)
        cache = self._backend()
        if cache is not None:
            try:
                found.extend(k for k in cache.iterkeys() if isinstance(k, str) and not k.startswith("\x00"))
            except Exception as exc:  # noqa: BLE001
                self._broken(exc)
        return list(dict.fromkeys(found))

    def count(self, tag: str, prefix: str = "") -> int:
        """Live rows stored with ``tag`` whose key starts with ``prefix``.

        One query on the tag index, so a function's plan count costs the same
        whatever else the store holds (scanning every key took seconds at 100k rows).
        """
        now = time.time()
        held = [
            key
            for key, (_, row_tag, deadline) in list(self._memory.items())
            if row_tag == tag and key.startswith(prefix) and (deadline is None or deadline >= now)
        ]
        cache = self._backend()
        if cache is None:
            return len(held)
        try:
            return int(cache.count_tagged(tag, prefix, now)) + sum(1 for key in held if key not in cache)
        except Exception as exc:  # noqa: BLE001
            self._broken(exc)
            return len(held)

    def forget(self, tag: str) -> int:
        """Remove every row stored with ``tag`` (found through the tag index); the number removed."""
        import diskcache

        removed = 0
        for key, entry in list(self._memory.items()):
            if entry[1] == tag and self._memory.pop(key, None) is not None:
                removed += 1
        cache = self._backend()
        if cache is not None:
            try:
                removed += int(cache.evict(tag))
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, diskcache.Timeout) and exc.args:
                    removed += int(exc.args[0])  # the rows removed before the lock was lost
                self._broken(exc)
        return removed

    def evict(self, tag: str) -> int:
        """The same as :meth:`forget` (the name callers used before)."""
        return self.forget(tag)

    def clear(self) -> int:
        """Remove everything; the number of entries removed."""
        removed = len(self._memory)
        self._memory.clear()
        cache = self._backend()
        if cache is not None:
            try:
                removed += int(cache.clear())
            except Exception as exc:  # noqa: BLE001
                self._broken(exc)
        return removed

    def close(self) -> None:
        """Close the database connection (it reopens on next use)."""
        cache = self._cache
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()


_stores: dict[Path | str, PlanStore] = {}
_stores_lock = threading.Lock()
#: What the warning calls the store when there is no home directory to put it in.
_NO_HOME = Path("~") / ".cache" / "autopar"


def get_store(directory: Path | None = None) -> PlanStore:
    """The process-wide store for ``directory`` (default :func:`get_cache_dir`).

    With no directory to be found, a store that stays in memory (and warns once).
    """
    path: Path | str = directory if directory is not None else _find_cache_dir()
    store = _stores.get(path)
    if store is None:
        with _stores_lock:
            store = _stores.get(path)
            if store is None:
                store = PlanStore(_NO_HOME, problem=path) if isinstance(path, str) else PlanStore(path)
                _stores[path] = store
    return store


def _reset_after_fork() -> None:
    global _stores_lock
    _stores_lock = threading.Lock()
    for store in _stores.values():
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# -- for the command line: read-only inspection, and clearing that says what failed ---


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
        problem = _directory_problem(directory) or _unwritable(directory)
        if problem is not None:
            msg = f"{problem}: autopar does not use it"
            raise StoreError(msg)
        db = directory / _DB_NAME
        problem = _database_problem(db, ADMIN_TIMEOUT_S)
    except sqlite3.DatabaseError as exc:
        what = "corrupt" if _is_corruption(exc) else "unreadable"
        msg = f"{directory / _DB_NAME} is {what} ({exc})"
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
        con = _connect_readonly(db, ADMIN_TIMEOUT_S)
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
    set_aside = tuple(sorted(p for p in files if p.parent == directory and p.match(_SET_ASIDE)))
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
    db = directory / _DB_NAME
    try:
        if not os.path.lexists(directory):
            return 0, files
        problem = _directory_problem(directory)
        if problem is not None:
            msg = f"{problem}: autopar leaves it alone"
            raise StoreError(msg)
        if _unwritable(directory):
            msg = f"{directory} is not writable by this user"
            raise StoreError(msg)
        if tag is None:
            for path in sorted(directory.glob(_SET_ASIDE)):
                path.unlink()
                files.append(path.name)
        try:
            problem = _database_problem(db, ADMIN_TIMEOUT_S)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            problem = f"corrupt: {exc}"
        if problem is not None:
            if tag is not None:
                msg = f"{db} is unusable ({problem}); `autopar cache clear` removes it"
                raise StoreError(msg)
            for path in (db, db.with_name(_DB_NAME + "-wal"), db.with_name(_DB_NAME + "-shm")):
                path.unlink(missing_ok=True)
            files.append(f"{db.name} ({problem})")
            return 0, files
        if not db.exists():
            return 0, files
        cache = _open_cache(directory, ADMIN_TIMEOUT_S)
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
