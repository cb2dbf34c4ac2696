"""Fixtures that start the real thing: Redis keys under a fresh prefix, a worker and the API.

Every test run uses its own key prefix on the machine's Redis, so runs never see each other's
queues or catalogs; the processes are the same commands the appliance runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import tritonclient.http as triton_http
from moto.server import ThreadedMotoServer
from tritonclient._plugin import InferenceServerClientPlugin

from inferbox.config import Settings
from inferbox.keys import Keys
from inferbox.models.catalog import put_specs
from inferbox.models.spec import ModelSpec
from inferbox.testing import onnx_models

REDIS_URL = os.environ.get("INFERBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("INFERBOX_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres")
INFERBOX = str(Path(sys.executable).with_name("inferbox"))
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Remove every key of one test run."""
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class CacheRedis:
    """A cache Redis as the appliance runs one: its own ``redis-server`` on a free port with
    its own memory budget and an evicting policy, no persistence (a restart is empty).

    ``kill`` (SIGKILL) and ``start`` again on the same port, ``freeze`` (SIGSTOP: connections
    are accepted, never answered) and ``thaw``: the faults the response cache must survive.
    """

    def __init__(self, folder: Path, maxmemory: str = "64mb", policy: str = "allkeys-lru"):
        self.folder = folder
        self.maxmemory = maxmemory
        self.policy = policy
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        """``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new client of this server."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        """Start (or restart, empty) on the same port; returns once it answers PING."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with (self.folder / "cache-redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(binary, "--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--dir", str(self.folder), "--save", "", "--appendonly", "no"),
                    *("--maxmemory", self.maxmemory, "--maxmemory-policy", self.policy),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited; see {self.folder}/cache-redis.log")
            try:
                return self.client().ping()
            except redis.RedisError:
                return False

        wait_for(answers, 20, "the cache redis-server to answer", interval=0.05)

    def kill(self) -> None:
        """SIGKILL: everything it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            if self.frozen:
                self.thaw()
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        """Stop answering (SIGSTOP), connections still accepted by the kernel."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """Answer again (SIGCONT), with everything intact."""
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop for good."""
        if self.proc is not None:
            if self.frozen:
                self.thaw()
            stop_process(self.proc, 10)


@pytest.fixture(scope="session")
def cache_redis(tmp_path_factory) -> CacheRedis:
    """The session's cache Redis (beside the machine's Redis, which carries the queues)."""
    server = CacheRedis(tmp_path_factory.mktemp("cache-redis"))
    server.start()
    yield server
    server.stop()


def _admin(statement: str) -> None:
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def make_database():
    """A factory of empty databases (conninfo strings), all dropped when the session ends."""
    created: list[str] = []

    def make() -> str:
        name = f"ibtest_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{POSTGRES} dbname={name}"

    yield make
    for name in created:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 API on 127.0.0.1 (moto's server; it does not check signatures)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    return client


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """The demo models, a slow one, a broken file, and configured variants."""
    root = onnx_models.write_demo_repository(tmp_path_factory.mktemp("models"))
    onnx_models.slow(root / "slow" / "1" / "model.onnx")
    # Big batches of the slow model keep the worker busy for about a second.
    (root / "slow" / "inferbox.json").write_text('{"max_batch_size": 1024, "instance_count": 1}')
    # A tiny queue, to see 503 when it is full.
    onnx_models.slow(root / "slow_queue" / "1" / "model.onnx")
    (root / "slow_queue" / "inferbox.json").write_text('{"max_queue_size": 1}')
    # Batching that waits for company, to see batches form.
    onnx_models.mlp(root / "mlp_delay" / "1" / "model.onnx")
    (root / "mlp_delay" / "inferbox.json").write_text(
        '{"max_queue_delay_microseconds": 200000, "preferred_batch_size": [8]}'
    )
    # Two versions of one model: the newest ready one serves unversioned calls.
    onnx_models.mlp(root / "versions" / "1" / "model.onnx", seed=1)
    onnx_models.mlp(root / "versions" / "2" / "model.onnx", seed=2)
    onnx_models.identity_all_types(root / "strings" / "1" / "model.onnx", types=["BYTES"])
    # The mlp with the response cache.
    onnx_models.mlp(root / "cached" / "1" / "model.onnx")
    (root / "cached" / "inferbox.json").write_text('{"response_cache": true}')
    return root


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


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [INFERBOX, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


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


def run_cli(args: list[str], env: dict[str, str]) -> str:
    """Run ``inferbox ARGS`` to completion; its output, or a failed test with it."""
    done = subprocess.run([INFERBOX, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


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
        _start(["worker"], {**env, **own.get("worker", {})}, logs / "worker.log"),
        _start(["api"], {**env, **own.get("api", {})}, logs / "api.log"),
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


@pytest.fixture(scope="session")
def appliance(
    redis_client, model_repo, tmp_path_factory, make_database, s3_endpoint, cache_redis
) -> Appliance:
    """The appliance serving ``model_repo`` from the registry, plus ``broken``: a catalog
    entry whose file is not ONNX, to see a version that fails to load on the worker (uploads
    could never get it past validation). Its response cache is ``cache_redis``."""
    broken = tmp_path_factory.mktemp("broken") / "model.onnx"
    broken.write_bytes(os.urandom(2048))
    certs = tmp_path_factory.mktemp("certs")
    subprocess.run([str(ROOT / "scripts" / "certs"), str(certs)], check=True, capture_output=True)
    with running_appliance(
        redis_client,
        tmp_path_factory,
        make_database(),
        s3_endpoint,
        model_repo,
        ready=(
            "mlp",
            "conv",
            "add_sub",
            "identity",
            "fixed",
            "slow",
            "versions",
            "strings",
            "cached",
        ),
        extra_catalog=[
            ModelSpec(name="broken", version=1, path=str(broken), sha256="0" * 64, size=2048)
        ],
        INFERBOX_TLS_CERT_FILE=str(certs / "tls.crt"),
        INFERBOX_CACHE_URL=cache_redis.url,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def http(appliance) -> httpx.Client:
    """One keep-alive HTTP client to the API (so tests also see the connection stay usable),
    sending the admin key."""
    with httpx.Client(base_url=appliance.url, timeout=30, headers=appliance.headers) as client:
        yield client


_KINDS = ("unit", "integration", "e2e", "appliance")
_BY_FOLDER = {"unit": "unit", "appliance": "appliance", "stack": "e2e"}


def pytest_collection_modifyitems(config, items):
    """Every test gets its kind from its folder unless it names one itself: ``tests/unit``
    unit, ``tests/appliance`` appliance, ``tests/stack`` e2e, the rest integration (they talk
    to real services). So ``-m unit`` selects what needs no service, without anyone
    remembering to mark a new file."""
    root = Path(__file__).parent
    for item in items:
        if any(item.get_closest_marker(kind) for kind in _KINDS):
            continue
        folder = Path(item.path).relative_to(root).parts[0]
        item.add_marker(getattr(pytest.mark, _BY_FOLDER.get(folder, "integration")))
