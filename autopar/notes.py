"""Notes added to exceptions so the caller learns which item failed."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["add_item_note", "add_note", "item_index", "shift_item_note"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80

_ITEM_NOTE = "autopar: raised while processing item "


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` on 3.11+; on 3.10 the note is kept in ``__notes__``."""
    adder = getattr(exc, "add_note", None)
    if adder is not None:
        adder(note)
        return
    try:
        notes = exc.__dict__.setdefault("__notes__", [])
        notes.append(note)
    except AttributeError:  # exceptions with __slots__ and no __dict__
        pass


def add_item_note(exc: BaseException, index: int, item: Any) -> None:
    """Name the failing item's index (and a short repr) on the exception."""
    add_note(exc, f"{_ITEM_NOTE}{index}: {_repr.repr(item)}")


def shift_item_note(exc: BaseException, offset: int) -> None:
    """Add ``offset`` to the index in the last :func:`add_item_note` note: the item
    was numbered within a part of the input that starts at ``offset``."""
    notes = getattr(exc, "__notes__", None)
    if not notes or not isinstance(notes[-1], str) or not notes[-1].startswith(_ITEM_NOTE):
        return
    index, _, rest = notes[-1][len(_ITEM_NOTE) :].partition(":")
    if index.isdigit():
        notes[-1] = f"{_ITEM_NOTE}{int(index) + offset}:{rest}"


def item_index(exc: BaseException) -> int | None:
    """The index in the last :func:`add_item_note` note on ``exc``, or None."""
    for note in reversed(getattr(exc, "__notes__", None) or []):
        if isinstance(note, str) and note.startswith(_ITEM_NOTE):
            index = note[len(_ITEM_NOTE) :].partition(":")[0]
            return int(index) if index.isdigit() else None
    return None
