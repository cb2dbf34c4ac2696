"""People log in to Kibana as a read-only user, not as Elasticsearch's ``elastic`` superuser.

Elasticsearch and Kibana cannot be installed here: ``logstash/setup.sh`` runs against a server
that records its requests, and the role it defines is checked against Kibana's and
Elasticsearch's documented privilege names.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "logstash" / "setup.sh"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str, bytes]] = []

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        auth = base64.b64decode(self.headers["Authorization"].split()[1]).decode()
        self.seen.append((self.command, self.path, auth, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_PUT = do_POST = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_kibana_setup_makes_a_read_only_login(recorder):
    env = {
        "PATH": "/usr/bin:/bin",
        "ELASTICSEARCH_URL": f"{recorder}/es",
        "KIBANA_URL": f"{recorder}/kb",
        "ELASTIC_PASSWORD": "superpw",
        "KIBANA_VIEWER_PASSWORD": "viewerpw",
        "KIBANA_SAVED_OBJECTS": str(ROOT / "logstash" / "kibana" / "saved-objects.ndjson"),
    }
    done = subprocess.run(
        ["sh", str(SETUP), "kibana"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    requests = {(method, path): body for method, path, _, body in _Recorder.seen}
    role = json.loads(requests[("PUT", "/kb/api/security/role/inferbox_logs_reader")])
    assert role["elasticsearch"]["cluster"] == []
    (indices,) = role["elasticsearch"]["indices"]
    assert indices == {"names": ["logs-inferbox-*"], "privileges": ["read", "view_index_metadata"]}
    (kibana,) = role["kibana"]
    assert kibana["base"] == []  # no "all" or "read" over every feature
    assert all(levels == ["read"] for levels in kibana["feature"].values())
    assert set(kibana["feature"]) <= {"discover", "dashboard", "visualize"}
    user = json.loads(requests[("PUT", "/es/_security/user/inferbox_viewer")])
    assert user["roles"] == ["inferbox_logs_reader"] and user["password"] == "viewerpw"
    assert {auth for *_, auth, _ in _Recorder.seen} == {"elastic:superpw"}  # setup's own login


def test_kibana_setup_refuses_to_run_without_the_viewers_password(recorder):
    done = subprocess.run(
        ["sh", str(SETUP), "kibana"],
        env={"PATH": "/usr/bin:/bin", "KIBANA_URL": recorder, "ELASTIC_PASSWORD": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "KIBANA_VIEWER_PASSWORD" in done.stderr
    assert _Recorder.seen == []


def test_people_are_told_to_use_the_viewer_not_the_superuser():
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "(user `elastic`" not in operations
    assert "`https://<host>/kibana/` (user `inferbox_viewer`" in operations
    env_example = (ROOT / ".env.example").read_text()
    assert "KIBANA_VIEWER_PASSWORD=GENERATED" in env_example
