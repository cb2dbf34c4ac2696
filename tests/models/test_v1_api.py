"""The control plane: upload, versions, aliases, config, delete, repository extension, CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inferbox.client import InferboxClient
from inferbox.testing import onnx_models
from tests.registry.bad_models import CORPUS
from tests.support.processes import run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)


@pytest.fixture
def name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def client(appliance):
    c = InferboxClient(appliance.url, api_key=appliance.api_key)
    yield c
    c.close()


def _expected(path) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"x": X})[0]


def _wait_ready(http, name: str, version: int | str | None = None) -> None:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
    wait_for(lambda: http.get(path).status_code == 200, 30, f"{name} to be ready", 0.1)


def _answer(http, name: str, version: str | None = None) -> tuple[str, np.ndarray]:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}]
    }
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return data["model_version"], np.array(data["outputs"][0]["data"], np.float32).reshape(1, 10)


def test_push_serve_alias_and_delete(appliance, http, client, name, tmp_path):
    v1 = onnx_models.mlp(tmp_path / "v1.onnx", seed=11)
    v2 = onnx_models.mlp(tmp_path / "v2.onnx", seed=12)
    pushed = client.push(v1, name, alias="production")
    assert pushed["version"] == 1 and pushed["name"] == name and len(pushed["sha256"]) == 64
    _wait_ready(http, name)
    assert _answer(http, name)[0] == "1"
    np.testing.assert_allclose(_answer(http, name)[1], _expected(v1), rtol=1e-5)

    # Multipart upload of the second version.
    with v2.open("rb") as handle:
        response = http.post(f"/v1/models/{name}/versions", files={"file": ("model.onnx", handle)})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/models/{name}/versions/2"
    _wait_ready(http, name, 2)
    # production still points at 1; version 2 answers by number.
    assert _answer(http, name)[0] == "1"
    assert _answer(http, name, "2")[0] == "2"
    assert _answer(http, name, "production")[0] == "1"

    shown = client.model(name)
    assert shown["aliases"] == {"production": 1}
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert any(w["state"] == "ready" for w in shown["versions"][0]["workers"].values())
    assert name in {m["name"] for m in client.models()}

    # Deleting an aliased version is refused with problem details; force removes the alias.
    response = http.delete(f"/v1/models/{name}/versions/1")
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 409 and "production" in problem["detail"]
    client.set_alias(name, "production", 2)
    wait_for(lambda: _answer(http, name)[0] == "2", 5, "production to move")
    client.delete_version(name, 1)
    wait_for(
        lambda: http.get(f"/v2/models/{name}/versions/1").status_code == 404, 5, "the deletion"
    )
    assert [v["version"] for v in client.model(name)["versions"]] == [2]


def test_problem_details_for_unknown_things(http):
    for method, path in (
        ("GET", "/v1/models/nope"),
        ("GET", "/v1/models/nope/versions/1"),
        ("DELETE", "/v1/models/nope/aliases/production"),
    ):
        response = http.request(method, path)
        assert response.status_code == 404, path
        body = response.json()
        assert set(body) >= {"type", "title", "status", "detail", "instance"}
        assert body["instance"] == path


def test_invalid_names_and_config_are_400(http, client, name, tmp_path):
    model = onnx_models.mlp(tmp_path / "m.onnx")
    response = http.post("/v1/models/Bad Name!/versions", content=model.read_bytes())
    assert response.status_code in (400, 404)
    client.push(model, name)
    response = http.patch(f"/v1/models/{name}/versions/1/config", json={"max_batch_size": -3})
    assert response.status_code == 400
    assert "max_batch_size" in response.json()["detail"]
    response = http.patch(f"/v1/models/{name}/versions/1/config", json={"no_such_knob": 1})
    assert response.status_code == 400
    response = http.patch(
        f"/v1/models/{name}/versions/1/config", json={"max_queue_delay_microseconds": 500}
    )
    assert response.status_code == 200
    assert response.json()["config"]["max_queue_delay_microseconds"] == 500
    _wait_ready(http, name, 1)
    config = http.get(f"/v2/models/{name}/config").json()
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500


@pytest.mark.parametrize(("build", "reason"), CORPUS, ids=[build.__name__ for build, _ in CORPUS])
def test_bad_uploads_are_422_and_leave_nothing_behind(
    appliance, http, client, tmp_path, build, reason
):
    name = "serving-" + uuid.uuid4().hex[:6]
    client.push(onnx_models.mlp(tmp_path / "good.onnx"), name, alias="production")
    _wait_ready(http, name)
    bad = build(tmp_path)
    response = http.post(f"/v1/models/{name}/versions", content=bad.read_bytes())
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert [v["version"] for v in client.model(name)["versions"]] == [1]
    assert _answer(http, name)[0] == "1"
    uploads = Path(appliance.env["INFERBOX_UPLOAD_DIR"])
    assert not any(uploads.iterdir())


def test_triton_repository_extension(appliance, http, client, name, tmp_path):
    client.push(onnx_models.mlp(tmp_path / "m.onnx"), name)
    _wait_ready(http, name)
    with appliance.triton() as tc:
        index = {(m["name"], m["version"]): m for m in tc.get_model_repository_index()}
        assert index[(name, "1")]["state"] == "READY"
        tc.unload_model(name)
        wait_for(lambda: not tc.is_model_ready(name), 10, "the model to unload")
        # Each API process caches readiness briefly: wait until the one answering agrees.
        response = wait_for(
            lambda: (r := http.get(f"/v2/models/{name}/ready")).status_code == 503 and r,
            5,
            "every API process to see the unload",
        )
        assert "unloaded" in response.json()["error"]
        tc.load_model(name)
        wait_for(lambda: tc.is_model_ready(name), 30, "the model to load again")


def test_capacity_card_and_proposal(appliance, http, client, name, tmp_path):
    client.push(onnx_models.mlp(tmp_path / "m.onnx"), name)
    _wait_ready(http, name)
    wait_for(lambda: client.version(name, 1)["capacity"] is not None, 30, "the capacity sweep")
    card = client.version(name, 1)["capacity"]
    assert [p["batch_size"] for p in card["points"]][:3] == [1, 2, 4]
    response = http.get(f"/v1/models/{name}/versions/1/capacity", params={"latency_ms": 50})
    proposal = response.json()["proposal"]
    assert 1 <= proposal["max_batch_size"] <= 64
    assert proposal["expected_p95_ms"] <= 50 or proposal["max_batch_size"] == 1


def test_cli_push_ls_alias_infer(appliance, name, tmp_path):
    model = onnx_models.mlp(tmp_path / "m.onnx", seed=5)
    env = {**appliance.env, "INFERBOX_URL": appliance.url}
    assert "version 1" in run_cli(["models", "push", str(model), "--name", name], env)
    run_cli(["alias", "set", name, "production", "1"], env)
    listing = run_cli(["models", "ls"], env)
    assert name in listing and "production=1" in listing
    np.save(tmp_path / "x.npy", X)
    wait_for(lambda: appliance_ready(appliance, name), 30, "the pushed model to be ready")
    out = json.loads(run_cli(["infer", name, "--input", f"x={tmp_path / 'x.npy'}"], env))
    np.testing.assert_allclose(np.array(out["y"]["data"], np.float32), _expected(model), rtol=1e-5)


def appliance_ready(appliance, name: str) -> bool:
    import httpx

    url = f"{appliance.url}/v2/models/{name}/ready"
    return httpx.get(url, headers=appliance.headers).status_code == 200
