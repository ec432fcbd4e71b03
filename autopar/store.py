"""The plan store: JSON text in a diskcache (SQLite) directory, never pickle.

The disk is untrusted input: :mod:`autopar.store_sqlite` opens it (text-only rows,
checked schema and settings, statement deadlines). The directory is created 0700
and the database 0600.

* Opening runs in a helper thread with a deadline, because diskcache's
  constructor retries a locked database for up to 60 s whatever timeout is given.

Any failure makes the store warn once (:class:`~autopar.errors.CacheWarning`) and
carry on in memory, so ``.map`` never breaks because of its cache. The command
line's functions (:mod:`autopar.store_admin`) raise :class:`StoreError` instead,
so it can say what it could not do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CacheWarning
from .system import on_fork_in_child

if TYPE_CHECKING:
    pass  # imported where used: ``import autopar`` stays without it

from .store_sqlite import (
    DB_NAME,
    OPEN_DEADLINE_S,
    STATEMENT_DEADLINE_S,
    STORE_TIMEOUT_S,
    StoreError,
    UnsafeRowError,
    UnsafeStoreError,
    check_directory,
    database_problem,
    is_corruption,
    open_cache,
    was_interrupted,
)

__all__ = ["STATEMENT_DEADLINE_S", "PlanStore", "StoreError", "get_cache_dir", "get_store"]

logger = logging.getLogger("autopar")


def get_cache_dir() -> Path:
    """Where plans are stored: ``$AUTOPAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/autopar``
    (absolute values only, as the XDG spec says), else ``~/.cache/autopar``.

    Raises ``RuntimeError`` when the home directory cannot be found (no ``HOME``
    and no passwd entry); ``.map`` then plans in memory.

    >>> import os
    >>> os.environ["AUTOPAR_CACHE_DIR"] = "/tmp/my-plans"
    >>> str(get_cache_dir())
    '/tmp/my-plans'
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
            db = self.directory / DB_NAME
            if not db.exists():
                fd = os.open(db, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
                os.close(fd)
            problem = database_problem(db)
            if problem is not None:
                raise UnsafeStoreError(problem)
            self._open_result.append(open_cache(self.directory, STORE_TIMEOUT_S))
        except BaseException as exc:  # noqa: BLE001 - reported through _fail
            self._open_result.append(exc)

    def _set_aside_corrupt(self) -> bool:
        """Rename an unreadable database so a fresh one can be made; True if done."""
        db = self.directory / DB_NAME
        try:
            if not db.exists():
                return False
            target = db.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            os.replace(db, target)
            for suffix in ("-wal", "-shm"):
                side = db.with_name(DB_NAME + suffix)
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
                    problem = self._problem or check_directory(self.directory)
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
                if attempt == 0 and is_corruption(result):
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
        if was_interrupted(exc):
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


on_fork_in_child(_reset_after_fork)


