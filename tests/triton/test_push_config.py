"""A model pushed with its config.pbtxt (CLI and HTTP), and one whose config does not fit."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inferbox.testing import onnx_models
from tests.support.processes import run_cli
from tests.support.waiting import wait_for
from tests.triton.repository import CONFIGS

pytestmark = pytest.mark.integration


def test_cli_push_with_a_config_pbtxt(triton_appliance, tmp_path):
    appliance = triton_appliance.appliance
    model = onnx_models.mlp(tmp_path / "model.onnx", inputs=16, outputs=4, seed=9)
    config = tmp_path / "config.pbtxt"
    config.write_text(CONFIGS["rows"].replace('name: "rows"', 'name: "pushedrows"'))
    env = {**appliance.env, "INFERBOX_URL": appliance.url}
    out = run_cli(
        ["models", "push", str(model), "--name", "pushedrows", "--triton-config", str(config)], env
    )
    assert "pushedrows version 1" in out
    auth = {"authorization": f"Bearer {appliance.api_key}"}
    with grpcclient.InferenceServerClient(triton_appliance.grpc_url) as client:
        wait_for(lambda: client.is_model_ready("pushedrows", headers=auth), 30, "pushedrows")
        config_json = client.get_model_config("pushedrows", headers=auth, as_json=True)["config"]
        assert config_json.get("max_batch_size", 0) == 0
        x = np.ones((1000, 16), np.float32)
        item = grpcclient.InferInput("x", [1000, 16], "FP32")
        item.set_data_from_numpy(x)
        assert client.infer("pushedrows", [item], headers=auth).as_numpy("y").shape == (1000, 4)


def test_http_push_refuses_a_config_that_does_not_fit(triton_appliance, tmp_path):
    appliance = triton_appliance.appliance
    model = onnx_models.mlp(tmp_path / "model.onnx", inputs=16, outputs=4, seed=10)
    response = httpx.post(
        f"{appliance.url}/v1/models/misfit/versions",
        params={"triton_config": CONFIGS["wrongtype"]},
        content=model.read_bytes(),
        headers={**appliance.headers, "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == (
        "input 'x': config.pbtxt says TYPE_INT32, the ONNX graph has FP32"
    )
    garbled = httpx.post(
        f"{appliance.url}/v1/models/misfit/versions",
        params={"triton_config": "max_batch_size: [[["},
        content=model.read_bytes(),
        headers={**appliance.headers, "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert garbled.status_code == 400
    assert garbled.json()["detail"].startswith("invalid config.pbtxt: 1:")
