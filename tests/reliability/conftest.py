"""The appliance on dependencies the reliability suite owns, behind nginx, for fault injection.

``chaos_stack`` starts its own Redis (AOF on), PostgreSQL (``initdb`` in a temporary folder)
and S3 server (moto) on spare ports, then the worker, the API (gunicorn, 2 workers) and nginx
with TLS, exactly as the appliance runs them. The machine's shared Redis and PostgreSQL are not
used. Durations and load levels come from ``ChaosSettings`` (environment variables), so
``scripts/chaos`` runs the long versions of the same tests.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from inferbox.testing import onnx_models
from tests.conftest import (
    INFERBOX,
    appliance_env,
    free_port,
    run_cli,
    stop_process,
    wait_for,
)
from tests.gateway.conftest import Gateway, make_certs, running_gateway
from tests.reliability.services import PostgresServer, RedisServer, S3Server


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class ChaosSettings:
    """How long and how hard the suite pushes (``INFERBOX_CHAOS_*``; CI sizes by default)."""

    soak_s: float = field(default_factory=lambda: _env_float("INFERBOX_CHAOS_SOAK_S", 60))
    """Length of the soak at a fraction of the measured maximum throughput."""
    soak_fraction: float = field(
        default_factory=lambda: _env_float("INFERBOX_CHAOS_SOAK_FRACTION", 0.7)
    )
    """Fraction of the measured maximum the soak holds."""
    max_probe_s: float = field(default_factory=lambda: _env_float("INFERBOX_CHAOS_MAX_PROBE_S", 8))
    """How long the maximum throughput is measured (closed loop) before the soak."""
    postgres_outage_s: float = field(
        default_factory=lambda: _env_float("INFERBOX_CHAOS_POSTGRES_OUTAGE_S", 10)
    )
    """How long PostgreSQL stays stopped under load (the issue's figure is 30 s)."""
    s3_outage_s: float = field(default_factory=lambda: _env_float("INFERBOX_CHAOS_S3_OUTAGE_S", 6))
    """How long the S3 server stays unreachable."""
    nginx_reload_s: float = field(
        default_factory=lambda: _env_float("INFERBOX_CHAOS_NGINX_RELOAD_S", 10)
    )
    """How long nginx is reloaded every two seconds under load."""
    recovery_bound_s: float = field(
        default_factory=lambda: _env_float("INFERBOX_CHAOS_RECOVERY_S", 15)
    )
    """Throughput must be back to half its baseline within this many seconds of a repair."""
    p99_target_s: float = field(
        default_factory=lambda: _env_float("INFERBOX_CHAOS_P99_TARGET_S", 0.25)
    )
    """p99 latency the soak must hold (through nginx and TLS, on a shared 2-core machine)."""
    rss_growth_bound: float = field(
        default_factory=lambda: _env_float("INFERBOX_CHAOS_RSS_GROWTH", 0.25)
    )
    """Largest allowed RSS growth of each process during the soak, as a fraction."""


SETTINGS = ChaosSettings()

DEADLINE_MS = 5000
"""Default deadline of a sync call on the chaos stack: every call must end within it."""
HANG_S = DEADLINE_MS / 1000 + 5
"""No call may take longer than this (its deadline plus scheduling slack on a busy machine)."""


def children(pid: int) -> list[int]:
    """Direct child pids of a process (Linux ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class ChaosStack:
    """The running appliance and the handles to break it with."""

    redis: RedisServer
    postgres: PostgresServer
    s3: S3Server
    gateway: Gateway
    env: dict[str, str]
    api_url: str
    api_key: str
    logs: Path
    worker: subprocess.Popen
    api: subprocess.Popen

    @property
    def url(self) -> str:
        """HTTPS address of nginx."""
        return self.gateway.url

    @property
    def headers(self) -> dict[str, str]:
        """The admin key as a header."""
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def verify(self) -> ssl.SSLContext:
        """TLS context trusting the stack's CA."""
        return self.gateway.context()

    def client(self, **kwargs) -> httpx.Client:
        """An HTTPS client of nginx with the admin key."""
        return httpx.Client(
            base_url=self.url, verify=self.verify, headers=self.headers, timeout=20, **kwargs
        )

    def start_worker(self) -> None:
        """Start a worker process (after a kill)."""
        self.worker = _start(["worker"], self.env, self.logs / "worker.log")

    def kill_worker(self) -> None:
        """SIGKILL the worker: no drain, its unacknowledged calls stay in the stream."""
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()

    def api_workers(self) -> list[int]:
        """Pids of gunicorn's worker processes (the ones serving requests)."""
        return children(self.api.pid)

    def ready(self) -> int:
        """Status of ``/v2/health/ready`` through nginx (0 when no answer came in 5 s)."""
        try:
            return httpx.get(
                f"{self.url}/v2/health/ready", verify=self.verify, timeout=5
            ).status_code
        except httpx.HTTPError:
            return 0

    def wait_ready(self, want: bool, timeout: float) -> float:
        """Seconds until readiness is ``want`` (fails the test after ``timeout``)."""
        started = time.monotonic()
        wait_for(
            lambda: (self.ready() == 200) == want,
            timeout,
            f"readiness to become {want}",
            interval=0.2,
        )
        return time.monotonic() - started

    def model_ready(self) -> bool:
        """The ``mlp`` model answers ready."""
        try:
            return (
                httpx.get(
                    f"{self.url}/v2/models/mlp/ready",
                    verify=self.verify,
                    headers=self.headers,
                    timeout=5,
                ).status_code
                == 200
            )
        except httpx.HTTPError:
            return False


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [INFERBOX, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


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
        worker = _start(["worker"], env, logs / "worker.log")
        api = _start(["api"], env, logs / "api.log")
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
