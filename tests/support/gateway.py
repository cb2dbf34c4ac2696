"""nginx from the Debian package, run with the shipped config in front of a test API.

The config is rendered by ``scripts/nginx-config`` (as ``scripts/stack`` does) with the test API
as upstream, free ports, and a certificate made by ``scripts/certs`` in a temporary folder.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.paths import ROOT
from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_for


def nginx_binary() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if path is None:
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/test does it)")
    return path


@dataclass
class Gateway:
    """A running nginx: its HTTPS and HTTP addresses, the CA to trust, and its files."""

    url: str
    http_url: str
    https_port: int
    ca: Path
    certs: Path
    prefix: Path
    conf: Path
    access_log: Path
    error_log: Path
    binary: str

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.context(), timeout=30, **kwargs)

    def signal(self, name: str) -> None:
        """``nginx -s NAME`` for this instance (reload, reopen, quit)."""
        done = subprocess.run(
            [
                self.binary,
                "-p",
                f"{self.prefix}/",
                "-c",
                str(self.conf),
                "-e",
                "stderr",
                "-s",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr

    def access_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.access_log.read_text().splitlines()]


def make_certs(folder: Path) -> Path:
    done = subprocess.run(
        [str(ROOT / "scripts" / "certs"), str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@contextmanager
def running_gateway(
    upstream: str, workdir: Path, certs: Path, **settings: str
) -> Iterator[Gateway]:
    """Render the config for ``upstream`` into ``workdir``, start nginx, wait until it serves."""
    binary = nginx_binary()
    https_port, http_port = free_port(), free_port()
    prefix = workdir / "nginx"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INFERBOX_NGINX_")},
        "INFERBOX_NGINX_UPSTREAM": upstream,
        "INFERBOX_NGINX_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "INFERBOX_NGINX_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "INFERBOX_NGINX_HTTPS_PORT": str(https_port),
        "INFERBOX_NGINX_CERT": str(certs / "tls.crt"),
        "INFERBOX_NGINX_KEY": str(certs / "tls.key"),
        "INFERBOX_NGINX_ACCESS_LOG": str(logs / "access.log"),
        "INFERBOX_NGINX_ERROR_LOG": str(logs / "error.log"),
        "INFERBOX_NGINX_PID": str(prefix / "nginx.pid"),
        "INFERBOX_NGINX_TEMP_DIR": str(prefix / "temp"),
        "INFERBOX_NGINX_USER": getpass.getuser(),
        "INFERBOX_NGINX_WORKER_PROCESSES": "1",
        **{f"INFERBOX_NGINX_{key.upper()}": value for key, value in settings.items()},
    }
    rendered = subprocess.run(
        [str(ROOT / "scripts" / "nginx-config"), str(prefix)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert rendered.returncode == 0, rendered.stderr
    conf = Path(rendered.stdout.strip())
    gateway = Gateway(
        url=f"https://127.0.0.1:{https_port}",
        http_url=f"http://127.0.0.1:{http_port}",
        https_port=https_port,
        ca=certs / "ca.crt",
        certs=certs,
        prefix=prefix,
        conf=conf,
        access_log=logs / "access.log",
        error_log=logs / "error.log",
        binary=binary,
    )
    with (logs / "nginx.out").open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"nginx exited: {(logs / 'nginx.out').read_text()}"
                f"{gateway.error_log.read_text() if gateway.error_log.exists() else ''}"
            )
        try:  # any answer: nginx serves (some tests give it no upstream)
            return httpx.get(f"{gateway.url}/v2/health/live", verify=gateway.context()) is not None
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 20, "nginx to serve", interval=0.1)
        yield gateway
    finally:
        stop_process(proc, 10)
