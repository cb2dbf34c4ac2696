"""Bad inputs through nginx: malformed tensors, hostile model files, missing and wrong keys,
internal endpoints, and dependencies that must refuse anonymous clients in the compose setup.

Every malformed tensor must be refused with a 4xx, quickly, before anything is queued (the
streams' ``entries-added`` counters do not move); every hostile model must be refused without
touching the serving versions or the bucket.
"""

from __future__ import annotations

import json
import re
import socket
import time
import warnings
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import yaml

from inferbox.config import Settings
from inferbox.registry.objects import ObjectStore
from tests.registry.bad_models import CORPUS
from tests.reliability.report import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAST_S = 1.0
"""A refusal must come back within this (it is decided before anything is queued)."""


def _tensor(name="x", datatype="FP32", shape=(1, 64), data=None, **extra) -> dict:
    tensor = {"name": name, "datatype": datatype, "shape": list(shape)}
    tensor["data"] = [0.5] * 64 if data is None else data
    tensor.update(extra)
    return tensor


def _json(*tensors, **extra) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def _binary(header: dict, payload: bytes, length: int | str | None = None):
    encoded = json.dumps(header).encode()
    return encoded + payload, str(len(encoded) if length is None else length)


def _bin_input(name, datatype, shape, size) -> dict:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


# (model, body, Inference-Header-Content-Length or None); every one must be refused.
CORPUS_TENSORS: dict[str, tuple[str, bytes, str | None]] = {
    "empty body": ("mlp", b"", None),
    "null": ("mlp", b"null", None),
    "a string": ("mlp", b'"inputs"', None),
    "truncated json": ("mlp", b'{"inputs": [{"name": "x"', None),
    "invalid utf-8": ("mlp", b'{"inputs": "\xff\xfe"}', None),
    "deeply nested": ("mlp", b"[" * 100_000 + b"]" * 100_000, None),
    "inputs is an object": ("mlp", b'{"inputs": {"x": 1}}', None),
    "input without a name": ("mlp", _json({"datatype": "FP32", "shape": [1, 64]}), None),
    "unknown datatype": ("mlp", _json(_tensor(datatype="FP128")), None),
    "lowercase datatype": ("mlp", _json(_tensor(datatype="fp32")), None),
    "wrong datatype for the model": ("mlp", _json(_tensor(datatype="INT32", data=[1] * 64)), None),
    "shape is a string": ("mlp", _json(_tensor(shape="1,64")), None),
    "shape with a float": ("mlp", _json(_tensor(shape=(1.5, 64))), None),
    "negative dimension": ("mlp", _json(_tensor(shape=(-1, 64))), None),
    "huge dimension": ("mlp", _json(_tensor(shape=(2**62, 64))), None),
    "dimension over int64": ("mlp", _json(_tensor(shape=(2**70, 64))), None),
    "product overflows": ("mlp", _json(_tensor(shape=(2**31, 2**31, 2**31))), None),
    "rank 100": ("mlp", _json(_tensor(shape=[1] * 100, data=[0.5])), None),
    "too few elements": ("mlp", _json(_tensor(data=[0.5] * 63)), None),
    "too many elements": ("mlp", _json(_tensor(data=[0.5] * 65)), None),
    "nested data of the wrong shape": ("mlp", _json(_tensor(data=[[0.5] * 32] * 3)), None),
    "null in data": ("mlp", _json(_tensor(data=[None] * 64)), None),
    "object in data": ("mlp", _json(_tensor(data=[{}] * 64)), None),
    "NaN in integer data": (
        "ints",
        b'{"inputs": [{"name": "in_INT32", "datatype": "INT32", "shape": [1, 2],'
        b' "data": [1, NaN]}]}',
        None,
    ),
    "Infinity in integer data": (
        "ints",
        b'{"inputs": [{"name": "in_INT32", "datatype": "INT32", "shape": [1, 2],'
        b' "data": [Infinity, 1]}]}',
        None,
    ),
    "float in integer data": (
        "ints",
        _json(_tensor("in_INT32", "INT32", (1, 2), [1.5, 2])),
        None,
    ),
    "integer beyond INT32": (
        "ints",
        _json(_tensor("in_INT32", "INT32", (1, 2), [2**40, 1])),
        None,
    ),
    "integer beyond int64": (
        "ints",
        _json(_tensor("in_INT32", "INT32", (1, 2), [2**70, 1])),
        None,
    ),
    "bool in integer data": (
        "ints",
        _json(_tensor("in_INT32", "INT32", (1, 2), [True, "1"])),
        None,
    ),
    "number in BYTES data": ("strings", _json(_tensor("in_BYTES", "BYTES", (1, 1), [7])), None),
    "header length past the body": ("mlp", *_binary({"inputs": []}, b"", 10_000)),
    "header length negative": ("mlp", *_binary({"inputs": []}, b"", -5)),
    "header length not a number": ("mlp", *_binary({"inputs": []}, b"", "0x10")),
    "header length zero": ("mlp", *_binary({"inputs": []}, b"", 0)),
    "header length huge": ("mlp", *_binary({"inputs": []}, b"", 2**64)),
    "header length cuts the json": ("mlp", *_binary({"inputs": []}, b"", 5)),
    "binary shorter than declared": (
        "mlp",
        *_binary({"inputs": [_bin_input("x", "FP32", [1, 64], 256)]}, b"\0" * 100),
    ),
    "binary size disagrees with shape": (
        "mlp",
        *_binary({"inputs": [_bin_input("x", "FP32", [1, 64], 8)]}, b"\0" * 8),
    ),
    "binary size negative": (
        "mlp",
        *_binary({"inputs": [_bin_input("x", "FP32", [1, 64], -256)]}, b"\0" * 256),
    ),
    "binary size not a number": (
        "mlp",
        *_binary({"inputs": [_bin_input("x", "FP32", [1, 64], "256")]}, b"\0" * 256),
    ),
    "trailing bytes after the tensors": (
        "mlp",
        *_binary({"inputs": [_bin_input("x", "FP32", [1, 64], 256)]}, b"\0" * 300),
    ),
    "binary and json data together": (
        "mlp",
        *_binary(
            {"inputs": [{**_bin_input("x", "FP32", [1, 64], 256), "data": [0.5] * 64}]},
            b"\0" * 256,
        ),
    ),
    "BYTES length prefix past the data": (
        "strings",
        *_binary(
            {"inputs": [_bin_input("in_BYTES", "BYTES", [1, 1], 8)]},
            (1000).to_bytes(4, "little") + b"abcd",
        ),
    ),
    "BYTES invalid utf-8": (
        "strings",
        *_binary(
            {"inputs": [_bin_input("in_BYTES", "BYTES", [1, 1], 6)]},
            (2).to_bytes(4, "little") + b"\xff\xfe",
        ),
    ),
    "FP32 binary of odd length": (
        "mlp",
        *_binary({"inputs": [_bin_input("x", "FP32", [1, 64], 255)]}, b"\0" * 255),
    ),
}


