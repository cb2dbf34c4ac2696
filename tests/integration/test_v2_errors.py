"""Bad requests get a clear 4xx, never become queue entries, and leave the connection usable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def _added(appliance, model: str, version: int = 1) -> int:
    """Entries ever added to a model's high-priority stream (XINFO's ``entries-added``)."""
    stream = appliance.keys.stream(model, version, "hi")
    return appliance.redis.xinfo_stream(stream)["entries-added"]


def _input(**overrides):
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
    tensor.update(overrides)
    return {"inputs": [tensor]}


BAD_BODIES = {
    "wrong datatype": _input(datatype="FP64"),
    "wrong rank": _input(shape=[64]),
    "wrong fixed dimension": _input(shape=[1, 63], data=[0.5] * 63),
    "element count": _input(data=[0.5] * 63),
    "unknown input": {
        "inputs": [
            *_input()["inputs"],
            {"name": "z", "datatype": "FP32", "shape": [1], "data": [1]},
        ]
    },
    "missing input": {"inputs": []},
    "unknown output": {**_input(), "outputs": [{"name": "nope"}]},
    "string in float data": _input(data=["a"] * 64),
    "huge dimension": _input(shape=[1, 10**9]),
    "batch above max_batch_size": _input(shape=[65, 64], data=[0.5] * 65 * 64),
    "zero batch": _input(shape=[0, 64], data=[]),
    "bad timeout": {**_input(), "parameters": {"timeout": "soon"}},
    "inputs not a list": {"inputs": 3},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_json_requests_are_400_and_never_queued(appliance, http, body):
    http.post("/v2/models/mlp/infer", json=GOOD).raise_for_status()
    before = _added(appliance, "mlp")
    response = http.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert _added(appliance, "mlp") == before
    # The same keep-alive connection still serves a good request.
    assert http.post("/v2/models/mlp/infer", json=GOOD).status_code == 200


BAD_RAW = {
    "malformed json": (b'{"inputs": [', None),
    "not an object": (b"[1, 2]", None),
    "header length past the body": (json.dumps(GOOD).encode(), 10_000),
    "header length not a number": (json.dumps(GOOD).encode(), "ten"),
    "binary section too short": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        ).encode()
        + b"\0" * 100,
        "HEADER",
    ),
    "binary size disagrees with shape": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            }
        ).encode()
        + b"\0" * 8,
        "HEADER",
    ),
}


@pytest.mark.parametrize("case", BAD_RAW.values(), ids=BAD_RAW.keys())
def test_malformed_framing_is_400(appliance, http, case):
    body, header_length = case
    headers = {}
    if header_length == "HEADER":
        header_length = body.index(b"}]}") + 3
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    before = _added(appliance, "mlp")
    response = http.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert _added(appliance, "mlp") == before


def test_unknown_model_and_version_are_404(http):
    for path in (
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/config",
        "/v2/models/mlp/versions/9",
        "/v2/models/mlp/versions/latest/ready",
    ):
        response = http.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json()
    response = http.post("/v2/models/nope/infer", json=GOOD)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown model 'nope'"


def test_unknown_route_answers_json(http):
    response = http.get("/v2/nothing/here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_tritonclient_sees_the_error_message(appliance):
    with appliance.triton() as client:
        tensor = triton.InferInput("x", [1, 64], "FP64")
        tensor.set_data_from_numpy(np.zeros((1, 64)))
        with pytest.raises(InferenceServerException, match="datatype FP64"):
            client.infer("mlp", [tensor])


def test_broken_model_is_not_ready_with_its_reason_and_others_serve(http):
    response = http.get("/v2/models/broken/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "failed to load" in response.json()["error"]
    assert "INVALID_PROTOBUF" in response.json()["error"]
    # The model file's place on the worker is not the caller's business (the worker logs it).
    assert "Load model from <path> failed" in response.json()["error"]
    response = http.post("/v2/models/broken/infer", json=GOOD)
    assert response.status_code == 503
    assert "not ready" in response.json()["error"]
    assert http.post("/v2/models/mlp/infer", json=GOOD).status_code == 200


def test_non_utf8_bytes_are_rejected_before_queueing(appliance, http):
    raw = len(b"\xff\xfe").to_bytes(4, "little") + b"\xff\xfe"
    header = {
        "inputs": [
            {
                "name": "in_BYTES",
                "datatype": "BYTES",
                "shape": [1, 1],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    head = json.dumps(header).encode()
    before = _added(appliance, "strings")
    response = http.post(
        "/v2/models/strings/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 400
    assert "UTF-8" in response.json()["error"]
    assert _added(appliance, "strings") == before
