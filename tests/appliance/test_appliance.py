"""The compose appliance as a user meets it, through nginx over HTTPS on 127.0.0.1.

Runs against what ``scripts/appliance up`` started (``scripts/appliance test`` points
INFERBOX_APPLIANCE_ENV at its ``.appliance/env``); skipped otherwise. The tests run in file
order: later ones restart and recreate containers and rely on the model and job made earlier.
"""

from __future__ import annotations

import functools
import json
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from inferbox.testing import onnx_models

pytestmark = [pytest.mark.appliance, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = ROOT / "scripts" / "appliance"
ENV_FILE = os.environ.get("INFERBOX_APPLIANCE_ENV")
INFERBOX = str(Path(sys.executable).with_name("inferbox"))
MODEL = "appliance-mlp"
X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)

if not ENV_FILE:
    pytest.skip(
        "no appliance (run scripts/appliance up, then scripts/appliance test)",
        allow_module_level=True,
    )


def read_env() -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in Path(ENV_FILE).read_text().splitlines() if "=" in line
    )


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25) -> float:
    """Seconds it took until ``predicate()`` was true (an exception counts as false)."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def appliance(*args: str, timeout: float = 600, **env: str) -> str:
    done = subprocess.run(
        [str(APPLIANCE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, (
        f"scripts/appliance {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [INFERBOX, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"inferbox {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def http(env: dict[str, str]) -> httpx.Client:
    return httpx.Client(
        base_url=env["INFERBOX_URL"],
        verify=ssl.create_default_context(cafile=env["INFERBOX_CA_CERT"]),
        headers={"Authorization": f"Bearer {env['INFERBOX_API_KEY']}"},
        timeout=30,
    )


def key_header(env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['INFERBOX_API_KEY']}"}


def triton_client(env: dict[str, str]) -> triton.InferenceServerClient:
    """tritonclient's HTTP client through nginx, trusting the appliance's CA."""
    host = env["INFERBOX_URL"].removeprefix("https://")
    return triton.InferenceServerClient(
        host, ssl=True, ssl_options={"ca_certs": env["INFERBOX_CA_CERT"]}
    )


def infer_json(client: httpx.Client) -> list[float]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}]
    }
    response = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def serving(client: httpx.Client, calls: int = 8) -> bool:
    """``calls`` calls in a row answered right (every replica and API process in turn: one that
    started before the worker answers 503 with Retry-After until it sees the worker)."""
    return all(np.allclose(infer_json(client), expected().ravel(), rtol=1e-5) for _ in range(calls))


@functools.cache
def expected() -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model_file())).run(None, {"x": X})[0]


def model_file() -> Path:
    path = Path(ENV_FILE).parent / "test-model.onnx"
    if not path.exists():
        onnx_models.mlp(path, seed=71)
    return path


@pytest.fixture
def env() -> dict[str, str]:
    return read_env()


def test_up_wrote_the_env_file(env):
    assert env["INFERBOX_URL"].startswith("https://127.0.0.1:")
    assert "BEGIN CERTIFICATE" in Path(env["INFERBOX_CA_CERT"]).read_text()
    assert env["INFERBOX_API_KEY"]
    assert env["INFERBOX_PROMETHEUS_URL"].startswith("http://127.0.0.1:")
    with http(env) as client:
        assert client.get("/v2/health/ready").status_code == 200
        # Without a key: refused (the admin key above is the one setup made); the model list
        # takes any valid key.
        assert httpx.get(
            f"{env['INFERBOX_URL']}/v1/models",
            verify=ssl.create_default_context(cafile=env["INFERBOX_CA_CERT"]),
        ).status_code in (401, 403)


def test_push_a_model_and_call_it_with_tritonclient(env):
    out = cli(env, "models", "push", str(model_file()), "--name", MODEL, "--alias", "production")
    assert re.search(rf"{MODEL} version \d+ \(\w+\) -> production", out), out
    headers = key_header(env)
    with triton_client(env) as client:
        wait_until(lambda: client.is_model_ready(MODEL, headers=headers), 60, "the model ready")
        for binary in (False, True):
            tensor = triton.InferInput("x", [1, 64], "FP32")
            tensor.set_data_from_numpy(X, binary_data=binary)
            output = triton.InferRequestedOutput("y", binary_data=binary)
            result = client.infer(MODEL, [tensor], outputs=[output], headers=headers)
            np.testing.assert_allclose(result.as_numpy("y"), expected(), rtol=1e-5)


def test_call_it_with_tritonclient_grpc_on_the_same_port(env):
    """gRPC over TLS on the HTTPS port: ``ModelInfer`` answered by the API's fast path (nginx's
    relay), metadata and the repository by the ``grpc`` service, errors as gRPC statuses."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    headers = {"authorization": key_header(env)["Authorization"]}
    with grpcclient.InferenceServerClient(
        env["INFERBOX_URL"].removeprefix("https://"),
        ssl=True,
        root_certificates=env["INFERBOX_CA_CERT"],
    ) as client:
        assert client.is_server_live(headers=headers)
        assert client.is_model_ready(MODEL, headers=headers)
        assert client.get_model_metadata(MODEL, headers=headers).inputs[0].name == "x"
        tensor = grpcclient.InferInput("x", [1, 64], "FP32")
        tensor.set_data_from_numpy(X)
        for _ in range(4):  # every API replica and process in turn
            result = client.infer(MODEL, [tensor], headers=headers)
            np.testing.assert_allclose(result.as_numpy("y"), expected(), rtol=1e-5)
        wrong = grpcclient.InferInput("x", [1, 63], "FP32")
        wrong.set_data_from_numpy(X[:, :63].copy())
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, [wrong], headers=headers)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as anonymous:
            client.infer(MODEL, [tensor])
        assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"