def _added(stack, model: str) -> int:
    """Entries ever added to both lanes of a model's version 1 stream."""
    client = stack.redis.client()
    total = 0
    for lane in ("hi", "lo"):
        stream = f"chaos:q:{model}:1:{lane}"
        if client.exists(stream):
            total += client.xinfo_stream(stream)["entries-added"]
    return total


def test_malformed_tensors_are_4xx_fast_and_never_queued(healthy):
    before = {model: _added(healthy, model) for model in ("mlp", "ints", "strings")}
    slowest = 0.0
    problems = []
    with healthy.client() as client:
        for label, (model, body, header_length) in CORPUS_TENSORS.items():
            headers = {"Content-Type": "application/json"}
            if header_length is not None:
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": header_length,
                }
            started = time.monotonic()
            response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            took = time.monotonic() - started
            slowest = max(slowest, took)
            if not 400 <= response.status_code < 500 or took > FAST_S:
                problems.append((label, response.status_code, round(took, 3), response.text[:200]))
            elif "error" not in response.json():
                problems.append((label, "no error field", response.text[:200]))
        # The same connection still serves a good call afterwards.
        good = client.post("/v2/models/mlp/infer", json={"inputs": [_tensor()]})
        assert good.status_code == 200, good.text
    after = {model: _added(healthy, model) for model in before}
    after["mlp"] -= 1  # the good call
    record(
        "bad_inputs",
        {
            "corpus": "malformed tensors",
            "tried": len(CORPUS_TENSORS),
            "refused_4xx": len(CORPUS_TENSORS) - len(problems),
            "slowest_s": round(slowest, 3),
            "queued": sum(after.values()) - sum(before.values()),
        },
    )
    assert not problems, problems
    assert after == before


def _serving_state(client: httpx.Client) -> list:
    model = client.get("/v1/models/mlp").json()
    return [
        sorted((v["version"], v.get("state")) for v in model["versions"]),
        model.get("aliases"),
    ]


