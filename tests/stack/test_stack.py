"""The local stack as a user runs it: ``scripts/stack up``, ``status``, ``up`` again, ``down``.

Each run gets its own stack folder (INFERBOX_STACK_DIR), key prefix and free ports, so it never
meets a developer's own ``.stack`` or another test run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack"
REDIS_URL = os.environ.get("INFERBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PARTS = ("cache", "s3", "worker", "api", "grpc", "nginx", "prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stack_env(stack_dir: Path, **overrides: str) -> dict[str, str]:
    """The caller's environment without its INFERBOX_* settings, plus this run's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBOX_")}
    env.update(INFERBOX_STACK_DIR=str(stack_dir), INFERBOX_REDIS_URL=REDIS_URL, **overrides)
    return env


def run_stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]
    prefix: str
    url: str
    """The gateway: nginx with TLS in front of the API."""
    api_url: str
    """The API's own address."""
    metrics_url: str
    up_output: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_stack(self.env, *args)

    def pids(self) -> dict[str, int]:
        return {
            name: int((self.dir / "pids" / f"{name}.pid").read_text().strip()) for name in PARTS
        }


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        pytest.skip(f"no Redis at {REDIS_URL} (scripts/test starts one)")
    prefix = f"ibstack-{uuid.uuid4().hex[:8]}"
    api_port, metrics_port, s3_port = free_port(), free_port(), free_port()
    https_port, http_port = free_port(), free_port()
    stack_dir = tmp_path_factory.mktemp("stack")
    database = f"ibstack_{uuid.uuid4().hex[:8]}"
    env = stack_env(
        stack_dir,
        INFERBOX_KEY_PREFIX=prefix,
        INFERBOX_API_BIND=f"127.0.0.1:{api_port}",
        INFERBOX_WORKER_METRICS_PORT=str(metrics_port),
        INFERBOX_GRPC_BIND=f"127.0.0.1:{free_port()}",
        INFERBOX_GRPC_METRICS_PORT=str(free_port()),
        INFERBOX_S3_ENDPOINT=f"127.0.0.1:{s3_port}",
        INFERBOX_PROMETHEUS_PORT=str(free_port()),
        INFERBOX_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
        INFERBOX_HTTPS_PORT=str(https_port),
        INFERBOX_HTTP_PORT=str(http_port),
        INFERBOX_CACHE_PORT=str(free_port()),
    )
    try:
        up = run_stack(env, "up")
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
        yield Stack(
            dir=stack_dir,
            env=env,
            prefix=prefix,
            url=f"https://127.0.0.1:{https_port}",
            api_url=f"http://127.0.0.1:{api_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            up_output=up.stdout,
        )
    finally:
        down = run_stack(env, "down")
        assert down.returncode == 0, f"stack down failed:\n{down.stdout}\n{down.stderr}"
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_up_writes_and_prints_the_env_file(stack: Stack) -> None:
    text = (stack.dir / "env").read_text()
    env = dict(line.split("=", 1) for line in text.splitlines())
    assert env["INFERBOX_URL"] == stack.url
    assert env["INFERBOX_API_URL"] == stack.api_url
    assert env["INFERBOX_CA_CERT"] == str(stack.dir / "certs" / "ca.crt")
    assert "BEGIN CERTIFICATE" in Path(env["INFERBOX_CA_CERT"]).read_text()
    assert env["INFERBOX_REDIS_URL"] == REDIS_URL
    assert env["INFERBOX_KEY_PREFIX"] == stack.prefix
    assert env["INFERBOX_WORKER_METRICS_URL"] == stack.metrics_url
    assert env["INFERBOX_DATABASE_URL"] == stack.env["INFERBOX_DATABASE_URL"]
    assert env["INFERBOX_S3_ENDPOINT"] == stack.env["INFERBOX_S3_ENDPOINT"]
    assert env["INFERBOX_CACHE_URL"] == f"redis://127.0.0.1:{stack.env['INFERBOX_CACHE_PORT']}/0"
    # Shown without the admin key, which only the file (its owner's alone) holds.
    shown = re.sub(r"(?m)^INFERBOX_API_KEY=.*$", "INFERBOX_API_KEY=...", text)
    assert shown in stack.up_output
    if "INFERBOX_API_KEY" in env:
        assert env["INFERBOX_API_KEY"] not in stack.up_output
    assert (stack.dir / "env").stat().st_mode & 0o077 == 0
    for name in PARTS:
        assert (stack.dir / "logs" / f"{name}.log").is_file()
    assert (stack.dir / "models" / "mlp" / "1" / "model.onnx").is_file()


