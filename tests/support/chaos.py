"""The reliability suite's settings and the handle on its stack: how long and how hard it
pushes, the running processes and the servers to break."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.gateway import Gateway
from tests.support.postgres import PostgresServer
from tests.support.processes import start_inferbox
from tests.support.redis import RedisServer
from tests.support.s3 import S3Server
from tests.support.waiting import wait_for


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
        self.worker = start_inferbox(["worker"], self.env, self.logs / "worker.log", append=True)

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
