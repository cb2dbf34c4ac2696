"""Every route of the app, with every kind of key, called at its canonical path and at variants
of it (repeated and encoded slashes, dot segments, encoded dots, case, trailing slashes, ``;``
parameters, query tricks), straight at the API and through the shipped nginx.

A variant must get the canonical path's answer or be refused (400 as not canonical, or a
routing 404/405): it never reaches a handler, least of all one its key may not use. The routes
come from the app itself, so a new route is covered without anyone listing it.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from inferbox.api.app import create_app
from inferbox.config import Settings
from inferbox.security.access import ACCESS, access_of, canonical
from tests.support.gateway import make_certs, running_gateway
from tests.support.path_variants import variants
from tests.support.paths import INFERBOX

pytestmark = pytest.mark.integration

GHOST = "matrix-ghost"
VALUES = {
    "name": GHOST,
    "version": "1",
    "alias": "production",
    "key_id": "ibk_NoSuchK1",
    "job_id": "00000000-0000-4000-8000-000000000000",
    "input_id": "in_000000000000000000000000",
    "path": "nothing",
}
KINDS = ("no key", "infer, other model", "jobs", "models:write, this model", "admin")
ROUTE_MISS = {"not found", "method not allowed"}
"""The detail of Litestar's (and nginx's) own 404/405: the request reached no handler."""


def app_routes() -> list[tuple[str, str]]:
    """(method, concrete canonical path) of every route handler of the app but Litestar's own
    OPTIONS answers."""
    app = create_app(Settings())
    found = set()
    for route in app.routes:
        for handler in route.route_handlers:
            for method in handler.http_methods:
                if method != "OPTIONS":
                    template = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
                    found.add((str(method), template.format(**VALUES)))
    return sorted(found)


ROUTES = app_routes()


def request(base: str, method: str, path: str, key: str | None, ctx=None) -> tuple[int, str]:
    """One request with ``path`` sent exactly as given (no client-side normalization)."""
    parts = urlsplit(base)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Connection": "close"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = None
    if method in ("POST", "PUT", "PATCH"):
        body = b"{}"
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def detail(body: str) -> str:
    """The message of an error answer (V2 ``error`` or problem details ``detail``)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict):
        return ""
    return str(parsed.get("error") or parsed.get("detail") or "")


def refused(status: int, body: str) -> bool:
    """The variant was refused before any handler: not canonical, or no route matched."""
    message = detail(body).lower()
    if status == 400:
        return "not canonical" in message
    return status in (404, 405) and message in ROUTE_MISS


@pytest.fixture(scope="module")
def keys(make_key, appliance) -> dict[str, str | None]:
    return {
        "no key": None,
        "infer, other model": make_key("infer", allowed_models=["mlp"])[0],
        "jobs": make_key("jobs")[0],
        "models:write, this model": make_key("models:write", allowed_models=[GHOST])[0],
        "admin": appliance.api_key,
    }


@pytest.fixture(scope="module")
def wide_gateway(appliance, tmp_path_factory):
    """The shipped nginx config with its per-address limits out of this test's way."""
    upstream = appliance.url.removeprefix("http://")
    with running_gateway(
        upstream,
        tmp_path_factory.mktemp("variants"),
        make_certs(tmp_path_factory.mktemp("variant-certs")),
        rate="100000r/s",
        burst="100000",
        conn="1000",
    ) as running:
        yield running


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_variant_gets_the_canonical_answer_or_is_refused(
    appliance, wide_gateway, keys, method, path
):
    ctx = ssl.create_default_context(cafile=wide_gateway.ca)
    ways = {"api": (appliance.url, None), "nginx": (wide_gateway.url, ctx)}
    jobs = []
    for kind in KINDS:
        for way, (base, context) in ways.items():
            jobs.append((kind, way, path, base, context))
            jobs += [(kind, way, v, base, context) for v in variants(path)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda j: request(j[3], method, j[2], keys[j[0]], j[4]), jobs))
    canonical_answer = {}
    for (kind, way, sent, _, _), (status, _) in zip(jobs, answers, strict=True):
        if sent == path:
            canonical_answer[kind, way] = status
    failures = []
    for (kind, way, sent, _, _), (status, body) in zip(jobs, answers, strict=True):
        expected = canonical_answer[kind, way]
        if sent == path or status == expected:
            continue
        if not refused(status, body):
            failures.append((kind, way, sent, expected, status, body[:160]))
    for kind in KINDS:  # nginx and the API agree on the canonical path itself
        assert canonical_answer[kind, "api"] == canonical_answer[kind, "nginx"], kind
    assert not failures, failures


