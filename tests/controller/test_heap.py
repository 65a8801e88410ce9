"""HeapKeeper: cyclic garbage waits for a full collection, which runs when the heap has grown and
the mesh is quiet, or when it has grown far enough regardless."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from meshsec.controller.heap import HeapKeeper, HeapSettings


class Cycle:
    def __init__(self) -> None:
        self.me = self


class Fake:
    """A settable clock and heap size."""

    def __init__(self) -> None:
        self.now = 0.0
        self.size = 1000

    def clock(self) -> float:
        return self.now

    def heap_size(self) -> int:
        return self.size


@pytest.fixture
def gc_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def garbage_cycle() -> weakref.ref[Cycle]:
    return weakref.ref(Cycle())  # unreachable at once, but only the cycle collector can free it


def keeper_with(fake: Fake, busy: list[bool], **settings: float) -> HeapKeeper:
    defaults: dict[str, float] = {"growth": 1.0, "quiet_s": 3.0, "full_every_s": 3600.0}
    return HeapKeeper(lambda: busy[0], HeapSettings(**{**defaults, **settings}), fake.clock, fake.heap_size)


def test_start_takes_over_from_the_automatic_collector(gc_restored: None) -> None:
    gc.enable()
    keeper = HeapKeeper(lambda: False)
    keeper.start()
    assert not gc.isenabled() and keeper.full_collections == 1
    keeper.stop()
    assert gc.isenabled()


def test_a_grown_heap_is_collected_once_the_mesh_is_quiet(gc_restored: None) -> None:
    fake, busy = Fake(), [False]
    keeper = keeper_with(fake, busy)
    keeper.start()
    gone = garbage_cycle()
    fake.now, fake.size = 10, 1900  # grown, but not doubled
    keeper.tick()
    assert gone() is not None and keeper.full_collections == 1
    fake.size, busy[0] = 2100, True  # doubled while the mesh changes
    keeper.tick()
    assert gone() is not None
    busy[0] = False
    fake.now = 12  # quiet, but not for quiet_s yet
    keeper.tick()
    assert gone() is not None and keeper.full_collections == 1
    fake.now = 13
    keeper.tick()
    assert gone() is None and keeper.full_collections == 2
    keeper.stop()


def test_the_periodic_collection_also_waits_for_quiet(gc_restored: None) -> None:
    fake, busy = Fake(), [True]
    keeper = keeper_with(fake, busy, full_every_s=60)
    keeper.start()
    gone = garbage_cycle()
    fake.now = 61
    keeper.tick()
    assert gone() is not None
    busy[0] = False
    fake.now = 64
    keeper.tick()
    assert gone() is None and keeper.full_collections == 2
    keeper.stop()


def test_a_heap_grown_far_enough_is_collected_even_while_busy(gc_restored: None) -> None:
    fake, busy = Fake(), [True]
    keeper = keeper_with(fake, busy, growth=0.5)
    keeper.start()
    gone = garbage_cycle()
    fake.size = 2000  # due (grown 100%), but overdue needs 1.5 ** 2 = 225%
    keeper.tick()
    assert gone() is not None
    fake.size = 2300
    keeper.tick()
    assert gone() is None and keeper.full_collections == 2
    keeper.stop()
