"""A call that fails in ONNX Runtime: its caller gets the redacted message, the log the whole one."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import structlog

from inferbox.lanes.consumer import Call
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_reply
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec
from inferbox.worker.batcher import assemble
from inferbox.worker.serving import ModelServer
from tests.support.onnx_sessions import reshaping_session

pytestmark = pytest.mark.unit

_SOURCE_PATH = re.compile(r"/[\w./-]+\.(?:h|cc|cpp|cu):\d+")


class _SessionModel:
    """A real ONNX Runtime session behind the worker's model interface."""

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession):
        self.spec, self.session = spec, session
        self.output_names = ["y"]
        self.buckets: list[int] = []

    def run(self, feeds, outputs=None):
        return ["y"], self.session.run(["y"], feeds)


def test_the_caller_gets_the_redacted_message_and_the_log_the_whole_one(new_consumer):
    spec = ModelSpec(
        name="m",
        version=1,
        path="",
        sha256="0",
        size=0,
        inputs=[TensorSpec("x", "FP32", [-1, 3])],
        outputs=[TensorSpec("y", "FP32", [-1, -1])],
        config=ModelConfig(max_batch_size=8),
    )
    call = Call(
        "s",
        b"1-0",
        CallHeader(channel="c", token="t", deadline=1e18, inputs=[TensorMeta("x", "FP32", [1, 3])]),
        [np.zeros((1, 3), np.float32).tobytes()],
    )
    server = ModelServer(
        _SessionModel(spec, reshaping_session()), None, None, "w", block_ms=1, claim_idle_ms=1
    )
    consumer = new_consumer()
    (batch,) = assemble([call], spec)
    with structlog.testing.capture_logs() as logs:
        server._run(consumer, batch)
    ((_, message),) = consumer.replies
    reply = decode_reply(message)[0]
    assert reply.status == 500
    assert reply.error.startswith("inference failed: [ONNXRuntimeError]")
    assert "Input shape:{1,3}" in reply.error and not _SOURCE_PATH.search(reply.error)
    (logged,) = [line for line in logs if line["event"] == "call failed"]
    assert _SOURCE_PATH.search(logged["error"]) and "Input shape:{1,3}" in logged["error"]