def test_the_canonical_paths_the_api_serves_are_canonical():
    for _, path in ROUTES:
        assert canonical(path.encode()), path
    for bad in ("/v1//keys", "/v1/%2Fkeys", "/v1/./keys", "/v1/keys/", "/v1;x/keys", "/v1\\keys"):
        assert not canonical(bad.encode()), bad


def test_every_handler_declares_its_access():
    """A handler without a declaration would need ``admin`` (fail closed); every real one
    says what it needs, so the decision is always the one its author meant."""
    app = create_app(Settings())
    missing = [
        (route.path, sorted(handler.http_methods))
        for route in app.routes
        for handler in route.route_handlers
        if handler.http_methods != {"OPTIONS"} and ACCESS not in handler.opt
    ]
    assert not missing
    options = [
        access_of(h) for r in app.routes for h in r.route_handlers if h.http_methods == {"OPTIONS"}
    ]
    assert options and all(a.open or a.scope is None for a in options)


@pytest.mark.parametrize(
    ("scopes", "method", "path"),
    [
        (("infer",), "GET", "/v1//keys"),
        (("infer",), "GET", "/v1//audit"),
        (("infer",), "GET", "/v1/%2Fkeys"),
        (("infer",), "POST", "/v2//repository/models/mlp/unload"),
        (("infer",), "POST", "/v2//models/mlp/jobs"),
        (("models:write",), "POST", "/v1//keys"),
    ],
)
def test_the_reviews_reproductions_are_refused(appliance, make_key, scopes, method, path):
    """The reproductions of the 2026-12-04 review (each reached its handler at da4a7bd)."""
    key = make_key(*scopes, allowed_models=["identity"])[0]
    status, body = request(appliance.url, method, path, key)
    assert status == 400 and "not canonical" in body, (path, status, body)
    ready = httpx.get(f"{appliance.url}/v2/models/mlp/ready", headers=appliance.headers)
    assert ready.status_code == 200


def test_changes_by_keys_without_the_scope_are_listed(appliance, make_key):
    """``inferbox keys out-of-scope`` finds what a bypass left in the audit log and the jobs
    table (written here as the handlers would have), and nothing a rightful key did."""
    _, infer_id = make_key("infer", name="bypassed")
    _, writer_id = make_key("models:write", name="one model", allowed_models=["identity"])
    job_id = str(uuid.uuid4())
    rows = [
        (infer_id, "key.create", "escalated"),
        (infer_id, "model.unload", "mlp"),
        (writer_id, "alias.set", "mlp:production"),
        (writer_id, "alias.set", "identity:production"),  # its own model: fine
    ]
    with psycopg.connect(appliance.env["INFERBOX_DATABASE_URL"], autocommit=True) as conn:
        for actor, action, target in rows:
            conn.execute(
                "INSERT INTO audit_log (actor, action, target, outcome) VALUES (%s, %s, %s, 'ok')",
                (actor, action, target),
            )
        conn.execute(
            "INSERT INTO jobs (id, model, version, state, kind, input_key, api_key_id,"
            " max_attempts, retention_s)"
            " VALUES (%s, 'out-of-scope-ghost', 1, 'cancelled', 'request', 'x', %s, 1, 60)",
            (job_id, infer_id),
        )
    done = subprocess.run(
        [INFERBOX, "keys", "out-of-scope", "--json"],
        env=appliance.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    mine = {(r["actor"], r["action"], r["target"]) for r in found}
    assert (infer_id, "key.create", "escalated") in mine
    assert (infer_id, "model.unload", "mlp") in mine
    assert (writer_id, "alias.set", "mlp:production") in mine
    assert (infer_id, "job.submit", "out-of-scope-ghost") in mine
    assert (writer_id, "alias.set", "identity:production") not in mine
    admin_id = appliance.api_key.partition(".")[0]
    assert not [r for r in found if r["actor"] == admin_id]
