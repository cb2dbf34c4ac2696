"""How many actors to run: between a minimum and a maximum, by how long calls wait in the queue.

Every batch reports the queue wait of its calls (enqueue to read). Each interval the autoscaler
takes the 90th percentile of the waits seen in it: above ``up_wait`` it adds an actor; below
``down_wait`` for ``down_after`` seconds on end it removes one. An interval without calls counts
as no wait. At most one change per interval, so a new actor has time to load and take load
before the next decision.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    """The actor count to reach, and why."""

    target: int
    direction: str
    """``up``, ``down`` or ``hold``."""
    wait_p90_s: float
    reason: str


class Autoscaler:
    """Turns observed queue waits into a target actor count."""

    def __init__(
        self,
        minimum: int,
        maximum: int,
        *,
        up_wait_s: float,
        down_wait_s: float,
        down_after_s: float,
        interval_s: float,
    ):
        self.minimum, self.maximum = minimum, maximum
        self.up_wait_s, self.down_wait_s = up_wait_s, down_wait_s
        self.down_after_s, self.interval_s = down_after_s, interval_s
        self._waits: list[float] = []
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._last_change = float("-inf")
        self._calm_since: float | None = None

    def observe(self, waits: list[float]) -> None:
        """Queue waits (seconds) of the calls of one batch; called from the batch threads."""
        with self._lock:
            self._waits.extend(waits)

    def decide(self, current: int, now: float | None = None) -> Decision | None:
        """A decision once per interval (None in between); ``current`` is the live actor count."""
        now = time.monotonic() if now is None else now
        if now - self._window_start < self.interval_s:
            return None
        with self._lock:
            waits, self._waits = self._waits, []
        self._window_start = now
        p90 = float(np.percentile(waits, 90)) if waits else 0.0
        if p90 <= self.down_wait_s:
            self._calm_since = now if self._calm_since is None else self._calm_since
        else:
            self._calm_since = None
        if current < self.minimum:
            return self._change(current, self.minimum, "up", p90, "below the minimum", now)
        if current > self.maximum:
            return self._change(current, self.maximum, "down", p90, "above the maximum", now)
        if now - self._last_change < self.interval_s:
            return Decision(current, "hold", p90, "settling after the last change")
        if p90 > self.up_wait_s and current < self.maximum:
            return self._change(current, current + 1, "up", p90, "queue wait above target", now)
        calm = self._calm_since is not None and now - self._calm_since >= self.down_after_s
        if calm and current > self.minimum:
            self._calm_since = now  # the next removal needs another calm stretch
            return self._change(current, current - 1, "down", p90, "queue wait low", now)
        return Decision(current, "hold", p90, "within bounds")

    def _change(
        self, current: int, target: int, direction: str, p90: float, reason: str, now: float
    ) -> Decision:
        self._last_change = now
        return Decision(target, direction, p90, reason)
