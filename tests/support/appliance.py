"""The appliance as the tests run it: an API and a worker on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import tritonclient.http as triton_http
from tritonclient._plugin import InferenceServerClientPlugin

from inferbox.config import Settings
from inferbox.keys import Keys
from inferbox.models.catalog import put_specs
from inferbox.models.spec import ModelSpec
from tests.support.processes import free_port, run_cli, start_inferbox, stop_process
from tests.support.redis import REDIS_URL, delete_prefix
from tests.support.waiting import wait_for


@dataclass
class Appliance:
    """A running API and worker on 127.0.0.1, and how to reach them."""

    url: str
    settings: Settings
    keys: Keys
    redis: redis.Redis
    metrics_url: str
    model_repo: Path
    logs: Path | None = None
    """Folder holding ``api.log`` and ``worker.log`` (what the processes wrote)."""
    env: dict[str, str] | None = field(default=None, repr=False)
    """Environment of the processes (for running ``inferbox`` commands against them)."""
    api_key: str | None = field(default=None, repr=False)
    """The admin key made by ``inferbox keys bootstrap`` at start (every scope, no limits)."""

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer`` with the admin key."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def triton(self, **options) -> triton_http.InferenceServerClient:
        """A ``tritonclient`` HTTP client sending the admin key on every call."""
        client = triton_http.InferenceServerClient(self.url.removeprefix("http://"), **options)
        client.register_plugin(BearerAuth(self.api_key))
        return client

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a worker metric's samples matching ``labels`` (0 if absent)."""
        text = httpx.get(self.metrics_url).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


class BearerAuth(InferenceServerClientPlugin):
    """``tritonclient`` plugin adding ``Authorization: Bearer <key>`` to every request."""

    def __init__(self, key: str) -> None:
        self.value = f"Bearer {key}"

    def __call__(self, request) -> None:
        request.headers["Authorization"] = self.value


def appliance_env(prefix: str, database: str, s3_endpoint: str, **extra: str) -> dict[str, str]:
    """Environment of inferbox processes using a test run's Redis prefix, database and bucket."""
    return {
        **os.environ,
        "INFERBOX_REDIS_URL": REDIS_URL,
        "INFERBOX_KEY_PREFIX": prefix,
        "INFERBOX_DATABASE_URL": database,
        "INFERBOX_S3_ENDPOINT": s3_endpoint,
        "INFERBOX_S3_ACCESS_KEY": "test-access",
        "INFERBOX_S3_SECRET_KEY": "test-secret",
        "INFERBOX_S3_REGION": "us-east-1",
        "INFERBOX_S3_BUCKET": prefix,
        # Test catalogs may name files on disk (``extra_catalog``; the worker refuses them
        # by default).
        "INFERBOX_WORKER_LOCAL_MODEL_PATHS": "true",
        **extra,
    }


@contextmanager
def running_appliance(
    redis_client,
    tmp_path_factory,
    database: str,
    s3_endpoint: str,
    model_repo: Path | None,
    ready: tuple[str, ...] = (),
    extra_catalog: list[ModelSpec] = (),
    process_env: dict[str, dict[str, str]] | None = None,
    prefix: str | None = None,
    **extra_env: str,
):
    """Start an API (gunicorn, 2 workers) and one worker on free ports; yield an ``Appliance``.

    The models go in as a user's would (``inferbox migrate``, ``inferbox models import``);
    ``extra_catalog`` entries are written to the catalog directly. Waits until every model
    in ``ready`` answers ready; stops both processes and removes the run's keys at the end.
    ``process_env`` adds settings for the ``api`` or ``worker`` process only (their own
    credentials, say), over those every step gets; ``prefix`` names the run's Redis keys and
    bucket (a fresh one by default).
    """
    prefix = prefix or f"ibtest-{uuid.uuid4().hex[:8]}"
    api_port, metrics_port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("logs")
    env = appliance_env(
        prefix,
        database,
        s3_endpoint,
        INFERBOX_API_BIND=f"127.0.0.1:{api_port}",
        INFERBOX_WORKER_METRICS_PORT=str(metrics_port),
        INFERBOX_WORKER_CLAIM_IDLE_MS="3000",
        INFERBOX_STATUS_CACHE_S="0.2",
        INFERBOX_WORKER_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        INFERBOX_UPLOAD_DIR=str(tmp_path_factory.mktemp("uploads")),
        **extra_env,
    )
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, api_bind=f"127.0.0.1:{api_port}")
    keys = Keys(prefix)
    run_cli(["migrate"], env)
    key_file = tmp_path_factory.mktemp("secrets") / "admin.key"
    run_cli(["keys", "bootstrap", "--file", str(key_file)], env)
    api_key = key_file.read_text().strip()
    env["INFERBOX_API_KEY"] = api_key
    if model_repo is not None:
        run_cli(["models", "import", str(model_repo)], env)
    if extra_catalog:
        put_specs(redis_client, keys, list(extra_catalog))
    own = process_env or {}
    processes = [
        start_inferbox(["worker"], {**env, **own.get("worker", {})}, logs / "worker.log"),
        start_inferbox(["api"], {**env, **own.get("api", {})}, logs / "api.log"),
    ]
    url = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {api_key}"}

    def all_ready():
        for proc in processes:
            if proc.poll() is not None:
                raise AssertionError(f"a process exited early; logs in {logs}")
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code != 200:
                return False
            return all(
                httpx.get(f"{url}/v2/models/{name}/ready", headers=auth).status_code == 200
                for name in ready
            )
        except httpx.HTTPError:
            return False

    try:
        wait_for(all_ready, 60, "the appliance to be ready", interval=0.2)
        yield Appliance(
            url=url,
            settings=settings,
            keys=keys,
            redis=redis_client,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            model_repo=model_repo,
            logs=logs,
            env=env,
            api_key=api_key,
        )
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            stop_process(proc)
        delete_prefix(redis_client, prefix)
