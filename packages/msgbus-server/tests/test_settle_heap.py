"""The daemon's startup heap: its garbage collected, the rest frozen out of the cyclic GC."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from msgbus_server.daemon import settle_heap


class _Node:
    """A container that refers to itself: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_startup_garbage_is_freed_and_what_lives_is_frozen() -> None:
    garbage = _Node()
    freed = weakref.ref(garbage)
    del garbage
    kept = _Node()
    frozen = settle_heap()
    assert freed() is None  # collected before the freeze: a frozen object is never freed
    assert frozen == gc.get_freeze_count() > 0
    # Out of the collector's reach: no generation holds it, so no collection scans it.
    assert not any(obj is kept for obj in gc.get_objects())


@pytest.mark.usefixtures("unfrozen")
def test_what_comes_after_the_freeze_is_still_collected() -> None:
    settle_heap()
    later = _Node()
    freed = weakref.ref(later)
    del later
    gc.collect()
    assert freed() is None
