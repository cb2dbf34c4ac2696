"""nginx's /ray/ location: the Ray dashboard behind a login, with Ray's token added by nginx."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.gateway import make_certs, running_gateway

pytestmark = pytest.mark.integration


class _Dashboard(BaseHTTPRequestHandler):
    """Stands in the dashboard's place: records each request's path and headers."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self):
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = b'{"dashboard": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Dashboard.seen = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_dashboard_needs_the_login_and_gets_rays_token(dashboard, tmp_path):
    htpasswd = tmp_path / "ray-dashboard.htpasswd"
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", "s3cret"], capture_output=True, text=True, check=True
    ).stdout.strip()
    htpasswd.write_text(f"ray:{hashed}\n")
    certs = make_certs(tmp_path / "certs")
    with (
        running_gateway(
            "127.0.0.1:1",
            tmp_path / "gateway",
            certs,
            ray_upstream=dashboard,
            ray_token="cluster-token",
            ray_htpasswd=str(htpasswd),
        ) as gateway,
        gateway.client() as client,
    ):
        assert client.get("/ray/").status_code == 401
        assert client.get("/ray/", auth=("ray", "wrong")).status_code == 401
        assert _Dashboard.seen == []
        answer = client.get("/ray/api/cluster_status?x=1", auth=("ray", "s3cret"))
        assert answer.status_code == 200 and answer.json() == {"dashboard": True}
    path, headers = _Dashboard.seen[-1]
    assert path == "/api/cluster_status?x=1"
    assert headers["x-ray-authorization"] == "Bearer cluster-token"
    assert "authorization" not in headers  # the login stays at nginx
