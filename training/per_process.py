"""What a process keeps between the trials it runs, in one place, each kept per process on purpose:

- the decoded images of the data sets used last (``data/cache.py``): a worker maps them from the
  machine's cache once, not in every trial;
- the prepared data (``data/prepare.py``): the listing, the split and the facts, the same for every
  trial of a study;
- the file each model's pretrained weights were read from (``models.py``): the hub is asked once;
- the images put on each GPU (``data/loader.py``): copied there once per worker;
- the warnings said once (``setup.py``, ``search.console``'s data notes): a worker's trials would
  each say them again;
- the cache folder this process writes (``data/sources.py``), said once where it falls back.

Each is an object made by this module (``Memo``, ``Kept``, ``Said``); ``forget_all`` empties them,
as a new process starts empty (the tests' way to be one). The one environment change at import is
``NO_ALBUMENTATIONS_UPDATE``, in ``training/__init__.py``, which says why.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")

_ALL: list[Any] = []  # every object below, for ``forget_all``


class Memo(Generic[V]):
    """Keeps the ``size`` values asked for last: a worker reuses its data from trial to trial, and a
    process that goes through many data sets (a benchmark, a test run) does not keep them all."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        _ALL.append(self)

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
        self._values.clear()


class Kept(dict):
    """A dict kept for the life of the process."""

    def __init__(self) -> None:
        super().__init__()
        _ALL.append(self)


class Said:
    """The messages this process has said: each is said once."""

    def __init__(self) -> None:
        self._said: set[Hashable] = set()
        _ALL.append(self)

    def first_time(self, message: Hashable) -> bool:
        """Whether ``message`` was not said yet; it counts as said from now on."""
        if message in self._said:
            return False
        self._said.add(message)
        return True

    def clear(self) -> None:
        self._said.clear()


def forget_all() -> None:
    """Forget everything this module's objects keep, and the cache folder chosen, as a new process
    starts (the tests' way to be one)."""
    from training.data.sources import forget_cache_folder

    for kept in _ALL:
        kept.clear()
    forget_cache_folder()
