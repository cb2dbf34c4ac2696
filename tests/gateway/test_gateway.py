"""The gateway as clients meet it: TLS, HTTP/2, redirects, limits, JSON errors, request ids."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.observability.test_log_fields import COMPATIBLE, MAPPING
from tests.support.auth import auth_headers
from tests.support.paths import ROOT
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def triton_client(gateway) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        gateway.url.removeprefix("https://"),
        ssl=True,
        ssl_options={"ca_certs": str(gateway.ca)},
        network_timeout=30,
    )


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension request for ``mlp`` (input ``x``, output ``y`` as binary)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + x.astype("<f4").tobytes(), headers


def test_tritonclient_over_https_json_and_binary(gateway, appliance):
    client = triton_client(gateway)
    headers = auth_headers(appliance)
    try:
        assert client.is_server_ready(headers=headers)
        x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
        results = {}
        for binary in (False, True):
            tensor = triton.InferInput("x", [3, 64], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            out = triton.InferRequestedOutput("y", binary_data=binary)
            results[binary] = client.infer("mlp", [tensor], outputs=[out], headers=headers)
        assert results[True].as_numpy("y").shape == (3, 10)
        np.testing.assert_allclose(results[False].as_numpy("y"), results[True].as_numpy("y"))
        # An error from the API itself reaches tritonclient as the API wrote it.
        with pytest.raises(InferenceServerException, match="nope"):
            client.get_model_metadata("nope", headers=headers)
    finally:
        client.close()


def test_api_down_is_502_in_json_that_tritonclient_reads(orphan_gateway):
    with orphan_gateway.client() as http:
        response = http.post("/v2/models/mlp/infer", json={"inputs": []})
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "the API is unreachable"}
        assert http.get("/v2/health/ready").status_code == 502
    client = triton_client(orphan_gateway)
    try:
        tensor = triton.InferInput("x", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
        with pytest.raises(InferenceServerException, match="the API is unreachable"):
            client.infer("mlp", [tensor])
    finally:
        client.close()


def test_binary_bodies_pass_unchanged(gateway, appliance):
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    body, headers = binary_request(x)
    headers |= auth_headers(appliance)
    direct = httpx.post(f"{appliance.url}/v2/models/mlp/infer", content=body, headers=headers)
    with gateway.client() as http:
        proxied = http.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert proxied.content == direct.content
    assert (
        proxied.headers["inference-header-content-length"]
        == (direct.headers["inference-header-content-length"])
    )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        (ssl.TLSVersion.TLSv1, False),
        (ssl.TLSVersion.TLSv1_1, False),
        (ssl.TLSVersion.TLSv1_2, True),
        (ssl.TLSVersion.TLSv1_3, True),
    ],
)
def test_only_tls_1_2_and_1_3_are_accepted(gateway, version, accepted):
    context = gateway.context()
    # Let this client offer the old versions at all (OpenSSL 3 refuses them by default).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", gateway.https_port), timeout=10) as sock:
        if accepted:
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                assert tls.version() == version.name.replace("_", ".")
        else:
            with pytest.raises(ssl.SSLError) as refused:
                context.wrap_socket(sock, server_hostname="127.0.0.1")
            # The server's refusal, not the client's: it answered with a protocol_version alert.
            assert "PROTOCOL_VERSION" in str(refused.value), refused.value


def test_http_2_is_negotiated_with_alpn(gateway):
    context = gateway.context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", gateway.https_port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_http_redirects_to_https(gateway):
    response = httpx.get(f"{gateway.http_url}/v2/models/mlp?x=1", follow_redirects=False)
    assert response.status_code == 301
    assert response.headers["location"] == f"{gateway.url}/v2/models/mlp?x=1"


def test_plain_http_redirects_only_for_the_certificates_names(gateway):
    """Host comes from the client: a redirect to any Host would send a client wherever that
    Host says. Only the names the certificate was made for (scripts/certs: localhost,
    127.0.0.1, ::1) are redirected; any other name gets 421."""
    names = (gateway.certs / "tls.crt.names.conf").read_text()
    assert "server_name localhost 127.0.0.1 [::1];" in names
    port = gateway.https_port
    for host, location in (
        ("localhost", f"https://localhost:{port}/v2?x=1"),
        ("LocalHost:80", f"https://localhost:{port}/v2?x=1"),
        ("[::1]", f"https://[::1]:{port}/v2?x=1"),
        ("127.0.0.1", f"https://127.0.0.1:{port}/v2?x=1"),
    ):
        response = httpx.get(f"{gateway.http_url}/v2?x=1", headers={"Host": host})
        assert (response.status_code, response.headers.get("location")) == (301, location), host
    for host in ("evil.example", "localhost.evil.example", "127.0.0.2", "[::2]"):
        response = httpx.get(f"{gateway.http_url}/v2?x=1", headers={"Host": host})
        assert response.status_code == 421, host
        assert "location" not in response.headers
        assert response.headers["content-type"] == "application/json"
        assert "certificate" in response.json()["error"]
    # A host in the request line counts, not the Host header beside it.
    address = gateway.http_url.removeprefix("http://").split(":")
    with socket.create_connection((address[0], int(address[1])), timeout=10) as sock:
        sock.sendall(b"GET http://evil.example/v2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 421 ") and "Location" not in head, head


def test_hsts_and_health_pass_through(gateway):
    with gateway.client() as http:
        for path, status in (("/v2/health/live", 200), ("/v2/health/ready", 200), ("/x", 404)):
            response = http.get(path)
            assert response.status_code == status, path
            assert response.headers["strict-transport-security"].startswith("max-age=")


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "/", "/internal", "/v2health"])
def test_internal_paths_are_not_reachable(gateway, appliance, path):
    assert httpx.get(f"{appliance.url}/metrics").status_code == 200  # it is there, directly
    with gateway.client() as http:
        response = http.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "not found"}


def test_body_over_the_limit_is_413_in_json(strict_gateway, appliance):
    x = np.zeros((16, 64), np.float32)  # 4 KiB of tensor bytes plus the header: over 4k
    body, headers = binary_request(x)
    with strict_gateway.client() as http:
        response = http.post(
            "/v2/models/mlp/infer", content=body, headers=headers | auth_headers(appliance)
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "too large" in response.json()["error"]
    assert response.headers["x-request-id"]
    # A small one passes.
    body, headers = binary_request(np.zeros((1, 64), np.float32))
    with strict_gateway.client() as http:
        response = http.post(
            "/v2/models/mlp/infer", content=body, headers=headers | auth_headers(appliance)
        )
    assert response.status_code == 200, response.text


def test_rate_limit_answers_429_in_json_and_recovers(strict_gateway, appliance):
    time.sleep(1.5)  # what earlier tests used of the bucket refills
    with strict_gateway.client() as http:
        statuses = [http.get("/v2") for _ in range(12)]
        codes = [r.status_code for r in statuses]
        assert 200 in codes and 429 in codes, codes
        limited = next(r for r in statuses if r.status_code == 429)
        assert limited.json() == {"error": "too many requests from this address"}
        assert limited.headers["retry-after"] == "1"
        # Health checks are not limited.
        assert http.get("/v2/health/ready").status_code == 200
        time.sleep(1.2)
        assert http.get("/v2").status_code == 200
    lines = [line for line in strict_gateway.access_lines() if line["status"] == 429]
    assert lines and lines[-1]["path"] == "/v2"


def test_calls_with_a_key_are_not_limited_by_address(strict_gateway, appliance):
    """The address limit (2/s here) is for calls without a key; a backend service calling
    with its key from one address is governed by the key's own limits only."""
    headers = auth_headers(appliance)
    time.sleep(1.5)
    with strict_gateway.client() as http:
        codes = [http.get("/v2/models/mlp", headers=headers).status_code for _ in range(30)]
        assert codes == [200] * 30, codes
        # Without a key the same address is limited (the 401s count too).
        keyless = [http.get("/v2/models/mlp").status_code for _ in range(12)]
        assert 429 in keyless and set(keyless) <= {401, 429}, keyless


