"""The appliance runs with each part's own least privileges, as compose gives them: a Redis user
per component from compose.yaml's ``configs.redis-users`` (on a real redis-server with that ACL
file), a PostgreSQL role per component made by ``inferbox db app-role``, and an object-store
user per component with its ``s3_access`` policy (on an S3 server that enforces policies). Every
path of the API, the gRPC server and the worker is exercised and Redis's ACL log must hold no
refusal; what each part must not do, it cannot."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import numpy as np
import psycopg
import pytest
import redis
import tritonclient.grpc as grpcclient

from inferbox.client import InferboxClient
from inferbox.testing import onnx_models
from tests.compose.test_compose import ROOT, _resolve
from tests.security.s3_iam import s3_with_policies
from tests.support.appliance import running_appliance
from tests.support.processes import free_port, run_cli, start_inferbox, stop_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
COMPONENTS = {"api": "api", "grpc": "grpc", "worker": "worker-cpu"}


@dataclass
class Parts:
    appliance: object
    redis_admin: redis.Redis
    redis_urls: dict[str, str]
    database_urls: dict[str, str]
    grpc_url: str
    prefix: str


def _local(url: str, port: int) -> str:
    """A compose service URL pointed at this test's server."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{port}").geturl()


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory) -> tuple[dict, str]:
    """compose.yaml resolved with a fresh .env (scripts/init-env) and this run's key prefix."""
    root = tmp_path_factory.mktemp("compose")
    (root / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "init-env", root / "scripts" / "init-env")
    shutil.copy(ROOT / ".env.example", root / ".env.example")
    subprocess.run([str(root / "scripts" / "init-env")], check=True, capture_output=True)
    prefix = f"ibtest-{uuid.uuid4().hex[:8]}"
    with (root / ".env").open("a") as env:
        env.write(f"INFERBOX_KEY_PREFIX={prefix}\n")
    return _resolve(root / ".env", "cpu"), prefix


@pytest.fixture(scope="module")
def acl_redis(compose_env, tmp_path_factory):
    """A redis-server with compose's ACL file; yields its port."""
    config, _ = compose_env
    folder = tmp_path_factory.mktemp("redis")
    (folder / "users.acl").write_text(config["configs"]["redis-users"]["content"])
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--aclfile",
            str(folder / "users.acl"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers(port), 10, "redis-server with the ACL file")
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def parts(compose_env, acl_redis, make_database, tmp_path_factory, model_repo):
    config, prefix = compose_env
    with s3_with_policies(prefix) as s3:
        yield from _parts(
            config, prefix, acl_redis, make_database, tmp_path_factory, model_repo, s3
        )


def _parts(config, prefix, acl_redis, make_database, tmp_path_factory, model_repo, s3):
    services = config["services"]
    urls = {
        part: _local(services[service]["environment"]["INFERBOX_REDIS_URL"], acl_redis)
        for part, service in COMPONENTS.items()
    }
    admin_url = _local(services["setup"]["environment"]["INFERBOX_REDIS_URL"], acl_redis)
    assert urlsplit(admin_url).username in (None, "", "default")
    admin = redis.Redis.from_url(admin_url)

    owner = make_database()
    roles, names = {}, []
    run_cli(["migrate"], {**_base_env(owner), "INFERBOX_DATABASE_URL": owner})
    for part in COMPONENTS:
        role, password = f"ib{part}_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        env = {**_base_env(owner), "INFERBOX_DATABASE_URL": owner, "ROLE_PASSWORD": password}
        run_cli(
            [
                "db",
                "app-role",
                "--role",
                role,
                "--component",
                part,
                "--password-env",
                "ROLE_PASSWORD",
            ],
            env,
        )
        roles[part] = f"{owner} user={role} password={password}"
        names.append(role)

    own = {
        part: {
            "INFERBOX_REDIS_URL": urls[part],
            "INFERBOX_DATABASE_URL": roles[part],
            **s3.env(part),
        }
        for part in COMPONENTS
    }
    with running_appliance(
        admin,
        tmp_path_factory,
        owner,
        s3.endpoint,
        model_repo,
        ready=("mlp",),
        process_env=own,
        prefix=prefix,
        INFERBOX_REDIS_URL=admin_url,
        INFERBOX_JOBS_RECONCILE_S="1",
        **s3.env("root"),
    ) as appliance:
        grpc_port = free_port()
        grpc_env = {
            **appliance.env,
            **own["grpc"],
            "INFERBOX_GRPC_BIND": f"127.0.0.1:{grpc_port}",
            "INFERBOX_GRPC_PROCESSES": "1",
        }
        grpc = start_inferbox(["grpc"], grpc_env, appliance.logs / "grpc.log")
        try:
            wait_for(lambda: grpc.poll() is None and _answers(grpc_port), 60, "the gRPC server")
            yield Parts(appliance, admin, urls, roles, f"127.0.0.1:{grpc_port}", prefix)
        finally:
            stop_process(grpc)
    with psycopg.connect(owner, autocommit=True) as conn:
        for role in names:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def _base_env(database: str) -> dict[str, str]:
    return {**os.environ, "INFERBOX_DATABASE_URL": database}


