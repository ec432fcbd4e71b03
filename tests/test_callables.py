"""What else ``@auto_parallel`` decorates: methods, builtins, partials, callable
instances; and what it refuses (classes, staticmethod/classmethod objects), saying why."""

from __future__ import annotations

import functools
import os
import pickle
import threading

import pytest

from autopar import AutoParallel, UnpicklableError, auto_parallel
from autopar.backends import process
from tests import arguments_helpers as helpers
from tests.arguments_helpers import Model, Offset, Scorer

pytestmark = pytest.mark.timeout(90)


def _values(results: list[tuple[int, int]]) -> list[int]:
    return [value for value, _ in results]


def _pids(results: list[tuple[int, int]]) -> set[int]:
    return {pid for _, pid in results}


# -- methods ------------------------------------------------------------------------------------


def test_a_decorated_method_calls_as_a_method() -> None:
    model = Model(3)
    assert model.predict(2) == (6, os.getpid())
    assert Model.predict(model, 2) == (6, os.getpid())
    assert isinstance(model.predict, AutoParallel)
    assert Model.predict is Model.predict, "on the class, the decorated function itself"
    assert model.predict.__name__ == "predict"
    assert model.predict.__qualname__ == "Model.predict"
    assert repr(model.predict).startswith("<bound auto_parallel tests.arguments_helpers.Model.predict of ")
    assert isinstance(model, Model), "decorating a method leaves the class alone"


def test_a_method_maps_with_self_bound_here() -> None:
    model = Model(4)
    assert model.predict.map(range(50)) == [model.predict(x) for x in range(50)]
    assert list(model.predict.imap(iter(range(10)))) == [(4 * x, os.getpid()) for x in range(10)]
    assert model.combine.map([1, 2, 3], [10, 20, 30]) == [44, 88, 132]
    assert model.combine.starmap([(1, 1), (2, 2)]) == [8, 16]


def test_a_method_maps_with_self_bound_on_workers(start_method: str) -> None:
    model = Model(3)
    results = model.predict.map(range(30), n_jobs=2, chunksize=4)
    assert _values(results) == [3 * x for x in range(30)]
    assert os.getpid() not in _pids(results)
    assert model.combine.map(range(10), range(10), n_jobs=2, chunksize=3) == [6 * x for x in range(10)]
    assert model.combine.starmap([(x, 1) for x in range(10)], n_jobs=2, chunksize=3) == [3 * (x + 1) for x in range(10)]


def test_a_rebound_attribute_is_seen_by_the_next_map(start_method: str) -> None:
    model = Model(3)
    held = model.predict  # a bound wrapper kept across calls must not serve a stale self
    assert _values(held.map(range(12), n_jobs=2, chunksize=2)) == [3 * x for x in range(12)]
    model.factor = 5
    assert _values(held.map(range(12), n_jobs=2, chunksize=2)) == [5 * x for x in range(12)]
    assert _values(model.predict.map(range(12), n_jobs=2, chunksize=2)) == [5 * x for x in range(12)]
    other = Model(7)
    assert _values(other.predict.map(range(12), n_jobs=2, chunksize=2)) == [7 * x for x in range(12)]


def test_an_unchanged_instance_reuses_the_warm_pool(start_method: str) -> None:
    model = Model(2)
    model.predict.map(range(12), n_jobs=2, chunksize=2)
    (pool,) = process.WarmPools.idle()
    model.predict.map(range(12), n_jobs=2, chunksize=2)
    assert process.WarmPools.idle() == [pool]
    assert pool.calls == 2


def test_a_bound_method_pickles_with_its_instance() -> None:
    model = Model(6)
    copy = pickle.loads(pickle.dumps(model.predict))
    assert isinstance(copy, AutoParallel)
    assert copy(2)[0] == 12
    assert pickle.loads(pickle.dumps(Model.predict)) is Model.predict


def test_method_plans_are_keyed_by_its_qualified_name_and_counted_on_the_method() -> None:
    Model.predict.cache_clear()
    model = Model(2)
    call = model.predict.call()
    assert call.name == "tests.arguments_helpers.Model.predict"
    assert call.digest != Model.predict.call().digest, "the bound form measures differently from the function"
    model.predict.map(range(2000))
    model.predict.map(range(2000))
    info = Model(5).predict.cache_info()
    assert info.hits + info.misses >= 2, "every bound copy counts on the method"
    assert info == Model.predict.cache_info()


def test_a_decorated_builtin_or_instance_on_a_class_does_not_bind() -> None:
    class Holder:
        absolute = auto_parallel(abs)
        scorer = auto_parallel(Scorer(3))

    holder = Holder()
    assert holder.absolute is Holder.absolute, "abs stored on a class does not bind, decorated or not"
    assert holder.absolute.map([-1, 2]) == [1, 2]
    assert holder.scorer(2)[0] == 6


