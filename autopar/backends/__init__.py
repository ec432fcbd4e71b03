"""Where the work runs. Each backend has ``map`` (a list) and ``imap`` (a stream).

The planner never imports a backend; the decorator picks one from the plan, so a
cluster backend can be added without touching planning.
"""

from .base import Backend
from .process import ProcessBackend
from .serial import SerialBackend

__all__ = ["Backend", "ProcessBackend", "SerialBackend"]
