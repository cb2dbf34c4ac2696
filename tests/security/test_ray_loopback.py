"""nginx/ray-loopback.conf: the Ray dashboard and the Ray worker's metrics, which bind the host's
127.0.0.1 only, are reached through Unix sockets (the compose wiring: tests/compose)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.server.server_address[1]} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _loopback_server() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_sockets_reach_what_listens_on_loopback(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/test does it)")
    dashboard, metrics = _loopback_server(), _loopback_server()
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    # The shipped file with this run's folder and ports in place of the container's.
    config = (
        (ROOT / "nginx" / "ray-loopback.conf")
        .read_text()
        .replace("/run/ray-sockets/", f"{sockets}/")
        .replace("/tmp/ray-loopback.pid", str(tmp_path / "nginx.pid"))
        .replace("127.0.0.1:8265", f"127.0.0.1:{dashboard.server_address[1]}")
        .replace("127.0.0.1:9401", f"127.0.0.1:{metrics.server_address[1]}")
    )
    if Path(STREAM_MODULE).exists():  # Debian's nginx has the stream module apart
        config = f"load_module {STREAM_MODULE};\n{config}"
    (tmp_path / "ray-loopback.conf").write_text(config)
    proc = subprocess.Popen(
        [
            nginx,
            "-e",
            "stderr",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "ray-loopback.conf"),
            "-g",
            "daemon off;",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (sockets / "worker-metrics.sock").exists(), 10, "nginx's sockets")
        for name, server in (("dashboard", dashboard), ("worker-metrics", metrics)):
            transport = httpx.HTTPTransport(uds=str(sockets / f"{name}.sock"))
            with httpx.Client(transport=transport) as client:
                answer = client.get("http://ray/metrics")
            assert answer.text == f"{server.server_address[1]} /metrics"
    finally:
        proc.terminate()
        proc.wait(10)
        for server in (dashboard, metrics):
            server.shutdown()
            server.server_close()
