"""Jobs over uploaded input files: .npy (100k rows), .npz, JSON lines; their bad variants."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http

from tests.support.jobs import wait_job

pytestmark = pytest.mark.integration


def _upload(http, data: bytes, fmt: str | None = None, **params):
    query = {"format": fmt, **params} if fmt else params
    return http.post("/v1/jobs/inputs", content=data, params=query)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _result_arrays(http, job_id: str) -> dict[str, np.ndarray]:
    result = http.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200, result.text
    parsed = triton_http.InferResult.from_response_body(
        result.content, header_length=int(result.headers["inference-header-content-length"])
    )
    return {out["name"]: parsed.as_numpy(out["name"]) for out in parsed.get_response()["outputs"]}


@pytest.mark.slow
def test_npy_file_of_100k_rows(jobs_appliance, jobs_http):
    x = np.random.default_rng(7).standard_normal((100_000, 64)).astype(np.float32)
    uploaded = _upload(jobs_http, _npy(x), "npy")
    assert uploaded.status_code == 201, uploaded.text
    info = uploaded.json()
    assert info["rows"] == 100_000 and info["arrays"] == {
        "arr_0": {"datatype": "FP32", "shape": [64]}
    }
    assert jobs_http.get(f"/v1/jobs/inputs/{info['input_id']}").json()["rows"] == 100_000
    response = jobs_http.post("/v2/models/mlp/jobs", json={"input_id": info["input_id"]})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    progress = []
    job = wait_job(jobs_http, job_id, timeout=180, states=("running", "succeeded", "failed"))
    while job["state"] == "running":
        progress.append(job["progress"])
        job = wait_job(jobs_http, job_id, timeout=180)
    assert job["state"] == "succeeded", job
    assert job["rows_done"] == job["rows_total"] == 100_000
    assert progress == sorted(progress)
    y = _result_arrays(jobs_http, job_id)["y"]
    session = ort.InferenceSession(str(jobs_appliance.model_repo / "mlp" / "1" / "model.onnx"))
    np.testing.assert_allclose(y, session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_npz_and_jsonl_files(jobs_appliance, jobs_http):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    b = np.ones((10, 4), dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, INPUT0=a, INPUT1=b)
    npz = _upload(jobs_http, buffer.getvalue(), filename="inputs.npz")
    assert npz.status_code == 201, npz.text
    lines = "\n".join(json.dumps({"INPUT0": row.tolist(), "INPUT1": [1, 1, 1, 1]}) for row in a)
    jsonl = _upload(jobs_http, lines.encode(), "jsonl")
    assert jsonl.status_code == 201, jsonl.text
    assert jsonl.json()["rows"] == 10
    ids = []
    for uploaded in (npz, jsonl):
        response = jobs_http.post(
            "/v2/models/add_sub/jobs",
            json={"input_id": uploaded.json()["input_id"], "outputs": ["OUTPUT0"]},
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    for job_id in ids:
        assert wait_job(jobs_http, job_id)["state"] == "succeeded"
        outputs = _result_arrays(jobs_http, job_id)
        assert list(outputs) == ["OUTPUT0"]
        np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"not an array", "npy", "not a .npy array"),
        (b"PK\x03\x04 broken", "npz", "not a .npz archive"),
        (b'{"x": [1, 2]}\n{"x": ', "jsonl", "line 2 is not valid JSON"),
        (b"[1, 2]\n", "jsonl", "line 1 is not a JSON object"),
        (b'{"x": 1}\n{"y": 1}\n', "jsonl", "line 2 has inputs"),
        (b"\n\n", "jsonl", "no rows"),
        (_npy(np.array([{"a": 1}], dtype=object)), "npy", "object arrays"),
        (_npy(np.float32(3.0)), "npy", "scalar"),
    ],
)
def test_malformed_input_files_are_refused(jobs_http, data, fmt, message):
    response = _upload(jobs_http, data, fmt)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_input_files_that_do_not_fit_the_model(jobs_http):
    assert _upload(jobs_http, b"{}", None).status_code == 400  # no format given
    assert _upload(jobs_http, b"{}", "csv").status_code == 400
    wrong_type = _upload(jobs_http, _npy(np.zeros((4, 64), np.float64)), "npy").json()
    wrong_shape = _upload(jobs_http, _npy(np.zeros((4, 63), np.float32)), "npy").json()
    for uploaded, message in ((wrong_type, "datatype FP64"), (wrong_shape, "shape [63]")):
        response = jobs_http.post("/v2/models/mlp/jobs", json={"input_id": uploaded["input_id"]})
        assert response.status_code == 400 and message in response.json()["error"], response.text
    fits = _upload(jobs_http, _npy(np.zeros((4, 64), np.float32)), "npy").json()
    response = jobs_http.post("/v2/models/fixed/jobs", json={"input_id": fits["input_id"]})
    assert response.status_code == 400 and "no batch dimension" in response.json()["error"]
    response = jobs_http.post("/v2/models/mlp/jobs", json={"input_id": "in_" + "0" * 24})
    assert response.status_code == 404
    response = jobs_http.post(
        "/v2/models/mlp/jobs", json={"input_id": fits["input_id"], "outputs": ["nope"]}
    )
    assert response.status_code == 400 and "unknown output" in response.json()["error"]
    response = jobs_http.post(
        "/v2/models/mlp/jobs", json={"input_id": fits["input_id"], "surprise": 1}
    )
    assert response.status_code == 400, response.text
