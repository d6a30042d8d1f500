"""A per-process cache of the few values used last (decoded images, prepared data, GPU copies)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """Keeps the ``size`` values asked for last: a worker reuses its data from trial to trial, and a
    process that goes through many data sets (a benchmark, a test run) does not keep them all."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make`` the first time (and again after it was dropped)."""
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = make()
        self._values[key] = value
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every value, as a new process starts (the tests' way to be one)."""
        self._values.clear()