def _refusals(admin: redis.Redis) -> list[dict]:
    return [e for e in admin.acl_log(count=100) if e.get("username") != "default"]


def test_every_path_runs_with_its_own_least_privileges(parts, tmp_path):
    appliance = parts.appliance
    # The log is not reset: what the parts do as they start counts too.
    with InferboxClient(appliance.url, api_key=appliance.api_key, timeout=30) as client:
        client.push(onnx_models.mlp(tmp_path / "m.onnx", seed=3), "lp-model", alias="live")
        limited = client.create_key("limited", ["infer", "jobs"], rate_per_s=50, max_concurrency=4)
        other = client.create_key("revoked soon", ["infer"])
        client.revoke_key(other["id"])
        assert client.audit(limit=5)["entries"]
    headers = {"Authorization": f"Bearer {limited['key']}"}
    with httpx.Client(base_url=appliance.url, timeout=30) as http:
        for model in ("mlp", "lp-model"):
            wait_for(
                lambda m=model: (
                    http.get(f"/v2/models/{m}/ready", headers=headers).status_code == 200
                ),
                60,
                f"{model} to be ready",
            )
            answer = http.post(f"/v2/models/{model}/infer", json=BODY, headers=headers)
            assert answer.status_code == 200, answer.text
        gone = http.post(
            "/v2/models/mlp/infer", json=BODY, headers={"Authorization": f"Bearer {other['key']}"}
        )
        assert gone.status_code == 401
        job = http.post("/v2/models/mlp/jobs", json=BODY, headers=headers)
        assert job.status_code == 202, job.text
        status = job.json()["status_url"]
        wait_for(
            lambda: http.get(status, headers=headers).json()["state"] == "succeeded",
            60,
            "the job to succeed",
        )
        result = http.get(f"{status}/result", headers=headers)
        assert result.status_code == 200, result.text

    with grpcclient.InferenceServerClient(parts.grpc_url) as grpc:
        item = grpcclient.InferInput("x", [1, 64], "FP32")
        item.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
        answer = grpc.infer("mlp", [item], headers={"authorization": f"Bearer {limited['key']}"})
        assert answer.as_numpy("y").shape == (1, 10)

    time.sleep(1.5)  # heartbeats, status and the reconciler's rounds run as well
    assert _refusals(parts.redis_admin) == []


def _client(parts: Parts, part: str) -> redis.Redis:
    return redis.Redis.from_url(parts.redis_urls[part])


@pytest.mark.parametrize(
    ("part", "command"),
    [
        ("worker", ("GET", "{p}:apikey:ibk_someone")),
        ("worker", ("SET", "{p}:apikey:ibk_planted", "{}")),
        ("worker", ("HSET", "{p}:catalog", "mlp", "{}")),
        ("worker", ("DEL", "{p}:catalog")),
        ("worker", ("HGETALL", "{p}:bucket:ibk_someone")),
        ("worker", ("PUBLISH", "{p}:apikey-events", "x")),
        ("worker", ("EVAL", "return 1", "0")),
        ("api", ("CONFIG", "GET", "*")),
        ("api", ("FLUSHALL",)),
        ("api", ("KEYS", "*")),
        ("api", ("EVAL", "return 1", "0")),
        ("api", ("CLIENT", "KILL", "ID", "1")),
        ("api", ("ACL", "LIST")),
        ("api", ("GET", "elsewhere:secret")),
        ("grpc", ("LPUSH", "rq:queue:{p}.jobs", "planted")),
        ("grpc", ("MODULE", "LIST")),
        ("grpc", ("SHUTDOWN",)),
    ],
)
def test_each_part_is_refused_what_it_must_not_do(parts, part, command):
    with _client(parts, part) as client, pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*(word.replace("{p}", parts.prefix) for word in command))


def test_the_worker_reads_the_catalog_it_cannot_change(parts):
    with _client(parts, "worker") as client:
        assert client.hget(f"{parts.prefix}:catalog", "mlp") is not None
