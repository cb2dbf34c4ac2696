"""The whole path with the Ray worker in the local worker's place: registry, API, tritonclient."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http

from inferbox.testing import onnx_models
from tests.support.appliance import BearerAuth, appliance_env
from tests.support.processes import free_port, run_cli, start_inferbox, stop_process
from tests.support.redis import delete_prefix
from tests.support.scaleout import NAMESPACE
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_tritonclient_answers_and_jobs_come_from_ray_actors(
    redis_client, ray_cluster, make_database, s3_endpoint, tmp_path_factory
):
    repo = tmp_path_factory.mktemp("api-models")
    path = onnx_models.mlp(repo / "mlp" / "1" / "model.onnx")
    prefix = f"ibtest-rayapi-{uuid.uuid4().hex[:8]}"
    api_port, metrics_port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("api-logs")
    env = appliance_env(
        prefix,
        make_database(),
        s3_endpoint,
        INFERBOX_API_BIND=f"127.0.0.1:{api_port}",
        INFERBOX_WORKER_METRICS_PORT=str(metrics_port),
        INFERBOX_STATUS_CACHE_S="0.2",
        INFERBOX_WORKER_CACHE_DIR=str(tmp_path_factory.mktemp("api-cache")),
        INFERBOX_UPLOAD_DIR=str(tmp_path_factory.mktemp("api-uploads")),
        INFERBOX_WORKER_CAPACITY_SWEEP_S="0",
        INFERBOX_RAY_ADDRESS=ray_cluster,
        INFERBOX_RAY_NAMESPACE=NAMESPACE,
        INFERBOX_RAY_ACTOR_GPUS="0",
    )
    run_cli(["migrate"], env)
    key_file = tmp_path_factory.mktemp("api-secrets") / "admin.key"
    run_cli(["keys", "bootstrap", "--file", str(key_file)], env)
    api_key = key_file.read_text().strip()
    # The model goes through the registry: the Ray worker fetches it from S3 by sha256 and ships
    # it to the actor through Ray's object store.
    run_cli(["models", "import", str(repo)], env)
    procs = [
        start_inferbox(["ray-worker"], env, logs / "ray-worker.log"),
        start_inferbox(["api"], env, logs / "api.log"),
    ]
    url = f"http://127.0.0.1:{api_port}"

    def ready():
        for proc in procs:
            assert proc.poll() is None, f"a process exited; logs in {logs}"
        try:
            answer = httpx.get(
                f"{url}/v2/models/mlp/ready", headers={"Authorization": f"Bearer {api_key}"}
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    try:
        wait_for(ready, 60, "mlp to be ready behind the API", interval=0.2)
        client = triton_http.InferenceServerClient(url.removeprefix("http://"))
        client.register_plugin(BearerAuth(api_key))
        x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("mlp", [tensor]).as_numpy("y")
        client.close()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(result, session.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'inferbox_ray_replicas{model="mlp",version="1"} 1.0' in metrics
        assert 'inferbox_worker_calls_total{model="mlp",outcome="ok",version="1"} 1.0' in metrics

        # An async job: the Ray worker's job lane runs it, its chunks run on the actors.
        rows = np.random.default_rng(5).standard_normal((300, 64)).astype(np.float32)
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [300, 64], "data": rows.ravel().tolist()}
            ]
        }
        auth = {"Authorization": f"Bearer {api_key}"}
        job = httpx.post(f"{url}/v2/models/mlp/jobs", json=body, headers=auth).json()
        wait_for(
            lambda: (
                httpx.get(f"{url}{job['status_url']}", headers=auth).json()["state"]
                in ("succeeded", "failed")
            ),
            60,
            "the job to end",
        )
        state = httpx.get(f"{url}{job['status_url']}", headers=auth).json()
        assert state["state"] == "succeeded", state
        answer = httpx.get(f"{url}{job['result_url']}", headers=auth).json()
        got = np.array(answer["outputs"][0]["data"], np.float32).reshape(300, 10)
        np.testing.assert_allclose(got, session.run(None, {"x": rows})[0], rtol=1e-5, atol=1e-5)
    finally:
        for proc in procs:
            stop_process(proc)
        delete_prefix(redis_client, prefix)
