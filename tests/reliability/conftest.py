"""The appliance on dependencies the reliability suite owns, behind nginx, for fault injection.

``chaos_stack`` starts its own Redis (AOF on), PostgreSQL (``initdb`` in a temporary folder)
and S3 server (moto) on spare ports, then the worker, the API (gunicorn, 2 workers) and nginx
with TLS, exactly as the appliance runs them. The machine's shared Redis and PostgreSQL are not
used. Durations and load levels come from ``ChaosSettings`` (environment variables), so
``scripts/chaos`` runs the long versions of the same tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from inferbox.testing import onnx_models
from tests.support.appliance import appliance_env
from tests.support.chaos import DEADLINE_MS, SETTINGS, ChaosSettings, ChaosStack
from tests.support.gateway import make_certs, running_gateway
from tests.support.postgres import PostgresServer
from tests.support.processes import free_port, run_cli, start_inferbox, stop_process
from tests.support.redis import RedisServer
from tests.support.s3 import S3Server
from tests.support.waiting import wait_for


@pytest.fixture(scope="session")
def chaos_settings() -> ChaosSettings:
    """Durations and bounds of this run."""
    return SETTINGS


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory) -> Iterator[ChaosStack]:
    """The appliance on its own Redis, PostgreSQL and S3 server, behind nginx (see module)."""
    work = tmp_path_factory.mktemp("chaos")
    logs = work / "logs"
    logs.mkdir()
    (work / "redis").mkdir()
    redis_server = RedisServer(work / "redis")
    postgres = PostgresServer()
    s3 = S3Server(logs)
    processes: list[subprocess.Popen] = []
    stack: ChaosStack | None = None
    try:
        redis_server.start()
        postgres.start()
        database = postgres.create_database("inferbox")
        s3.start()
        repo = work / "models"
        onnx_models.mlp(repo / "mlp" / "1" / "model.onnx")
        # Integer and string inputs, for the malformed-tensor corpus.
        onnx_models.identity_all_types(repo / "ints" / "1" / "model.onnx", types=["INT32"])
        onnx_models.identity_all_types(repo / "strings" / "1" / "model.onnx", types=["BYTES"])
        api_port = free_port()
        env = appliance_env(
            "chaos",
            database,
            s3.endpoint,
            INFERBOX_REDIS_URL=redis_server.url,
            INFERBOX_API_BIND=f"127.0.0.1:{api_port}",
            INFERBOX_WORKER_METRICS_PORT=str(free_port()),
            INFERBOX_DEFAULT_TIMEOUT_MS=str(DEADLINE_MS),
            INFERBOX_STATUS_CACHE_S="0.2",
            INFERBOX_WORKER_CLAIM_IDLE_MS="2000",
            INFERBOX_WORKER_HEARTBEAT_S="0.5",
            INFERBOX_WORKER_STATUS_TTL_S="3",
            INFERBOX_WORKER_CAPACITY_SWEEP_S="0",
            INFERBOX_WORKER_CACHE_DIR=str(work / "cache"),
            INFERBOX_UPLOAD_DIR=str(work / "uploads"),
            INFERBOX_SLOW_REQUEST_MS="0",
            # An unreachable S3 server fails an upload within seconds here (30 s by default).
            INFERBOX_S3_TIMEOUT_S="5",
            # Jobs of a lost worker, or lost by Redis, are redelivered within seconds here.
            INFERBOX_JOBS_LEASE_S="4",
            INFERBOX_JOBS_RECONCILE_S="1",
            INFERBOX_JOBS_REQUEUE_AFTER_S="3",
        )
        run_cli(["migrate"], env)
        key_file = work / "admin.key"
        run_cli(["keys", "bootstrap", "--file", str(key_file)], env)
        api_key = key_file.read_text().strip()
        env["INFERBOX_API_KEY"] = api_key
        run_cli(["models", "import", str(repo)], env)
        worker = start_inferbox(["worker"], env, logs / "worker.log", append=True)
        api = start_inferbox(["api"], env, logs / "api.log", append=True)
        processes += [worker, api]
        api_url = f"http://127.0.0.1:{api_port}"
        auth = {"Authorization": f"Bearer {api_key}"}

        def serving():
            for proc in processes:
                if proc.poll() is not None:
                    raise AssertionError(f"a process exited early; logs in {logs}")
            try:
                return httpx.get(f"{api_url}/v2/models/mlp/ready", headers=auth).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, 90, "the chaos stack to serve mlp", interval=0.2)
        # nginx's per-address limits are the gateway's own test; here all load comes from
        # one address, so they are set far above what the machine can do.
        with running_gateway(
            api_url.removeprefix("http://"),
            work / "gateway",
            make_certs(work / "certs"),
            rate="100000r/s",
            burst="100000",
            conn="4096",
        ) as gateway:
            stack = ChaosStack(
                redis=redis_server,
                postgres=postgres,
                s3=s3,
                gateway=gateway,
                env=env,
                api_url=api_url,
                api_key=api_key,
                logs=logs,
                worker=worker,
                api=api,
            )
            yield stack
    finally:
        if stack is not None:
            processes = [stack.api, stack.worker]
        for proc in processes:
            proc.terminate()
        for proc in processes:
            stop_process(proc)
        s3.stop()
        redis_server.stop()
        postgres.remove()


@pytest.fixture
def healthy(chaos_stack) -> ChaosStack:
    """The chaos stack, checked ready and serving before a test breaks it."""
    chaos_stack.wait_ready(True, 30)
    wait_for(chaos_stack.model_ready, 30, "mlp to be ready", interval=0.2)
    return chaos_stack
