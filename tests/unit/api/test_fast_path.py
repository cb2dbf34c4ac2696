"""``InferenceFastPath`` without Redis: the ASGI app in front of Litestar, its state filled with
an ``InferenceService`` over a ``MemoryLane`` and a directory of one model."""

from __future__ import annotations

import asyncio
import json
import struct

import httpx
import numpy as np
import pytest

from inferbox.api.app import create_app
from inferbox.api.infer import InferenceFastPath
from inferbox.config import Settings
from inferbox.errors import NotFound, Unavailable
from inferbox.inference.service import InferenceService
from inferbox.inference.validation import tensor_limits
from inferbox.keys import Keys
from inferbox.lanes.memory import MemoryLane
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec

pytestmark = pytest.mark.unit

SPEC = ModelSpec(
    name="double",
    version=2,
    path="",
    sha256="0",
    size=0,
    inputs=[TensorSpec("x", "FP32", [-1, 2])],
    outputs=[TensorSpec("y", "FP32", [-1, 2])],
    config=ModelConfig(max_batch_size=8),
)


class _Directory:
    """One model, always ready, unless ``down`` says why not."""

    def __init__(self) -> None:
        self.down: str | None = None

    async def resolve(self, name: str, version: str | None = None) -> ModelSpec:
        if name != SPEC.name or version not in (None, "2"):
            raise NotFound(f"unknown model {name!r}")
        return SPEC

    async def admit(self, spec: ModelSpec) -> None:
        if self.down:
            raise Unavailable(self.down)


def _doubling(stream, header, raws):
    meta = header.inputs[0]
    doubled = np.frombuffer(raws[0], np.float32) * 2
    return [type(meta)("y", "FP32", meta.shape)], [doubled.tobytes()]


@pytest.fixture
def served():
    settings = Settings(auth_enabled=False)
    app = create_app(settings)
    lane = MemoryLane(_doubling)
    directory = _Directory()
    app.state.update(
        settings=settings,
        gate=None,
        directory=directory,
        limits=tensor_limits(settings),
        decode_slots=asyncio.Semaphore(2),
        inference=InferenceService(
            lane, directory, Keys("t"), default_timeout_ms=1000, max_timeout_s=10
        ),
    )
    front = InferenceFastPath(app)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://t")
    return client, lane, directory


BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2]}]}


async def test_json_in_json_out(served):
    client, lane, _ = served
    response = await client.post("/v2/models/double/infer", json={**BODY, "id": "r7"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r7" and body["model_version"] == "2"
    assert body["outputs"][0]["data"] == [3.0, -4.0]
    assert response.headers["x-request-id"]
    assert lane.calls[0].stream == "t:q:double:2:hi"


async def test_binary_tensors_in_and_out(served):
    client, _, _ = served
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 8},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = await client.post(
        "/v2/models/double/versions/2/infer",
        content=header + struct.pack("<2f", 1.0, 2.0),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    assert struct.unpack("<2f", response.content[json_length:]) == (2.0, 4.0)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/models/double/infer", 405),
        ("POST", "/v2/models/nope/infer", 404),
        ("POST", "/v2//models/double/infer", 400),  # not canonical: refused before anything
        ("POST", "/v2/models/%64ouble/infer", 400),
        ("POST", "/v2/models/double/%2e%2e/double/infer", 400),
    ],
)
async def test_refusals_are_4xx_in_the_protocols_error_shape(served, method, path, status):
    client, lane, _ = served
    response = await client.request(method, path, json=BODY)
    assert response.status_code == status, response.text
    assert "error" in response.json() or "detail" in response.json()
    assert lane.calls == []


async def test_a_body_the_model_cannot_take_is_a_400_and_never_queued(served):
    client, lane, _ = served
    bad = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]}
    response = await client.post("/v2/models/double/infer", json=bad)
    assert response.status_code == 400 and "INT64" in response.json()["error"]
    assert lane.calls == []


async def test_a_model_not_served_now_is_a_503_with_retry_after(served):
    client, _, directory = served
    directory.down = "no worker serves model 'double' version 2"
    response = await client.post("/v2/models/double/infer", json=BODY)
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "no worker" in response.json()["error"]


async def test_metrics_are_answered_here_and_other_routes_go_to_litestar(served):
    client, _, _ = served
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and b"inferbox_" in metrics.content
    assert (await client.get("/v2/health/live")).status_code == 200