def test_the_stack_serves_the_demo_models(stack: Stack) -> None:
    ca = ssl.create_default_context(cafile=stack.dir / "certs" / "ca.crt")
    env = dict(line.split("=", 1) for line in (stack.dir / "env").read_text().splitlines())
    # The API key, where the stack has one (API keys arrive with the same issue as the gateway).
    auth = (
        {"Authorization": f"Bearer {env['INFERBOX_API_KEY']}"} if "INFERBOX_API_KEY" in env else {}
    )
    with httpx.Client(base_url=stack.url, timeout=30, verify=ca, headers=auth) as http:
        assert http.get("/v2/health/ready").status_code == 200
        wait_until(
            lambda: http.get("/v2/models/mlp/ready").status_code == 200, 30, "mlp to be ready"
        )
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
        response = http.post("/v2/models/mlp/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["shape"] == [1, 10]
        assert len(output["data"]) == 10
        assert response.headers["strict-transport-security"]
    direct = httpx.post(f"{stack.api_url}/v2/models/mlp/infer", json=body, headers=auth, timeout=30)
    assert direct.json()["outputs"] == response.json()["outputs"]
    access_log = (stack.dir / "logs" / "nginx-access.log").read_text()
    access = [json.loads(line) for line in access_log.splitlines()]
    assert any(line["path"] == "/v2/models/mlp/infer" for line in access)
    metrics = httpx.get(stack.metrics_url, timeout=10)
    assert metrics.status_code == 200
    assert "# TYPE" in metrics.text


def test_the_stacks_cache_redis_answers_a_model_that_asks_for_it(stack: Stack) -> None:
    env = dict(line.split("=", 1) for line in (stack.dir / "env").read_text().splitlines())
    auth = {"Authorization": f"Bearer {env['INFERBOX_API_KEY']}"}
    cache = redis.Redis.from_url(env["INFERBOX_CACHE_URL"])
    assert cache.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=auth) as http:
        patched = http.patch("/v1/models/add_sub/versions/1/config", json={"response_cache": True})
        assert patched.status_code == 200, patched.text
        wait_until(
            lambda: http.get("/v2/models/add_sub/ready").status_code == 200, 30, "add_sub again"
        )
        pair = [
            {"name": name, "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}
            for name in ("INPUT0", "INPUT1")
        ]
        states = []

        def hit() -> bool:
            response = http.post("/v2/models/add_sub/infer", json={"inputs": pair})
            assert response.status_code == 200, response.text
            states.append(response.headers.get("x-inferbox-cache"))
            return states[-1] == "hit"

        # Answers computed while the worker still runs the old config are not stored: the
        # first hit comes once the version is reloaded with the cache turned on.
        wait_until(hit, 30, "a call answered from the cache")
        assert "miss" in states
    assert list(cache.scan_iter(f"{stack.prefix}:rc:add_sub:*"))
    cache.close()


def test_the_stack_serves_grpc_through_the_gateway(stack: Stack) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    env = dict(line.split("=", 1) for line in (stack.dir / "env").read_text().splitlines())
    headers = {"authorization": f"Bearer {env['INFERBOX_API_KEY']}"}
    with grpcclient.InferenceServerClient(
        stack.url.removeprefix("https://"),
        ssl=True,
        root_certificates=str(stack.dir / "certs" / "ca.crt"),
    ) as client:
        wait_until(lambda: client.is_model_ready("mlp", headers=headers), 30, "mlp over gRPC")
        item = grpcclient.InferInput("x", [1, 64], "FP32")
        item.set_data_from_numpy(np.zeros((1, 64), np.float32))
        assert client.infer("mlp", [item], headers=headers).as_numpy("y").shape == (1, 10)


def test_status_reports_running(stack: Stack) -> None:
    status = stack.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name, pid in stack.pids().items():
        assert re.search(rf"^{name}\s+running \(pid {pid}\)$", status.stdout, re.M), status.stdout
    assert re.search(r"^api\s+ready", status.stdout, re.M), status.stdout
    assert re.search(r"^nginx\s+ready \(https://", status.stdout, re.M), status.stdout


def test_up_again_is_idempotent(stack: Stack) -> None:
    before = stack.pids()
    again = stack.run("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert stack.pids() == before
    assert "already running" in again.stdout
    shown = re.sub(
        r"(?m)^INFERBOX_API_KEY=.*$", "INFERBOX_API_KEY=...", (stack.dir / "env").read_text()
    )
    assert again.stdout.endswith(shown)


# --- end to end, as a new user would: through nginx over HTTPS, with the CLI and tritonclient --


def _user_env(stack: Stack) -> dict[str, str]:
    """The environment a user gets from `. .stack/env` (HTTPS address, key, CA)."""
    text = (stack.dir / "env").read_text()
    return {**stack.env, **dict(line.split("=", 1) for line in text.splitlines() if "=" in line)}


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "inferbox"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.e2e
def test_end_to_end_push_call_job_observe_and_rotate_a_key(stack: Stack, tmp_path) -> None:
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from inferbox.testing import onnx_models

    env = _user_env(stack)
    assert env["INFERBOX_URL"].startswith("https://")
    model = onnx_models.mlp(tmp_path / "model.onnx", seed=61)
    out = _cli(env, "models", "push", str(model), "--name", "e2e", "--alias", "production")
    assert "e2e version 1" in out
    headers = {"Authorization": f"Bearer {env['INFERBOX_API_KEY']}"}
    host = env["INFERBOX_URL"].removeprefix("https://")
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    with triton.InferenceServerClient(
        host, ssl=True, ssl_options={"ca_certs": env["INFERBOX_CA_CERT"]}
    ) as client:
        wait_until(lambda: client.is_model_ready("e2e", headers=headers), 30, "e2e ready")
        for binary in (False, True):
            tensor = triton.InferInput("x", [1, 64], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = client.infer("e2e", [tensor], headers=headers)
            np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5)

        # A failing call with our own request id: its story is in nginx's and the API's logs.
        request_id = f"e2e-{uuid.uuid4().hex}"
        bad = triton.InferInput("x", [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("e2e", [bad], headers={**headers, "X-Request-ID": request_id})
    logs = stack.dir / "logs"
    wait_until(
        lambda: (
            request_id in (logs / "nginx-access.log").read_text()
            and request_id in (logs / "api.log").read_text()
        ),
        10,
        "the request id in the nginx and api logs",
    )

    # An async job through nginx: a bulk file uploaded, followed to the end, its result fetched.
    rows = np.random.default_rng(5).standard_normal((300, 64)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    job = json.loads(
        _cli(env, "jobs", "submit", "e2e", "--file", str(tmp_path / "rows.npy"), "--wait")
    )
    assert job["state"] == "succeeded" and job["rows_done"] == 300
    _cli(env, "jobs", "result", job["id"], "--out", str(tmp_path / "result.npz"))
    with np.load(tmp_path / "result.npz") as result:
        session = ort.InferenceSession(str(model))
        np.testing.assert_allclose(
            result["y"], session.run(None, {"x": rows})[0], rtol=1e-4, atol=1e-5
        )
    wait_until(
        lambda: job["id"] in (logs / "worker.log").read_text(), 10, "the job id in the worker log"
    )

    # The calls show in Prometheus (scraped from the API directly).
    prometheus = env["INFERBOX_PROMETHEUS_URL"]

    def counted() -> bool:
        query = 'sum(inferbox_requests_total{model="e2e"})'
        data = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}).json()
        result = data["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= 3

    wait_until(counted, 30, "Prometheus to scrape the calls")

    # Rotate a key: the new one works, the old one stops working within a second of its revocation.
    def create(name: str) -> str:
        return (
            _cli(env, "keys", "create", "--name", name, "--scope", "infer").strip().splitlines()[-1]
        )

    def status(key: str) -> int:
        url = f"{env['INFERBOX_URL']}/v2/models/e2e/ready"
        auth = {"Authorization": f"Bearer {key}"}
        context = ssl.create_default_context(cafile=env["INFERBOX_CA_CERT"])
        return httpx.get(url, headers=auth, verify=context).status_code

    old, new = create("client-2025"), create("client-2026")
    assert status(old) == 200 and status(new) == 200
    _cli(env, "keys", "revoke", old.split(".")[0])
    time.sleep(1.2)
    assert status(old) == 401
    assert status(new) == 200


def test_down_stops_exactly_its_processes(stack: Stack) -> None:
    pids = stack.pids()
    assert all(alive(pid) for pid in pids.values())
    api_workers = children(pids["api"])
    assert api_workers, "gunicorn should run worker processes"
    nginx_workers = children(pids["nginx"])
    assert nginx_workers, "nginx should run worker processes"

    down = stack.run("down")

    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in pids.values() if alive(pid)]
    wait_until(lambda: not any(alive(pid) for pid in api_workers), 10, "gunicorn's workers")
    wait_until(lambda: not any(alive(pid) for pid in nginx_workers), 10, "nginx's workers")
    assert not list((stack.dir / "pids").iterdir())
    assert not (stack.dir / "env").exists()
    status = stack.run("status")
    assert status.returncode == 3
    assert re.search(r"^worker\s+stopped$", status.stdout, re.M), status.stdout


def test_down_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    """A pid file whose pid now runs something else is stale: removed, its process untouched."""
    (tmp_path / "pids").mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / "pids" / "worker.pid").write_text(f"{other.pid}\n")
            down = run_stack(stack_env(tmp_path), "down")
            assert down.returncode == 0, down.stdout + down.stderr
            assert "stale pid file" in down.stdout
            assert other.poll() is None
            assert not (tmp_path / "pids" / "worker.pid").exists()
        finally:
            other.kill()