def test_request_id_is_generated_or_kept(gateway, appliance):
    headers = auth_headers(appliance)
    with gateway.client() as http:
        fresh = http.get("/v2/models/mlp", headers=headers)
        assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
        mine = f"client-{uuid.uuid4().hex}"
        kept = http.get("/v2/models/mlp", headers=headers | {"X-Request-ID": mine})
        assert kept.headers.get_list("x-request-id") == [mine]
        # Something that is no id (too long, odd characters) is replaced.
        odd = http.get("/v2/models/mlp", headers=headers | {"X-Request-ID": "a b" * 100})
        assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])


def test_one_request_id_in_nginx_api_and_worker_logs(gateway, appliance):
    """A call that times out in the API while the worker computes it: all three log its id."""
    request_id = f"gw-{uuid.uuid4().hex}"
    x = np.ones((256, 1024), np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [256, 1024],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"timeout": 100_000},
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "X-Request-ID": request_id,
        **auth_headers(appliance),
    }
    with gateway.client() as http:
        response = http.post("/v2/models/slow/infer", content=header + x.tobytes(), headers=headers)
    assert response.status_code == 504
    assert "error" in response.json()  # the API's own answer, passed through
    assert response.headers.get_list("x-request-id") == [request_id]

    def logged(name: str, service: str) -> bool:
        for raw in (appliance.logs / name).read_text().splitlines():
            line = json.loads(raw)
            if line.get("request_id") == request_id and line.get("service") == service:
                return True
        return False

    wait_for(lambda: logged("worker.log", "worker"), 20, "the worker to log the call", 0.2)
    assert logged("api.log", "api")
    (access,) = [line for line in gateway.access_lines() if line["request_id"] == request_id]
    assert access["status"] == 504
    assert access["path"] == "/v2/models/slow/infer"
    assert access["method"] == "POST"
    assert access["duration_ms"] >= 100
    assert access["upstream_ms"] >= 100