def test_a_large_call_travels_through_the_shared_tensor_volume(env, tmp_path):
    """Inputs of 256 KiB and more go from an API container to the worker's through the tmpfs
    volume ``tensors`` (mounted in both, owned by inferbox's user), and come back right."""
    name = f"{MODEL}-rows"
    config = tmp_path / "config.pbtxt"
    config.write_text(f'name: "{name}"\nmax_batch_size: 4096\n')
    cli(env, "models", "push", str(model_file()), "--name", name, "--triton-config", str(config))
    rows = np.random.default_rng(2).standard_normal((4096, 64)).astype(np.float32)  # 1 MiB
    import onnxruntime as ort

    want = ort.InferenceSession(str(model_file())).run(None, {"x": rows})[0]
    headers = key_header(env)
    with triton_client(env) as client:
        wait_until(lambda: client.is_model_ready(name, headers=headers), 60, "the model ready")
        for _ in range(4):  # every API replica in turn
            tensor = triton.InferInput("x", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=True)
            output = triton.InferRequestedOutput("y", binary_data=True)
            result = client.infer(name, [tensor], outputs=[output], headers=headers)
            np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5)


def test_submit_a_job_and_fetch_its_result(env, tmp_path):
    rows = np.random.default_rng(7).standard_normal((200, 64)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    job = json.loads(
        cli(env, "jobs", "submit", MODEL, "--file", str(tmp_path / "rows.npy"), "--wait")
    )
    assert job["state"] == "succeeded" and job["rows_done"] == 200, job
    cli(env, "jobs", "result", job["id"], "--out", str(tmp_path / "result.npz"))
    import onnxruntime as ort

    with np.load(tmp_path / "result.npz") as result:
        reference = ort.InferenceSession(str(model_file())).run(None, {"x": rows})[0]
        np.testing.assert_allclose(result["y"], reference, rtol=1e-4, atol=1e-5)
    (Path(ENV_FILE).parent / "test-job-id").write_text(job["id"])


def test_the_response_cache_answers_from_its_own_redis(env):
    """A model turned to ``response_cache``: a repeated call is answered from the `cache`
    service (the header says so through nginx), whose figures the worker exports."""
    with http(env) as client:
        version = client.get(f"/v1/models/{MODEL}").json()["aliases"]["production"]
        patched = client.patch(
            f"/v1/models/{MODEL}/versions/{version}/config", json={"response_cache": True}
        )
        assert patched.status_code == 200, patched.text
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}

        def hit() -> bool:
            response = client.post(f"/v2/models/{MODEL}/infer", json=body)
            return response.status_code == 200 and response.headers["x-inferbox-cache"] == "hit"

        wait_until(hit, 90, "a call answered from the response cache", interval=0.5)

    def exported() -> bool:
        query = {"query": "max(inferbox_cache_up) * max(inferbox_cache_memory_limit_bytes)"}
        data = httpx.get(f"{env['INFERBOX_PROMETHEUS_URL']}/api/v1/query", params=query).json()
        result = data["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) > 0

    wait_until(exported, 60, "the worker to export the cache Redis's figures", interval=1)


def _redis(*command: str) -> str:
    script = 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli "$@"'
    return appliance("compose", "exec", "-T", "redis", "sh", "-c", script, "sh", *command)


def test_each_part_logs_in_to_redis_as_its_own_user_and_is_refused_nothing():
    """compose's ACL file (configs.redis-users) reached Redis, and the model and job above
    ran without one refusal in its ACL log."""
    users = sorted(_redis("ACL", "USERS").split())
    assert users == ["default", "inferbox-api", "inferbox-grpc", "inferbox-worker"]
    clients = _redis("CLIENT", "LIST")
    assert "user=inferbox-api" in clients and "user=inferbox-worker" in clients
    assert _redis("ACL", "LOG").strip() == ""


def test_no_long_running_container_can_read_the_cas_private_key():
    assert sorted(appliance("compose", "exec", "-T", "api", "ls", "/certs").split()) == [
        "ca.crt",
        "tls.crt",
    ]
    gateway = appliance("compose", "exec", "-T", "nginx", "ls", "/etc/nginx/certs").split()
    assert "tls.key" in gateway and "ca.key" not in gateway


def test_prometheus_scrapes_every_api_replica_and_the_cpu_worker(env):
    def targets() -> dict[str, list[str]]:
        data = httpx.get(f"{env['INFERBOX_PROMETHEUS_URL']}/api/v1/targets", timeout=10).json()
        found: dict[str, list[str]] = {}
        for target in data["data"]["activeTargets"]:
            found.setdefault(target["labels"]["job"], []).append(target["health"])
        return found

    def all_up() -> bool:
        found = targets()
        return (
            found.get("inferbox-api", []).count("up") >= 2
            and "up" in found.get("inferbox-worker", [])
            and "down" not in found.get("inferbox-api", []) + found.get("inferbox-worker", [])
        )

    wait_until(all_up, 60, "both API replicas and the worker up in Prometheus", interval=1)


def test_grafana_and_kibana_without_a_trailing_slash_redirect(env):
    with http(env) as client:
        for name in ("grafana", "kibana"):
            response = client.get(f"/{name}")
            assert response.status_code == 301
            assert response.headers["location"] == f"{env['INFERBOX_URL']}/{name}/"


def test_cuda_worker_image_resolves_its_libraries_and_refuses_the_cpu():
    image = "inferbox-worker-cuda:0.1.0"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        pytest.skip(f"no {image} (scripts/appliance cuda builds it)")
    ldd = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "ldd /opt/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "libcudart.so.13 => /opt/venv/" in ldd and "libcublas.so.13 => /opt/venv/" in ldd
    missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
    assert missing == ["libcuda.so.1"], ldd
    # Here no GPU: a worker that requires CUDA exits with the reason, never serves on the CPU.
    worker = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "INFERBOX_WORKER_REQUIRE_CUDA=true",
            "-e",
            "INFERBOX_REDIS_URL=redis://127.0.0.1:1/0",
            "-e",
            "INFERBOX_DATABASE_URL=postgresql://x@127.0.0.1:1/x",
            image,
            "inferbox",
            "worker",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode != 0
    assert "this worker will not serve on the CPU" in worker.stdout + worker.stderr


def test_a_dead_api_replica_is_taken_out_of_rotation(env):
    containers = appliance("compose", "ps", "-q", "api").split()
    assert len(containers) == 2, "two API replicas by default"
    subprocess.run(["docker", "kill", containers[0]], check=True, capture_output=True)
    try:
        with http(env) as client:
            # Reads are retried on the live replica: not one call lost.
            for _ in range(20):
                assert client.get(f"/v2/models/{MODEL}").status_code == 200
                assert len(infer_json(client)) == 10
    finally:
        subprocess.run(["docker", "start", containers[0]], check=True, capture_output=True)


def container_addresses(service: str) -> set[str]:
    ids = appliance("compose", "ps", "-q", service).split()
    out = subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            *ids,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_recreated_api_replicas_get_calls_at_their_new_addresses(env):
    # nginx is not restarted: it must look the replicas up again, not keep the old addresses.
    before = container_addresses("api")
    old = appliance("compose", "ps", "-q", "api").split()
    # Two new replicas next to the old ones (so they cannot get their addresses), then the old
    # ones removed: what `up` after a rebuild does, one replica at a time.
    appliance(
        "compose", "up", "-d", "--wait", "--no-deps", "--no-recreate", "--scale", "api=4", "api"
    )
    subprocess.run(["docker", "rm", "-f", *old], capture_output=True, check=True)
    assert len(container_addresses("api")) == 2
    assert not container_addresses("api") & before, "a new replica got an old address"
    with http(env) as client:
        took = wait_until(lambda: serving(client), 60, "a call after recreating api")
        for _ in range(10):
            np.testing.assert_allclose(infer_json(client), expected().ravel(), rtol=1e-5)
    assert took < 15, f"{took:.1f} s until calls passed again"


@pytest.mark.parametrize("service", ["api", "worker-cpu"])
def test_calls_succeed_again_soon_after_a_restart(env, service):
    appliance("compose", "restart", service)
    with http(env) as client:
        took = wait_until(lambda: serving(client), 60, f"a call after restarting {service}")
        # Once one call passed, every call passes: no stale address left in nginx.
        for _ in range(10):
            np.testing.assert_allclose(infer_json(client), expected().ravel(), rtol=1e-5)
    assert took < 45, f"{took:.1f} s until calls passed again after restarting {service}"


def test_backup_then_restore_into_a_wiped_appliance(env, tmp_path):
    archive = tmp_path / "backups" / "appliance.tar.gz"
    appliance("run", "scripts/backup", "--compose", str(archive))
    # Written through the container for this host's user, readable by that user only.
    assert archive.stat().st_uid == os.getuid() and archive.stat().st_mode & 0o077 == 0
    appliance("down", "-v")
    appliance("up")
    fresh = read_env()
    assert fresh["INFERBOX_API_KEY"] != env["INFERBOX_API_KEY"], "a wiped appliance has a new key"
    with http(fresh) as client:
        assert client.get(f"/v2/models/{MODEL}").status_code == 404
    appliance("run", "scripts/restore", "--compose", str(archive))
    appliance("compose", "restart", "api", "worker-cpu")
    # The old key, model and job are back; `up` again is a no-op that finds the old admin key.
    with http(env) as client:
        wait_until(lambda: serving(client), 90, "the restored model served")
        np.testing.assert_allclose(infer_json(client), expected().ravel(), rtol=1e-5)
        job_id = (Path(ENV_FILE).parent / "test-job-id").read_text()
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    appliance("up")
    assert read_env()["INFERBOX_API_KEY"] == env["INFERBOX_API_KEY"]


def test_down_and_up_again_keeps_models_keys_and_jobs(env, tmp_path):
    # Up again with a Triton-layout model repository: setup imports it on this start.
    repository = Path(ENV_FILE).parent / "test-repository"
    if not repository.exists():
        onnx_models.write_demo_repository(repository)
    # setup reads it as the image's non-root user.
    subprocess.run(["chmod", "-R", "a+rX", str(repository)], check=True)
    appliance("down")
    appliance("up", INFERBOX_MODEL_REPOSITORY=str(repository))
    after = read_env()
    # The same admin key (setup's steps are idempotent), and the key still works.
    assert after["INFERBOX_API_KEY"] == env["INFERBOX_API_KEY"]
    with http(after) as client:
        wait_until(lambda: serving(client), 90, "the model served again")
        np.testing.assert_allclose(infer_json(client), expected().ravel(), rtol=1e-5)
        job_id = (Path(ENV_FILE).parent / "test-job-id").read_text()
        job = client.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200 and job.json()["state"] == "succeeded", job.text
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
        # The repository's models came in beside the pushed one.
        wait_until(
            lambda: client.get("/v2/models/mlp/ready").status_code == 200, 60, "mlp imported"
        )
