"""``InferenceService`` over an in-memory lane: which lane a call takes, how long it may wait,
what comes back, and the errors of a lane passed through unchanged."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from inferbox.errors import BadRequest, DeadlineExceeded, Unavailable
from inferbox.inference.service import InferenceService
from inferbox.keys import Keys
from inferbox.lanes.client import ClientGone
from inferbox.lanes.memory import MemoryLane
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec
from inferbox.protocol.codec import TensorLimits, decode_infer_request
from inferbox.security.keystore import KeyRecord

pytestmark = pytest.mark.unit

LIMITS = TensorLimits(max_rank=8, max_dim=1 << 20, max_elements=1 << 24, max_bytes_elements=1024)


def _spec(**config) -> ModelSpec:
    return ModelSpec(
        name="m",
        version=3,
        path="",
        sha256="0",
        size=0,
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        config=ModelConfig(max_batch_size=8, **config),
    )


def _request(**fields):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2]}]}
    return decode_infer_request(json.dumps({**body, **fields}).encode(), None, LIMITS)


def _doubling(stream, header, raws):
    """A worker that answers y = 2x."""
    x = np.frombuffer(raws[0], np.float32)
    meta = header.inputs[0]
    return [type(meta)("y", "FP32", meta.shape)], [(x * 2).tobytes()]


def _service(worker=_doubling, **options) -> tuple[InferenceService, MemoryLane]:
    lane = MemoryLane(worker, delay_s=options.pop("delay_s", 0.0))
    service = InferenceService(
        lane,
        None,
        Keys("t"),
        default_timeout_ms=options.pop("default_timeout_ms", 2000),
        max_timeout_s=options.pop("max_timeout_s", 30.0),
    )
    return service, lane


def _key(priority: int = 0) -> KeyRecord:
    return KeyRecord(
        id="k1",
        secret_hash="0",
        name="k",
        scopes=["infer"],
        priority=priority,
        created_at=datetime.now(UTC),
    )


async def test_outputs_come_back_as_the_worker_computed_them():
    service, lane = _service()
    answer = await service.infer(_spec(), _request(), "r1")
    (y,) = answer.outputs
    assert (y.name, y.datatype, y.shape) == ("y", "FP32", (1, 2))
    assert np.frombuffer(y.raw, np.float32).tolist() == [3.0, -4.0]
    assert answer.cache is None  # the model does not use the response cache
    (call,) = lane.calls
    assert call.stream == "t:q:m:3:hi" and call.header.request_id == "r1"


@pytest.mark.parametrize(
    ("asked", "key_priority", "model_default", "stream_lane"),
    [
        (None, 0, 0, "hi"),  # nothing said: Triton's default level, the high lane
        (None, 0, 2, "lo"),  # the model's default_priority_level
        (1, 0, 2, "hi"),  # the call's own
        (1, 2, 0, "lo"),  # no call is more urgent than its key allows
        (None, 2, 0, "lo"),  # the key's, when the call says nothing
        (3, 1, 0, "lo"),  # less urgent than the key's floor is allowed
    ],
)
async def test_the_lane_follows_call_key_and_model_priorities(
    asked, key_priority, model_default, stream_lane
):
    service, lane = _service()
    fields = {} if asked is None else {"parameters": {"priority": asked}}
    spec = _spec(default_priority_level=model_default)
    await service.infer(spec, _request(**fields), "r", _key(key_priority))
    assert lane.calls[0].stream.endswith(f":{stream_lane}")


@pytest.mark.parametrize(
    ("timeout_us", "model_ms", "expected_s"),
    [(None, None, 2.0), (None, 500, 0.5), (250_000, 500, 0.25), (90_000_000, None, 30.0)],
)
async def test_the_wait_is_the_calls_then_the_models_then_the_default_never_past_the_cap(
    timeout_us, model_ms, expected_s
):
    service, lane = _service()
    fields = {} if timeout_us is None else {"parameters": {"timeout": timeout_us}}
    await service.infer(_spec(timeout_ms=model_ms), _request(**fields), "r")
    assert lane.calls[0].timeout_s == pytest.approx(expected_s)


async def test_a_request_the_model_cannot_take_never_reaches_the_lane():
    service, lane = _service()
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    request = decode_infer_request(json.dumps(body).encode(), None, LIMITS)
    with pytest.raises(BadRequest, match="unknown input 'z'"):
        await service.infer(_spec(), request, "r")
    assert lane.calls == []


async def test_lane_errors_reach_the_caller_unchanged():
    def refusing(stream, header, raws):
        raise Unavailable("no worker serves m:3")

    service, _ = _service(refusing)
    with pytest.raises(Unavailable, match="no worker serves"):
        await service.infer(_spec(), _request(), "r")
    slow, _ = _service(delay_s=1.0)
    with pytest.raises(DeadlineExceeded):
        await slow.infer(_spec(), _request(parameters={"timeout": 50_000}), "r")


async def test_a_caller_that_leaves_stops_waiting():
    service, _ = _service(delay_s=5.0)
    left = asyncio.Event()

    async def departure():
        await left.wait()

    task = asyncio.create_task(service.infer(_spec(), _request(), "r", None, departure))
    await asyncio.sleep(0.05)
    left.set()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(task, 1.0)
