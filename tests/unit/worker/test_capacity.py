"""Capacity sweeps on a real session, and proposals from a curve."""

from __future__ import annotations

import pytest

from inferbox.models.capacity import CapacityCard, CapacityPoint, propose
from inferbox.models.spec import spec_from_onnx
from inferbox.testing import onnx_models
from inferbox.worker.capacity import batch_sizes, sweep
from inferbox.worker.runtime import load_model

pytestmark = pytest.mark.unit


def test_batch_sizes_double_up_to_the_limit():
    assert batch_sizes(0) == [1]
    assert batch_sizes(1) == [1]
    assert batch_sizes(6) == [1, 2, 4, 6]
    assert batch_sizes(8) == [1, 2, 4, 8]


def test_sweep_measures_every_size_within_its_bounds(tmp_path):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"), max_batch_size=16)
    model = load_model(spec)
    card = sweep(
        lambda feeds: model.run(feeds),
        spec.inputs,
        spec.config.max_batch_size,
        device="cpu",
        memory_bytes=123,
        seconds_per_size=0.02,
    )
    assert [p.batch_size for p in card.points] == [1, 2, 4, 8, 16]
    assert all(p.p50_ms > 0 and p.p95_ms >= p.p50_ms and p.rows_per_s > 0 for p in card.points)
    assert card.memory_bytes == 123 and card.best_rows_per_s > 0


def _card(*points: tuple[int, float]) -> CapacityCard:
    return CapacityCard(
        points=[CapacityPoint(b, ms, ms, b / ms * 1000) for b, ms in points],
        device="cpu",
        memory_bytes=0,
        measured_at=0,
    )


def test_proposal_keeps_two_batches_and_the_delay_within_the_target():
    card = _card((1, 1.0), (8, 4.0), (32, 12.0), (64, 30.0))
    proposal = propose(card, latency_target_ms=30)
    assert proposal.max_batch_size == 32
    assert proposal.max_queue_delay_microseconds == 6000
    assert proposal.expected_p95_ms <= 30
    tight = propose(card, latency_target_ms=1)
    assert tight.max_batch_size == 1 and tight.max_queue_delay_microseconds == 0
