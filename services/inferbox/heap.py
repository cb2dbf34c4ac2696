"""Garbage-collector settings for long-running serving processes."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Container allocations between young-generation collections (CPython's default is 700).

A request allocates a few hundred short-lived containers that reference counting frees
anyway; collecting every 700 allocations mostly re-scans the survivors of in-flight
requests."""


def settle() -> None:
    """Collect once, then move every object alive now out of the collector's sight.

    Called when a process has finished starting (imports, app, models): those objects live as
    long as the process, and without ``gc.freeze`` every full collection walks all of them —
    hundreds of thousands of objects, milliseconds of CPU, every few hundred requests.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
