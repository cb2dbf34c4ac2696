"""Submit, poll and fetch: JSON, binary, large batches, models without a batch dimension."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http

from tests.support.jobs import wait_job

pytestmark = pytest.mark.integration


def _mlp(appliance, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(appliance.model_repo / "mlp" / "1" / "model.onnx"))
    return session.run(None, {"x": x})[0]


def _v2_json(x: np.ndarray, name: str = "x", **extra) -> dict:
    return {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        **extra,
    }


def test_json_job_answers_like_infer(jobs_appliance, jobs_http):
    x = np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 64)
    response = jobs_http.post("/v2/models/mlp/jobs", json=_v2_json(x, id="req-7"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert body["state"] == "queued"
    job = wait_job(jobs_http, body["job_id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1 and job["attempts"] == 1 and job["rows_done"] == 3
    assert job["started_at"] and job["finished_at"] and job["expires_at"]
    result = jobs_http.get(body["result_url"])
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    answer = result.json()
    assert answer["id"] == "req-7" and answer["model_name"] == "mlp"
    infer = jobs_http.post("/v2/models/mlp/infer", json=_v2_json(x)).json()
    assert answer["outputs"] == infer["outputs"]


def test_binary_job_with_tritonclient_encoding(jobs_appliance, jobs_http):
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    tensor = triton_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    wanted = triton_http.InferRequestedOutput("y", binary_data=True)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        [tensor], outputs=[wanted]
    )
    response = jobs_http.post(
        "/v2/models/mlp/versions/1/jobs",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert response.status_code == 202, response.text
    job = wait_job(jobs_http, response.json()["job_id"])
    assert job["state"] == "succeeded", job
    result = jobs_http.get(response.json()["result_url"])
    assert result.headers["content-type"] == "application/octet-stream"
    parsed = triton_http.InferResult.from_response_body(
        result.content, header_length=int(result.headers["inference-header-content-length"])
    )
    np.testing.assert_allclose(parsed.as_numpy("y"), _mlp(jobs_appliance, x), rtol=1e-5, atol=1e-6)


def test_a_batch_larger_than_the_model_takes_runs_in_chunks(jobs_appliance, jobs_http):
    # mlp takes at most 64 rows per call; a job splits 1000 rows into chunks and joins them.
    x = np.random.default_rng(4).standard_normal((1000, 64)).astype(np.float32)
    assert jobs_http.post("/v2/models/mlp/infer", json=_v2_json(x)).status_code == 400
    response = jobs_http.post(
        "/v2/models/mlp/jobs", json=_v2_json(x, parameters={"binary_data_output": True})
    )
    assert response.status_code == 202, response.text
    job = wait_job(jobs_http, response.json()["job_id"])
    assert job["state"] == "succeeded" and job["rows_total"] == 1000, job
    result = jobs_http.get(response.json()["result_url"])
    parsed = triton_http.InferResult.from_response_body(
        result.content, header_length=int(result.headers["inference-header-content-length"])
    )
    np.testing.assert_allclose(parsed.as_numpy("y"), _mlp(jobs_appliance, x), rtol=1e-5, atol=1e-5)


def test_model_without_batch_dimension_and_bytes(jobs_appliance, jobs_http):
    fixed = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": list(range(6))}]}
    response = jobs_http.post("/v2/models/fixed/jobs", json=fixed)
    assert response.status_code == 202, response.text
    strings = {
        "inputs": [{"name": "in_BYTES", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "bé"]}]
    }
    second = jobs_http.post("/v2/models/strings/jobs", json=strings)
    assert second.status_code == 202, second.text
    assert wait_job(jobs_http, response.json()["job_id"])["state"] == "succeeded"
    assert wait_job(jobs_http, second.json()["job_id"])["state"] == "succeeded"
    out = jobs_http.get(response.json()["result_url"]).json()["outputs"][0]
    assert out["data"] == [0, 2, 4, 6, 8, 10]
    out = jobs_http.get(second.json()["result_url"]).json()["outputs"][0]
    assert out["data"] == ["a", "bé"]