def test_hostile_models_are_refused_and_change_nothing(healthy, tmp_path):
    store = ObjectStore(
        healthy.s3.endpoint,
        "test-access",
        "test-secret",
        healthy.env["INFERBOX_S3_BUCKET"],
        secure=False,
        region="us-east-1",
    )
    objects_before = sorted(store.object_keys())
    uploads = Path(healthy.env["INFERBOX_UPLOAD_DIR"])
    problems = []
    with healthy.client() as client:
        state_before = _serving_state(client)
        for index, (build, reason) in enumerate(CORPUS):
            folder = tmp_path / str(index)
            folder.mkdir()
            data = build(folder).read_bytes()
            # Both upload forms: a raw body and a multipart form.
            for form in ("raw", "multipart"):
                if form == "raw":
                    response = client.post("/v1/models/mlp/versions", content=data)
                else:
                    response = client.post(
                        "/v1/models/mlp/versions", files={"file": ("model.onnx", data)}
                    )
                detail = response.json().get("detail", "") if response.content else ""
                if response.status_code != 422 or reason not in detail:
                    problems.append((build.__name__, form, response.status_code, detail[:200]))
        state_after = _serving_state(client)
        served = client.post("/v2/models/mlp/infer", json={"inputs": [_tensor()]})
    record(
        "bad_inputs",
        {
            "corpus": "hostile models",
            "tried": 2 * len(CORPUS),
            "refused_422": 2 * len(CORPUS) - len(problems),
        },
    )
    assert not problems, problems
    assert state_after == state_before
    assert sorted(store.object_keys()) == objects_before
    assert not any(uploads.iterdir()) if uploads.exists() else True
    assert served.status_code == 200, served.text