def test_staticmethod_above_the_decorator_works() -> None:
    assert Model.halve.map([2, 4, 6]) == [1.0, 2.0, 3.0]
    assert Model(1).halve.map([2, 4], n_jobs=2, chunksize=1) == [1.0, 2.0]
    assert pickle.loads(pickle.dumps(Model.halve)) is Model.halve


# -- builtins and partials ------------------------------------------------------------------------


def test_builtins_map_as_the_builtin_map(start_method: str) -> None:
    items = list(range(-50, 50))
    wrapped_abs = auto_parallel(abs)
    assert wrapped_abs(-3) == 3
    assert wrapped_abs.__name__ == "abs"
    assert wrapped_abs.map(items) == list(map(abs, items))
    assert wrapped_abs.map(items, n_jobs=2, chunksize=10) == list(map(abs, items))
    words = ["ab", "cde", ""]
    assert auto_parallel(len).map(words, n_jobs=2, chunksize=1) == [2, 3, 0]
    upper = auto_parallel(str.upper)
    assert upper.map(words, n_jobs=2, chunksize=1) == ["AB", "CDE", ""]
    assert upper.__qualname__ == "str.upper"
    assert auto_parallel(max).map([1, 9], [5, 2], n_jobs=2, chunksize=1) == [5, 9]


def test_a_decorated_partial_maps_on_workers(start_method: str) -> None:
    assert helpers.square.map(range(10), n_jobs=2, chunksize=3) == [x * x for x in range(10)]
    assert helpers.square.__name__ == "plain_power"
    cube = auto_parallel(functools.partial(helpers.plain_power, exponent=3))
    assert cube.map(range(6), n_jobs=2, chunksize=2) == [x**3 for x in range(6)]


# -- callable instances ---------------------------------------------------------------------------


def test_a_callable_instance_maps_on_workers(start_method: str) -> None:
    scorer = Scorer(4)
    wrapped = auto_parallel(scorer)
    assert wrapped(3) == (12, os.getpid())
    assert wrapped.__name__ == "Scorer"
    assert wrapped.__module__ == "tests.arguments_helpers"
    assert wrapped.__wrapped__ is scorer
    assert isinstance(wrapped.__wrapped__, Scorer), "the instance itself is untouched"
    results = wrapped.map(range(20), n_jobs=2, chunksize=3)
    assert _values(results) == [4 * x for x in range(20)]
    assert os.getpid() not in _pids(results)


def test_a_callable_instances_attributes_do_not_shadow_the_wrapper() -> None:
    class Shadowing:
        def __init__(self) -> None:
            self.map = "not a method"
            self.plan = 42

        def __call__(self, x: int) -> int:
            return x + 1

    wrapped = auto_parallel(Shadowing())
    assert wrapped.map([1, 2]) == [2, 3]
    assert wrapped.plan([1, 2]).executor == "serial"


def test_a_rebound_attribute_of_a_callable_instance_is_seen(start_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert helpers.offset_by.map(range(6), n_jobs=2, chunksize=2) == [100 + x for x in range(6)]
    monkeypatch.setattr(helpers.offset_by.__wrapped__, "offset", 7)
    assert helpers.offset_by.map(range(6), n_jobs=2, chunksize=2) == [7 + x for x in range(6)]
    assert helpers.offset_by(1) == 8


def test_an_unpicklable_callable_instance_runs_here_or_says_why() -> None:
    class Locked:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __call__(self, x: int) -> int:
            with self.lock:
                return x * 2

    wrapped = auto_parallel(Locked())
    assert wrapped.map(range(100)) == [2 * x for x in range(100)]  # planned: it cannot leave, so it stays here
    with pytest.raises(UnpicklableError, match=r"cannot be sent to worker processes .*pass n_jobs=1"):
        wrapped.map(range(10), n_jobs=2, chunksize=1)


# -- refused, with what to do instead ----------------------------------------------------------------


def test_decorating_a_class_is_refused_and_leaves_the_class_alone() -> None:
    with pytest.raises(TypeError) as info:

        @auto_parallel  # type: ignore[arg-type]
        class Thing:
            def __init__(self, x: int) -> None:
                self.x = x

    assert str(info.value) == (
        "auto_parallel cannot decorate the class Thing: the name would then hold a wrapper, and "
        "isinstance(obj, Thing) and subclassing would break. Decorate a function that builds it instead "
        "(@auto_parallel def make(item): return Thing(item))"
    )
    with pytest.raises(TypeError, match=r"Decorate an instance \(auto_parallel\(Offset\(\.\.\.\)\)\)"):
        auto_parallel(Offset)
    with pytest.raises(TypeError, match="cannot decorate the class int"):
        auto_parallel(int)
    assert isinstance(Offset(1), Offset)


def test_staticmethod_and_classmethod_objects_are_refused_with_the_order_that_works() -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"put @staticmethod above @auto_parallel"):
        auto_parallel(staticmethod(f))
    with pytest.raises(TypeError, match=r"cannot wrap a classmethod object: decorate a plain method"):
        auto_parallel(classmethod(f))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="auto_parallel needs a callable, got int"):
        auto_parallel(3)  # type: ignore[call-overload]
