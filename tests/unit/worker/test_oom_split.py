"""A batch that runs out of device memory is halved and retried before any call fails."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.lanes.consumer import Call
from inferbox.lanes.wire import CallHeader, TensorMeta
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec
from inferbox.worker.batcher import assemble
from inferbox.worker.serving import ModelServer, _out_of_memory

pytestmark = pytest.mark.unit


class _Model:
    """Runs the identity, but 'runs out of memory' above ``limit`` rows (as CUDA would)."""

    def __init__(self, spec: ModelSpec, limit: int):
        self.spec, self.limit, self.batches = spec, limit, []
        self.output_names = ["y"]
        self.buckets: list[int] = []

    def run(self, feeds, outputs=None):
        rows = feeds["x"].shape[0]
        if rows > self.limit:
            raise RuntimeError("CUDA failure 2: out of memory ; GPU=0")
        self.batches.append(rows)
        return ["y"], [feeds["x"] * 1]


def _spec() -> ModelSpec:
    return ModelSpec(
        name="m",
        version=1,
        path="",
        sha256="0",
        size=0,
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        config=ModelConfig(max_batch_size=64),
    )


def test_out_of_memory_is_recognised():
    assert _out_of_memory(RuntimeError("Failed to allocate memory for requested buffer"))
    assert not _out_of_memory(RuntimeError("Invalid rank for input"))


def test_an_oom_batch_is_split_until_it_fits_and_every_call_is_answered(new_consumer):
    spec = _spec()
    model = _Model(spec, limit=2)
    server = ModelServer(model, None, None, "w", block_ms=1, claim_idle_ms=1)
    calls = [
        Call(
            "s",
            f"{i}-0".encode(),
            CallHeader(
                channel="c", token=str(i), deadline=1e18, inputs=[TensorMeta("x", "FP32", [1, 2])]
            ),
            [np.full((1, 2), i, np.float32).tobytes()],
        )
        for i in range(8)
    ]
    consumer = new_consumer()
    (batch,) = assemble(calls, spec)
    server._run(consumer, batch)
    assert sorted(model.batches) == [2, 2, 2, 2]
    assert len(consumer.done) == 8 and len(consumer.replies) == 8
