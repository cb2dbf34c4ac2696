"""A version's capacity card, as the worker measures it and the API reads it: latency and
throughput by batch size, and the batching knobs ``propose`` suggests from that curve for a
latency target (the sweep itself is ``worker.capacity``)."""

from __future__ import annotations

import msgspec


class CapacityPoint(msgspec.Struct, frozen=True):
    """Latency of one batch size (milliseconds) and the rows per second it sustains."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    rows_per_s: float


class CapacityCard(msgspec.Struct, frozen=True):
    """The measured curve of one version on one worker."""

    points: list[CapacityPoint]
    device: str
    memory_bytes: int
    measured_at: float

    @property
    def best_rows_per_s(self) -> float:
        """The highest throughput on the curve."""
        return max((p.rows_per_s for p in self.points), default=0.0)


class Proposal(msgspec.Struct, frozen=True):
    """Batching knobs suggested for a latency target."""

    latency_target_ms: float
    max_batch_size: int
    max_queue_delay_microseconds: int
    expected_rows_per_s: float
    expected_p95_ms: float


def propose(card: CapacityCard, latency_target_ms: float) -> Proposal:
    """The largest batch whose p95 fits half the target; the other half may be spent waiting.

    A call can wait up to one running batch plus the queue delay before its own batch runs,
    so the batch's p95 and the delay together are kept within the target.
    """
    fitting = [p for p in card.points if p.p95_ms <= latency_target_ms / 2]
    chosen = max(fitting, key=lambda p: p.batch_size) if fitting else card.points[0]
    slack_ms = max(0.0, latency_target_ms - 2 * chosen.p95_ms)
    delay_us = int(min(slack_ms, chosen.p95_ms) * 1000) if chosen.batch_size > 1 else 0
    return Proposal(
        latency_target_ms=latency_target_ms,
        max_batch_size=chosen.batch_size,
        max_queue_delay_microseconds=delay_us,
        expected_rows_per_s=chosen.rows_per_s,
        expected_p95_ms=2 * chosen.p95_ms + delay_us / 1000,
    )
