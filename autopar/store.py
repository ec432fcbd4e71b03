"""The plan store: JSON text in a diskcache (SQLite) directory, never pickle.

This is the only module that imports diskcache. The disk is untrusted input:

* :class:`_TextOnlyDisk` stores only ``str`` keys and values as raw SQLite text and
  refuses to read any row in another mode, so a row tampered to "pickle" mode is
  never unpickled; it never removes a file outside the cache directory.
* The directory is created 0700 and the database 0600; a directory that is a
  symlink, owned by someone else, or writable by group or others is refused.
* Opening runs in a helper thread with a deadline, because diskcache's
  constructor retries a locked database for up to 60 s whatever timeout is given.

Any failure makes the store warn once (:class:`~autopar.errors.CacheWarning`) and
carry on in memory, so ``.map`` never breaks because of its cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import CacheWarning

__all__ = ["PlanStore", "get_cache_dir", "get_store"]

logger = logging.getLogger("autopar")

#: SQLite busy timeout for reads and writes after opening. A plan lookup is on the
#: hot path of every ``.map``; when another process holds the write lock for long,
#: planning afresh is cheaper than waiting.
STORE_TIMEOUT_S = 0.05
#: How long ``.map`` waits for the store to open before going on without it. A
#: fresh database opens in a few ms; past this, the open finishes in the background.
OPEN_DEADLINE_S = 0.08
_DB_NAME = "cache.db"


def get_cache_dir() -> Path:
    """Where plans are stored: ``$AUTOPAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/autopar``
    (absolute values only, as the XDG spec says), else ``~/.cache/autopar``.

    >>> get_cache_dir().name
    'autopar-cache'
    """
    env = os.environ
    inputs = (env.get("AUTOPAR_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))
    found = _dir_memo.get(inputs)
    if found is None:
        override, xdg, _ = inputs
        if override:
            found = Path(override).expanduser().absolute()
        elif xdg and os.path.isabs(xdg):
            found = Path(xdg) / "autopar"
        else:
            found = Path.home() / ".cache" / "autopar"
        _dir_memo[inputs] = found
    return found


# Building a Path costs ~10 us; .map asks for the directory on every call.
_dir_memo: dict[tuple[str | None, str | None, str | None], Path] = {}


class UnsafeRowError(ValueError):
    """A row in the store is not plain text: tampered, or written by something else."""


class UnsafeStoreError(ValueError):
    """The store's Settings table holds rows autopar did not write."""


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


def _is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "not a database"/"malformed" errors (not locks or permissions)."""
    import sqlite3

    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


#: Settings autopar opens the cache with; diskcache stores them in its Settings
#: table and re-applies that table on every open.
_SETTINGS = {"statistics": 0, "tag_index": 0, "eviction_policy": "least-recently-stored"}


def _settings_problem(db: Path) -> str | None:
    """Read the Settings table (read-only) and say what in it was not written by us.

    diskcache applies stored settings before any check of ours could run: a
    ``sqlite_*`` row becomes a PRAGMA and a ``disk_*`` row an attribute of the Disk.
    A table with unknown keys or values other than the ones autopar writes is
    refused, so nothing from it is applied.
    """
    import sqlite3

    import diskcache.core

    if not db.exists() or db.stat().st_size == 0:
        return None
    expected: dict[str, Any] = {**diskcache.core.DEFAULT_SETTINGS, **_SETTINGS}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=STORE_TIMEOUT_S)
    try:
        rows = con.execute("SELECT key, value FROM Settings").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    finally:
        con.close()
    for key, value in rows:
        if key in diskcache.core.METADATA:
            if type(value) is not int:
                return f"tampered Settings row {key!r}"
        elif key not in expected or value != expected[key]:
            return f"unexpected Settings row {key!r} = {value!r}"
    return None


def _check_directory(directory: Path) -> str | None:
    """Create the directory 0700, or say why an existing one is unsafe to use."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot create {directory}: {exc}"
    if stat.S_ISLNK(info.st_mode):
        return f"{directory} is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{directory} is owned by another user (uid {info.st_uid})"
    if info.st_mode & 0o022:
        return f"{directory} is writable by group or others (mode {oct(info.st_mode & 0o777)})"
    return None


class PlanStore:
    """Text values under string keys, on disk when possible, else in memory.

    All methods are thread-safe and never raise for a storage problem: a failed
    read is a miss, a failed write is skipped, and the first failure warns once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
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
            import diskcache

            db = self.directory / _DB_NAME
            if not db.exists():
                fd = os.open(db, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
                os.close(fd)
            problem = _settings_problem(db)
            if problem is not None:
                raise UnsafeStoreError(problem)
            cache = diskcache.Cache(str(self.directory), timeout=STORE_TIMEOUT_S, disk=_disk_class(), **_SETTINGS)
            self._open_result.append(cache)
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
                    problem = _check_directory(self.directory)
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
                    self._fail("the database is locked or slow to open; using memory until it opens")
                    return None
                result = self._open_result[0]
                if not isinstance(result, BaseException):
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

    def _broken(self, exc: BaseException) -> None:
        """A read or write failed: a lock timeout is a miss, anything else ends disk use."""
        import diskcache

        if isinstance(exc, diskcache.Timeout):
            self._fail("the database is locked by another process")
            return
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
        """Every readable key (a snapshot)."""
        found = list(self._memory)
        cache = self._backend()
        if cache is not None:
            try:
                found.extend(k for k in cache.iterkeys() if isinstance(k, str) and not k.startswith("\x00"))
            except Exception as exc:  # noqa: BLE001
                self._broken(exc)
        return list(dict.fromkeys(found))

    def evict(self, tag: str) -> int:
        """Remove every key stored with ``tag``; the number removed."""
        removed = 0
        for key, entry in list(self._memory.items()):
            if entry[1] == tag:
                del self._memory[key]
                removed += 1
        cache = self._backend()
        if cache is not None:
            try:
                removed += int(cache.evict(tag))
            except Exception as exc:  # noqa: BLE001
                self._broken(exc)
        return removed

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


_stores: dict[Path, PlanStore] = {}
_stores_lock = threading.Lock()


def get_store(directory: Path | None = None) -> PlanStore:
    """The process-wide store for ``directory`` (default :func:`get_cache_dir`)."""
    path = directory if directory is not None else get_cache_dir()
    store = _stores.get(path)
    if store is None:
        with _stores_lock:
            store = _stores.setdefault(path, PlanStore(path))
    return store


def _reset_after_fork() -> None:
    global _stores_lock
    _stores_lock = threading.Lock()
    for store in _stores.values():
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