OPEN = {("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
"""Routes anyone may call (``/metrics`` too, but nginx never forwards it: see below)."""


def routes() -> list[tuple[str, str]]:
    """(method, template) of every route the app has, the inference routes included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of route declarations
        from inferbox.api.app import create_app

        app = create_app(Settings())
    found = {
        ("POST", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"),
    }
    for route in app.routes:
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if template.startswith("/docs"):
            continue
        for method in getattr(route, "methods", ()):
            if method not in ("HEAD", "OPTIONS"):
                found.add((method, template))
    return sorted(found - OPEN)


VALUES = defaultdict(lambda: "1", name="mlp", alias="production", key_id="ibk_NoSuchK1")
BAD_KEYS = {
    "no key": {},
    "unknown key": {"Authorization": "Bearer ibk_AbCdEfGh." + "x" * 43},
    "malformed key": {"Authorization": "Bearer not-a-key"},
    "empty bearer": {"Authorization": "Bearer"},
    "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
    "key in the query": {},
}


def test_every_route_refuses_missing_and_wrong_keys_through_nginx(healthy):
    failures = []
    tried = 0
    with httpx.Client(base_url=healthy.url, verify=healthy.verify, timeout=20) as client:
        # A real key with a changed secret: the id exists, the secret does not match.
        wrong_secret = healthy.api_key.split(".")[0] + "." + "A" * 43
        cases = {**BAD_KEYS, "wrong secret": {"Authorization": f"Bearer {wrong_secret}"}}
        for method, template in routes():
            path = template.format_map(VALUES)
            for label, headers in cases.items():
                url = path + (f"?api_key={healthy.api_key}" if label == "key in the query" else "")
                body = {} if method in ("POST", "PUT", "PATCH") else None
                response = client.request(method, url, json=body, headers=headers)
                tried += 1
                if response.status_code != 401:
                    failures.append((method, template, label, response.status_code))
    record(
        "bad_inputs",
        {"corpus": "auth probes", "tried": tried, "refused_401": tried - len(failures)},
    )
    assert not failures, failures


INTERNAL = [
    "/metrics",
    "/metrics/",
    "/METRICS",
    "//metrics",
    "/v2/../metrics",
    "/v2/%2e%2e/metrics",
    "/v1/../metrics",
    "/docs/../metrics",
    "/v2/health/../../metrics",
    "/%6detrics",
    "/metrics?format=prometheus",
]


def test_no_internal_endpoint_is_reachable_through_nginx(healthy):
    leaks = []
    with httpx.Client(base_url=healthy.url, verify=healthy.verify, timeout=20) as client:
        for path in INTERNAL:
            response = client.get(path, headers=healthy.headers)
            if response.status_code < 400 or "inferbox_" in response.text:
                leaks.append((path, response.status_code))
        # The worker's metrics port answers on 127.0.0.1 only, and never through nginx.
        worker_port = healthy.env["INFERBOX_WORKER_METRICS_PORT"]
        response = client.get(f"/:{worker_port}/metrics")
        if response.status_code < 400:
            leaks.append(("worker port path", response.status_code))
    # The API's own /metrics (what Prometheus scrapes directly) does answer: the paths
    # above would have reached it.
    assert "inferbox_" in httpx.get(f"{healthy.api_url}/metrics").text
    record(
        "bad_inputs", {"corpus": "internal paths", "tried": len(INTERNAL) + 1, "leaks": len(leaks)}
    )
    assert not leaks, leaks


def test_compose_dependencies_refuse_unauthenticated_clients():
    """Redis, PostgreSQL and MinIO in compose.yaml need credentials that compose refuses to
    start without, and none of them is published outside the backend network."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    redis_command = " ".join(str(part) for part in services["redis"]["command"])
    assert "--aclfile /etc/redis/users.acl" in redis_command
    assert "protected-mode no" not in redis_command
    # Every Redis user, `default` included, has a password compose refuses to start without.
    users = compose["configs"]["redis-users"]["content"].splitlines()
    assert [line.split()[1] for line in users] == [
        "default",
        "inferbox-api",
        "inferbox-grpc",
        "inferbox-worker",
    ]
    for line in users:
        assert re.search(r" on >\$\{REDIS_[A-Z_]*PASSWORD:\?", line), line
        assert "nopass" not in line
    postgres_env = services["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    # The image's default for a set password is scram-sha-256; "trust" would let anyone in.
    assert "POSTGRES_HOST_AUTH_METHOD" not in postgres_env
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_ROOT_USER"].startswith("${MINIO_ROOT_USER:?")
    assert minio_env["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    for name in ("redis", "postgres", "minio"):
        assert "ports" not in services[name], name
        assert services[name]["networks"] == ["backend"], name
    # The appliance's own processes use those credentials.
    shared = json.dumps(compose)
    assert "redis://:${REDIS_PASSWORD:?" in shared
    assert "postgresql://inferbox:${POSTGRES_PASSWORD:?" in shared


# Requests schemathesis found answering 500 (values PostgreSQL or the date arithmetic cannot
# take); each must be a 4xx now.
STORABLE = [
    ("GET", "/v1/audit", {"action": "a\x00b"}, None),
    ("POST", "/v1/keys", None, {"name": "k", "scopes": ["infer"], "expires_in_s": 1.3e16}),
    ("POST", "/v1/keys", None, {"name": "k", "scopes": ["infer"], "max_concurrency": 2**80}),
    ("POST", "/v1/keys", None, {"name": "k", "scopes": ["infer"], "priority": 2**40}),
    ("POST", "/v1/keys", None, {"name": "k\x00", "scopes": ["infer"]}),
    ("PATCH", "/v1/models/mlp/versions/999/config", None, {"\x00": 1, "timeout_ms": 5}),
    ("PATCH", "/v1/models/%C3%A5%00/versions/1/config", None, b'{"\\u0000\\ud800": [1]}'),
]


@pytest.mark.parametrize(("method", "path", "params", "body"), STORABLE)
def test_values_the_database_cannot_store_are_4xx(healthy, method, path, params, body):
    with healthy.client() as client:
        if isinstance(body, bytes):  # JSON escapes httpx would not write (a lone surrogate)
            response = client.request(
                method,
                path,
                params=params,
                content=body,
                headers={"Content-Type": "application/json"},
            )
        else:
            response = client.request(method, path, params=params, json=body)
    assert 400 <= response.status_code < 500, response.text
    # The API's problem details, or nginx's own JSON error for a path it cannot parse.
    assert response.headers["content-type"] in ("application/problem+json", "application/json")


RAW_REQUESTS = {
    "NUL in the path": b"GET /v2/models/%00/ready HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in a /v1 path": b"PATCH /v1/models/a%00/versions/1/config HTTP/1.1\r\nHost: x\r\n\r\n",
    "path escaping the root": b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad percent escape": b"GET /v2/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    "two content lengths": (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}"
    ),
}


@pytest.mark.parametrize("raw", RAW_REQUESTS.values(), ids=RAW_REQUESTS.keys())
def test_malformed_http_gets_a_json_400_from_nginx(healthy, raw):
    address = ("127.0.0.1", healthy.gateway.https_port)
    with (
        socket.create_connection(address, timeout=10) as sock,
        healthy.verify.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    assert 400 <= status < 500, answer[:300]
    assert b"application/json" in rest.partition(b"\r\n\r\n")[0], answer[:300]
    json.loads(rest.partition(b"\r\n\r\n")[2])
