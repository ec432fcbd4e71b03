"""Large shipments kept in files once, read by each worker once: the depot.

A function that travels by value with large constants (a ``partial`` holding an
80 MB table, a closure over a numpy array) would otherwise be pickled into every
chunk. Past :data:`INLINE_MAX` it is written here once instead, and chunks carry
only a :class:`Deposit` (a few paths). Buffers that pickle protocol 5 can keep out
of band (numpy arrays, ``bytearray``, anything exporting the buffer protocol
through ``PickleBuffer``) of :data:`BUFFER_MIN` or more get files of their own,
which workers memory-map read-only: every worker shares the same pages of the page
cache (``/dev/shm`` where it exists), under fork, forkserver and spawn alike.

Files are removed when the last pool that used them ends (its call, or its time
kept warm: :func:`hold` and :func:`let_go`), when their shipment is dropped (the
caller's state changed, or the function was garbage collected), and at exit, by
the process that made them only; a depot left by a process that was killed is swept
by the next one that opens a depot. A shipment whose files are gone is deposited
again when next needed (:func:`present`).
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import pickle
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUFFER_MIN",
    "INLINE_MAX",
    "Deposit",
    "deposit",
    "hold",
    "let_go",
    "load",
    "pickle_out_of_band",
    "present",
    "remove_depot",
]

#: Pickles up to this size travel inline with every chunk (a module-level function
#: by reference is ~100 bytes); larger ones are deposited once.
INLINE_MAX = 64 * 1024
#: Out-of-band buffers at least this large get a file of their own, memory-mapped by
#: workers; smaller ones stay in the pickle.
BUFFER_MIN = 1 << 20
_PREFIX = "autopar-depot-"

_lock = threading.Lock()
_directory: Path | None = None
#: Pools using each deposit now (by its pickle's path).
_holders: dict[str, int] = {}


@dataclass(frozen=True)
class Deposit:
    """Where a deposited pickle lies: its file, its buffers' files, and its size."""

    path: str
    buffers: tuple[str, ...]
    size: int
    """Bytes in all: what each worker reads (or maps) once."""
    pid: int = 0
    """The process that wrote the files: the only one that removes them."""


def pickle_out_of_band(obj: Any, dumps: Callable[..., bytes]) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``dumps(obj, protocol=5, buffer_callback=...)``, keeping large buffers out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < BUFFER_MIN:
            return True  # in band
        buffers.append(buffer)
        return False

    return dumps(obj, protocol=5, buffer_callback=keep), buffers


def _root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _sweep(root: Path) -> None:
    """Remove depots of processes that no longer exist (killed before they could)."""
    for path in root.glob(f"{_PREFIX}*"):
        pid_text = path.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if path.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _depot() -> Path:
    global _directory
    with _lock:
        if _directory is None or not _directory.is_dir():
            root = _root()
            _sweep(root)
            _directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))
            atexit.register(remove_depot)
        return _directory


def deposit(blob: bytes, buffers: list[pickle.PickleBuffer], owner: object) -> Deposit:
    """Write ``blob`` and its out-of-band ``buffers`` once; removed when ``owner`` goes."""
    directory = _depot()
    name = uuid.uuid4().hex
    path = directory / f"{name}.pkl"
    paths = []
    size = len(blob)
    with open(path, "wb") as out:
        out.write(blob)
    for index, buffer in enumerate(buffers):
        raw = buffer.raw()
        buffer_path = directory / f"{name}.{index}.buf"
        with open(buffer_path, "wb") as out:
            out.write(raw)
        paths.append(str(buffer_path))
        size += raw.nbytes
    made = Deposit(str(path), tuple(paths), size, os.getpid())
    weakref.finalize(owner, _remove, made)
    return made


def load(made: Deposit) -> Any:
    """Unpickle a deposit in a worker; its buffers are mapped read-only, not copied."""
    with open(made.path, "rb") as source:
        blob = source.read()
    views = []
    for path in made.buffers:
        with open(path, "rb") as source:
            if os.fstat(source.fileno()).st_size == 0:
                views.append(memoryview(b""))
                continue
            views.append(memoryview(mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)))
    return pickle.loads(blob, buffers=views)


def present(made: Deposit) -> bool:
    """True while a deposit's files are still there (a pool that used it may have ended)."""
    return os.path.exists(made.path)


def hold(made: Deposit) -> None:
    """A pool sends ``made`` to its workers: keep its files while the pool lives."""
    with _lock:
        _holders[made.path] = _holders.get(made.path, 0) + 1


def let_go(made: Deposit) -> None:
    """A pool that used ``made`` ended: the last one to end removes its files."""
    with _lock:
        count = _holders.get(made.path, 0) - 1
        if count > 0:
            _holders[made.path] = count
            return
        _holders.pop(made.path, None)
    _remove(made)


def _remove(made: Deposit) -> None:
    if os.getpid() != made.pid:  # a forked child's: the files are its parent's
        return
    for path in (made.path, *made.buffers):
        with contextlib.suppress(OSError):
            os.unlink(path)


def remove_depot() -> None:
    """Remove this process's depot (at exit)."""
    global _directory
    with _lock:
        directory, _directory = _directory, None
    if directory is not None and directory.name.startswith(f"{_PREFIX}{os.getpid()}-"):
        shutil.rmtree(directory, ignore_errors=True)
