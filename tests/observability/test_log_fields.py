"""Log lines the API and worker really write: mapped in the index template, no secrets, one id."""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest

from tests.support.paths import ROOT
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TEMPLATE = json.loads((ROOT / "logstash" / "elasticsearch" / "index-template.json").read_text())
MAPPING = TEMPLATE["template"]["mappings"]["properties"]
COMPATIBLE = {
    str: {"keyword", "text", "date", "ip"},
    int: {"long", "integer", "short", "float", "double"},
    float: {"float", "double", "scaled_float"},
    bool: {"boolean"},
}
SECRET = "sk-inferbox-test-secret-7f3a"
PAYLOAD = "tensor-payload-marker-91c2"


def _lines(appliance) -> list[dict]:
    lines = []
    for name in ("api.log", "worker.log"):
        for raw in (appliance.logs / name).read_text().splitlines():
            lines.append(json.loads(raw))  # every line is one JSON object
    return lines


@pytest.fixture(scope="module")
def late_call(appliance) -> str:
    """A call that times out in the API while the worker computes it: both log its id."""
    request_id = f"obs-{uuid.uuid4().hex}"
    x = np.ones((256, 1024), np.float32)
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [256, 1024], "data": x.ravel().tolist()}
        ],
        "parameters": {"timeout": 100_000},
    }
    headers = {"X-Request-ID": request_id, **appliance.headers}
    # A made-up key is refused (401), and neither it nor the real one may reach the logs.
    refused = httpx.get(
        f"{appliance.url}/v2/models/mlp", headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert refused.status_code == 401
    response = httpx.post(
        f"{appliance.url}/v2/models/slow/infer", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 504
    assert response.headers["x-request-id"] == request_id
    # Errors and rejections with user strings and tensors that must not reach the logs.
    bad = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 1], "data": [PAYLOAD]}]}
    assert (
        httpx.post(
            f"{appliance.url}/v2/models/strings/infer", json=bad, headers=headers
        ).status_code
        == 400
    )
    assert (
        httpx.post(f"{appliance.url}/v2/models/nope/infer", json=bad, headers=headers).status_code
        == 404
    )

    def worker_logged():
        return any(
            line.get("request_id") == request_id
            for line in _lines(appliance)
            if line["service"] == "worker"
        )

    wait_for(worker_logged, 20, "the worker to log the late call", interval=0.2)
    return request_id


def test_one_request_id_in_api_and_worker_lines(appliance, late_call):
    services = {
        line["service"] for line in _lines(appliance) if line.get("request_id") == late_call
    }
    assert services == {"api", "worker"}


def test_every_emitted_field_is_mapped_with_a_compatible_type(appliance, late_call):
    seen: dict[str, set[str]] = {}
    for line in _lines(appliance):
        for key in ("@timestamp", "level", "service", "message"):
            assert key in line, line
        for key, value in line.items():
            if value is None:
                continue
            assert key in MAPPING, f"field {key!r} (e.g. {line}) is not in the index template"
            values = value if isinstance(value, list) else [value]
            for item in values:
                assert MAPPING[key]["type"] in COMPATIBLE[type(item)], (key, item, MAPPING[key])
            seen.setdefault(key, set())
    assert {"request_id", "model", "version", "status", "duration_ms"} <= set(seen)


def test_no_secrets_or_tensor_payloads_in_logs(appliance, late_call):
    text = (appliance.logs / "api.log").read_text() + (appliance.logs / "worker.log").read_text()
    assert SECRET not in text
    assert appliance.api_key.partition(".")[2] not in text
    assert PAYLOAD not in text
    # No header dump and no key in a header's form (the 401 message names the header itself).
    assert "Bearer ibk_" not in text and '"authorization"' not in text.lower()


def test_kibana_saved_searches_use_mapped_fields_and_the_data_view():
    objects = [
        json.loads(line)
        for line in (ROOT / "logstash" / "kibana" / "saved-objects.ndjson").read_text().splitlines()
    ]
    views = {o["id"]: o for o in objects if o["type"] == "index-pattern"}
    assert [v["attributes"]["title"] for v in views.values()] == TEMPLATE["index_patterns"]
    searches = [o for o in objects if o["type"] == "search"]
    assert {o["id"] for o in searches} == {
        "inferbox-errors",
        "inferbox-slow-requests",
        "inferbox-one-request",
    }
    for search in searches:
        assert search["references"][0]["id"] in views
        for column in search["attributes"]["columns"]:
            assert column in MAPPING
    policy = json.loads((ROOT / "logstash" / "elasticsearch" / "ilm-policy.json").read_text())
    assert TEMPLATE["template"]["settings"]["index.lifecycle.name"] == "inferbox-logs"
    assert "delete" in policy["policy"]["phases"]