def test_access_log_lines_are_json_with_mapped_fields(gateway, appliance):
    with gateway.client() as http:
        http.get("/v2/models/mlp", headers=auth_headers(appliance))
        http.get("/metrics")
    lines = gateway.access_lines()
    assert lines
    for line in lines:
        for key in ("@timestamp", "level", "service", "message", "request_id", "status"):
            assert key in line, line
        assert line["service"] == "nginx"
        for key, value in line.items():
            if value is None:
                continue
            assert key in MAPPING, f"field {key!r} (e.g. {line}) is not in the index template"
            assert MAPPING[key]["type"] in COMPATIBLE[type(value)], (key, value, MAPPING[key])


def test_access_log_says_whether_the_response_cache_answered(gateway, appliance):
    x = np.random.default_rng(uuid.uuid4().int).standard_normal((1, 64)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": x.tolist()}]}
    ids = {}
    with gateway.client() as http:
        for label, model in (("first", "cached"), ("again", "cached"), ("uncached", "mlp")):
            ids[label] = f"cache-{label}-{uuid.uuid4().hex}"
            headers = {"X-Request-ID": ids[label], **auth_headers(appliance)}
            response = http.post(f"/v2/models/{model}/infer", json=body, headers=headers)
            assert response.status_code == 200, response.text
    flags = {}
    for line in gateway.access_lines():
        for label, request_id in ids.items():
            if line["request_id"] == request_id:
                flags[label] = line["cache"]
    assert flags == {"first": "miss", "again": "hit", "uncached": ""}


def test_reload_and_certificate_rotation_keep_serving(gateway, appliance):
    headers = auth_headers(appliance)
    errors: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def load():
        context = gateway.context()
        while not stop.is_set():
            try:  # a new connection each time: idle keep-alive connections close on reload
                response = httpx.get(
                    f"{gateway.url}/v2/models/mlp", headers=headers, verify=context
                )
                statuses.append(response.status_code)
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            # Paced well under the per-address rate limit: a 429 here would be the test's own.
            time.sleep(0.02)

    def serial() -> int:
        with (
            socket.create_connection(("127.0.0.1", gateway.https_port), timeout=10) as sock,
            gateway.context().wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        out = subprocess.run(
            ["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
            input=der,
            capture_output=True,
            check=True,
        )
        return int(out.stdout.decode().strip().split("=")[1], 16)

    before = serial()
    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.3)
        renewed = subprocess.run(
            [str(ROOT / "scripts" / "certs"), "--renew", str(gateway.certs)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert renewed.returncode == 0, renewed.stderr
        gateway.signal("reload")
        wait_for(lambda: serial() != before, 10, "the new certificate to be served", 0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors[:3]
    assert statuses and set(statuses) == {200}, set(statuses)


def test_console_logins_are_rate_limited_per_address(gateway):
    """Password guessing at Grafana's or Kibana's login: 30 a minute per address (a burst of
    5), whatever the upstream answers (here there is none: 502)."""
    for path in ("/grafana/login", "/kibana/internal/security/login"):

        def login(_, path=path) -> int:
            with gateway.client() as http:
                return http.post(path, json={}).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(login, range(12)))
        assert 429 in codes and set(codes) - {429}, (path, codes)
