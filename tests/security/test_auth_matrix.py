"""Every route, enumerated from the app itself, called with no key, a bad key, a key without
the scope, a key without the model, and the right key.

``EXPECTED`` is the specification: a route the app has and the table lacks (or the other way
round) fails the suite, so no new route escapes the matrix.
"""

from __future__ import annotations

import re

import httpx
import pytest

from inferbox.api.app import create_app
from inferbox.config import Settings
from tests.support.auth import bearer

pytestmark = pytest.mark.integration

OPEN = "open"
ANY = "any valid key"
EXPECTED = {
    ("GET", "/v2"): OPEN,
    ("GET", "/v2/health/live"): OPEN,
    ("GET", "/v2/health/ready"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/v2/models/{name}"): "infer",
    ("GET", "/v2/models/{name}/versions/{version}"): "infer",
    ("GET", "/v2/models/{name}/ready"): "infer",
    ("GET", "/v2/models/{name}/versions/{version}/ready"): "infer",
    ("GET", "/v2/models/{name}/config"): "infer",
    ("GET", "/v2/models/{name}/versions/{version}/config"): "infer",
    ("POST", "/v2/models/{name}/infer"): "infer",
    ("POST", "/v2/models/{name}/versions/{version}/infer"): "infer",
    ("POST", "/v2/repository/index"): "infer",
    ("GET", "/v2/models/stats"): "infer",
    ("GET", "/v2/models/{name}/stats"): "infer",
    ("GET", "/v2/models/{name}/versions/{version}/stats"): "infer",
    ("POST", "/v2/repository/models/{name}/load"): "models:write",
    ("POST", "/v2/repository/models/{name}/unload"): "models:write",
    ("GET", "/v1/models"): ANY,
    ("GET", "/v1/models/{name}"): ANY,
    ("POST", "/v1/models/{name}/versions"): "models:write",
    ("GET", "/v1/models/{name}/versions/{version}"): ANY,
    ("GET", "/v1/models/{name}/versions/{version}/capacity"): ANY,
    ("PATCH", "/v1/models/{name}/versions/{version}/config"): "models:write",
    ("DELETE", "/v1/models/{name}/versions/{version}"): "models:write",
    ("PUT", "/v1/models/{name}/aliases/{alias}"): "models:write",
    ("DELETE", "/v1/models/{name}/aliases/{alias}"): "models:write",
    ("PUT", "/v1/models/{name}/traffic"): "models:write",
    ("POST", "/v1/keys"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("GET", "/v1/audit"): "admin",
    ("POST", "/v2/models/{name}/jobs"): "jobs",
    ("POST", "/v2/models/{name}/versions/{version}/jobs"): "jobs",
    ("GET", "/v1/jobs"): "jobs",
    ("GET", "/v1/jobs/{job_id}"): "jobs",
    ("GET", "/v1/jobs/{job_id}/result"): "jobs",
    ("DELETE", "/v1/jobs/{job_id}"): "jobs",
    ("POST", "/v1/jobs/inputs"): "jobs",
    ("GET", "/v1/jobs/inputs/{input_id}"): "jobs",
}
GHOST = "matrix-ghost"
"""A model that does not exist: write routes answer 404 with the right key and harm nothing."""
VALUES = {
    "name": GHOST,
    "version": "1",
    "alias": "production",
    "key_id": "ibk_NoSuchK1",
    "job_id": "00000000-0000-4000-8000-000000000000",
    "input_id": "in_000000000000000000000000",
}
# A key of each kind lacking the scope the route needs.
LACKING = {
    "infer": ("jobs",),
    "jobs": ("infer",),
    "models:write": ("infer",),
    "admin": ("infer", "models:write"),
}
HAVING = {
    "infer": ("infer",),
    "jobs": ("jobs",),
    "models:write": ("models:write",),
    ANY: ("jobs",),
}


def routes() -> list[tuple[str, str]]:
    """(method, template) of every Litestar route and of the fast path's own routes."""
    app = create_app(Settings())
    found = {
        ("POST", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"),
        ("GET", "/metrics"),
    }
    for route in app.routes:
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if template == "/docs" or template.startswith("/docs/"):
            continue  # the OpenAPI description: open, checked below
        for method in getattr(route, "methods", ()):
            if method not in ("HEAD", "OPTIONS"):
                found.add((method, template))
    return sorted(found)


ROUTES = routes()


def test_every_route_is_in_the_matrix():
    assert set(ROUTES) == set(EXPECTED)


def _call(appliance, method: str, template: str, headers: dict[str, str]) -> httpx.Response:
    path = template.format(**VALUES)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(method, appliance.url + path, json=body, headers=headers, timeout=30)


def _refused(response: httpx.Response, status: int, path: str) -> None:
    assert response.status_code == status, (path, response.status_code, response.text)
    if path.startswith("/v1"):
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    else:
        assert set(response.json()) == {"error"}
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.fixture(scope="module")
def matrix_keys(make_key) -> dict[str, str]:
    keys = {f"lacks {need}": make_key(*scopes)[0] for need, scopes in LACKING.items()}
    keys.update({f"has {need}": make_key(*scopes)[0] for need, scopes in HAVING.items()})
    keys["other model"] = make_key("infer", "jobs", "models:write", allowed_models=["mlp"])[0]
    keys["right model"] = make_key("infer", "jobs", "models:write", allowed_models=[GHOST])[0]
    return keys


@pytest.mark.parametrize(("method", "template"), ROUTES)
def test_no_key_and_a_bad_key(appliance, method, template):
    need = EXPECTED[(method, template)]
    bad = "ibk_AbCdEfGh." + "x" * 43
    for headers in ({}, bearer(bad), {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = _call(appliance, method, template, headers)
        if need == OPEN:
            assert response.status_code not in (401, 403), response.text
        else:
            _refused(response, 401, template)


@pytest.mark.parametrize(("method", "template"), ROUTES)
def test_scope_and_model(appliance, matrix_keys, method, template):
    need = EXPECTED[(method, template)]
    if need == OPEN:
        return
    if need in LACKING:
        _refused(
            _call(appliance, method, template, bearer(matrix_keys[f"lacks {need}"])), 403, template
        )
    if "{name}" in template and need != "admin":
        _refused(
            _call(appliance, method, template, bearer(matrix_keys["other model"])), 403, template
        )
        right = matrix_keys["right model"]
        assert _call(appliance, method, template, bearer(right)).status_code not in (401, 403)
    key = appliance.api_key if need == "admin" else matrix_keys[f"has {need}"]
    response = _call(appliance, method, template, bearer(key))
    assert response.status_code not in (401, 403, 429), (template, response.text)
    assert response.status_code < 500, (template, response.text)


def test_docs_are_open(appliance):
    assert httpx.get(f"{appliance.url}/docs/openapi.json").status_code == 200


def test_docs_describe_the_protocol_and_nothing_the_appliance_holds(appliance):
    """Why ``/docs`` may stay open (docs/security.md): the description is the same for every
    inferbox, built from the routes' templates and schemas; no model, key, worker or address of
    this one is in it."""
    response = httpx.get(f"{appliance.url}/docs/openapi.json")
    described = response.json()
    assert described["servers"] == [{"url": "/"}]
    # Its paths are the routes' templates (with parameters, never a model's name).
    paths = {path for path in described["paths"] if not path.startswith("/docs")}
    assert paths and paths <= {template for _, template in ROUTES}
    workers = {worker.decode() for worker in appliance.redis.hkeys(appliance.keys.workers)}
    assert workers
    for held in (*workers, appliance.api_key.partition(".")[0], appliance.url.split("//")[1]):
        assert held not in response.text, held
