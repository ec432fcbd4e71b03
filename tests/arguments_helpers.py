"""Functions, methods and callables for the several-arguments and callables tests.

Module level, so spawn and forkserver workers import them by name.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from autopar import auto_parallel

#: Read by :func:`scaled_add`; tests rebind it between calls.
SCALE = 1


@auto_parallel
def add(a: int, b: int) -> int:
    return a + b


@auto_parallel
def add_pid(a: int, b: int) -> tuple[int, int]:
    """The sum and the pid that computed it (to see work reach the workers)."""
    return a + b, os.getpid()


@auto_parallel
def add3(a: int, b: int, c: int = 0) -> int:
    return a + b + c


@auto_parallel
def scaled_add(a: int, b: int) -> tuple[int, int]:
    return (a + b) * SCALE, os.getpid()


@auto_parallel
def times2(a: int, b: int) -> int:
    return (a + b) * 2


@auto_parallel
def times3(a: int, b: int) -> int:
    return (a + b) * 3


@auto_parallel
def double(x: int) -> int:
    return 2 * x


@auto_parallel
def total(*numbers: int) -> int:
    return sum(numbers)


@auto_parallel
def needs_scale(x: int, *, scale: int) -> int:
    return x * scale


@auto_parallel
def no_arguments() -> int:
    return 1


class PairError(ValueError):
    """Raised by :func:`fails_on_pair` for the pair (3, 4)."""


@auto_parallel
def fails_on_pair(a: int, b: int) -> int:
    if (a, b) == (3, 4):
        raise PairError(f"bad pair {a}, {b}")
    return a * b


def plain_power(base: int, exponent: int) -> int:
    return int(base**exponent)


#: A partial decorated: one argument left.
square = auto_parallel(functools.partial(plain_power, exponent=2))


class Model:
    """A class with decorated methods, as users write them."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @auto_parallel
    def predict(self, x: int) -> tuple[int, int]:
        return x * self.factor, os.getpid()

    @auto_parallel
    def combine(self, x: int, y: int) -> int:
        return (x + y) * self.factor

    @staticmethod
    @auto_parallel
    def halve(x: int) -> float:
        return x / 2


@dataclass(frozen=True)
class Scorer:
    """A picklable callable instance."""

    weight: int

    def __call__(self, x: int) -> tuple[int, int]:
        return x * self.weight, os.getpid()


@dataclass
class Offset:
    """A callable instance whose attribute tests rebind between calls."""

    offset: int

    def __call__(self, x: int) -> int:
        return x + self.offset


offset_by = auto_parallel(Offset(100))
