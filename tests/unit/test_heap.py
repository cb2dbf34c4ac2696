"""Settling a serving process's heap: objects of the start out of the collector's sight."""

from __future__ import annotations

import gc

from inferbox import heap


def test_settle_freezes_what_lives_and_collects_the_young_generation_less_often():
    threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        survivor = [object() for _ in range(100)]
        heap.settle()
        assert gc.get_freeze_count() > len(survivor)
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, threshold[1], threshold[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
