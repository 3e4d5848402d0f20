"""The start-up heap is frozen while the app serves, and given back when it stops."""

from __future__ import annotations

import gc
import weakref

from service.heap import YOUNG_THRESHOLD, frozen_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def tracked_now(obj: object) -> bool:
    """Whether a collection would visit `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


def test_objects_alive_at_start_are_frozen_until_the_block_ends() -> None:
    before = gc.get_threshold()
    startup = Node()
    assert tracked_now(startup)
    with frozen_startup_heap():
        assert gc.get_freeze_count() > 0
        assert not tracked_now(startup)
        assert gc.get_threshold() == (max(YOUNG_THRESHOLD, before[0]), *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    assert tracked_now(startup)


def test_cycles_made_while_serving_are_still_collected() -> None:
    with frozen_startup_heap():
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None


def test_a_cycle_frozen_at_start_is_collected_once_the_block_ends() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    with frozen_startup_heap():
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: no collection visits it
    gc.collect()
    assert gone() is None
