"""A call that makes its batch fail is found by halving, within a budget per batch: one bad
call costs a few runs, not one run per call of its batch."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.lanes.consumer import Call
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_reply
from inferbox.worker.batcher import assemble
from inferbox.worker.serving import ModelServer, _halving_budget
from tests.unit.worker.test_oom_split import _spec

pytestmark = pytest.mark.unit


class _Model:
    """The identity, failing any batch that holds a negative value (a 'poison' call)."""

    def __init__(self, spec):
        self.spec = spec
        self.runs = 0
        self.output_names = ["y"]
        self.buckets: list[int] = []

    def run(self, feeds, outputs=None):
        self.runs += 1
        if (feeds["x"] < 0).any():
            raise RuntimeError("index out of range")
        return ["y"], [feeds["x"] * 1]


def _calls(values):
    return [
        Call(
            "s",
            f"{i}-0".encode(),
            CallHeader(
                channel="c", token=str(i), deadline=1e18, inputs=[TensorMeta("x", "FP32", [1, 2])]
            ),
            [np.full((1, 2), v, np.float32).tobytes()],
        )
        for i, v in enumerate(values)
    ]


def _serve(values, consumer, server_class=ModelServer, **options):
    spec = _spec()
    model = _Model(spec)
    server = server_class(model, None, None, "w", block_ms=1, claim_idle_ms=1, **options)
    (batch,) = assemble(_calls(values), spec)
    server._run(consumer, batch)
    return model, consumer


def _statuses(consumer) -> list[int]:
    return [decode_reply(message)[0].status for _, message in consumer.replies]


def test_one_poison_call_in_a_batch_of_64_costs_a_few_runs_and_fails_alone(new_consumer):
    model, consumer = _serve([1.0] * 40 + [-1.0] + [1.0] * 23, new_consumer())
    assert len(consumer.done) == 64 and len(consumer.replies) == 64
    assert model.runs <= 2 * 6 + 1  # at da4a7bd: 65 (the batch, then each call alone)
    failed = [s for s in _statuses(consumer) if s != 200]
    assert failed == [500]


def test_a_batch_of_poison_calls_stops_at_the_budget_and_asks_the_rest_to_retry(new_consumer):
    model, consumer = _serve([-1.0] * 64, new_consumer())
    assert len(consumer.done) == 64
    assert model.runs <= 1 + 2 * _halving_budget(64)
    assert set(_statuses(consumer)) <= {500, 503}
    assert 503 in _statuses(consumer)


def test_the_ray_server_halves_a_failing_batch_the_same_way(new_consumer):
    from inferbox.scaleout.remote import RayModelServer
    from inferbox.scaleout.scaler import Autoscaler

    scaler = Autoscaler(1, 1, up_wait_s=1, down_wait_s=1, down_after_s=1, interval_s=1)
    model, consumer = _serve(
        [1.0] * 40 + [-1.0] + [1.0] * 23,
        new_consumer(),
        RayModelServer,
        scaler=scaler,
        threads_per_actor=1,
    )
    assert len(consumer.done) == 64
    assert model.runs <= 2 * 6 + 1
    assert [s for s in _statuses(consumer) if s != 200] == [500]
