"""API keys end to end: bootstrap, CLI, tritonclient with ``headers=``, revocation within a
second on both API processes, expiry, the key's priority as the most urgent its calls may
claim, and the limits a new key gets by default."""

from __future__ import annotations

import os
import stat
import time
import uuid

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from inferbox.testing import onnx_models
from tests.support.auth import bearer
from tests.support.processes import run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def _infer(appliance, key: str, body: dict = BODY) -> httpx.Response:
    # A new connection per call, so calls spread over both gunicorn worker processes.
    return httpx.post(f"{appliance.url}/v2/models/mlp/infer", json=body, headers=bearer(key))


def test_bootstrap_is_idempotent_and_private(appliance, tmp_path):
    path = tmp_path / "admin.key"
    first = run_cli(["keys", "bootstrap", "--file", str(path)], appliance.env)
    assert "created admin key" in first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = path.read_text().strip()
    again = run_cli(["keys", "bootstrap", "--file", str(path)], appliance.env)
    assert "already" in again and path.read_text().strip() == key
    assert key.partition(".")[2] not in first + again  # the secret is never printed
    assert httpx.get(f"{appliance.url}/v1/keys", headers=bearer(key)).status_code == 200
    # Audited like any key, by the setup ("system").
    rows = httpx.get(
        f"{appliance.url}/v1/audit", params={"action": "key.create"}, headers=bearer(key)
    ).json()["entries"]
    made = [r for r in rows if r["details"].get("key_id") == key.partition(".")[0]]
    assert [(r["actor"], r["outcome"]) for r in made] == [("system", "ok")]


def test_cli_create_ls_revoke(appliance):
    env = {**appliance.env, "INFERBOX_URL": appliance.url}
    out = run_cli(
        ["keys", "create", "--name", "ci", "--scope", "infer", "--model", "mlp", "--rate", "50"],
        env,
    )
    key = out.strip().splitlines()[-1]
    key_id = key.partition(".")[0]
    assert _infer(appliance, key).status_code == 200
    listing = run_cli(["keys", "ls"], env)
    assert key_id in listing and "rate=50" in listing
    assert key.partition(".")[2] not in listing
    run_cli(["keys", "revoke", key_id], env)
    time.sleep(1.0)
    assert _infer(appliance, key).status_code == 401


def test_tritonclient_sends_the_key_in_headers(appliance, make_key):
    key, _ = make_key("infer")
    x = np.full((2, 64), 0.25, np.float32)
    with triton.InferenceServerClient(appliance.url.removeprefix("http://")) as client:
        for binary in (False, True):
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            out = triton.InferRequestedOutput("y", binary_data=binary)
            result = client.infer("mlp", [tensor], outputs=[out], headers=bearer(key))
            assert result.as_numpy("y").shape == (2, 10)
        assert client.is_model_ready("mlp", headers=bearer(key))
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("mlp", [tensor])
        assert client.is_server_live()  # health needs no key


def test_a_revoked_key_stops_within_a_second_on_every_process(appliance, admin, make_key):
    key, key_id = make_key("infer")
    # Warm both API processes' caches with the valid key.
    assert all(_infer(appliance, key).status_code == 200 for _ in range(10))
    admin.revoke_key(key_id)
    revoked_at = time.monotonic()
    time.sleep(max(0.0, 1.0 - (time.monotonic() - revoked_at)))
    statuses = [_infer(appliance, key).status_code for _ in range(10)]
    assert statuses == [401] * 10
    assert "revoked" in _infer(appliance, key).json()["error"]


def test_an_expired_key_is_refused(appliance, make_key):
    key, _ = make_key("infer", expires_in_s=1.5)
    assert _infer(appliance, key).status_code == 200
    time.sleep(1.7)
    response = _infer(appliance, key)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]


def test_a_key_with_priority_two_uses_the_low_lane(appliance, make_key):
    key, _ = make_key("infer", priority=2)
    low = appliance.keys.stream("mlp", 1, "lo")

    def added() -> int:
        return (
            appliance.redis.xinfo_stream(low)["entries-added"] if appliance.redis.exists(low) else 0
        )

    before = added()
    assert _infer(appliance, key).status_code == 200
    assert added() == before + 1
    # The key's priority is the most urgent its calls may claim: asking for 1 stays low.
    urgent = {**BODY, "parameters": {"priority": 1}}
    assert _infer(appliance, key, urgent).status_code == 200
    assert added() == before + 2
    # A key without a priority may still ask for the low lane (a lower priority).
    polite = make_key("infer")[0]
    assert _infer(appliance, polite, {**BODY, "parameters": {"priority": 5}}).status_code == 200
    assert added() == before + 3
    assert _infer(appliance, polite, urgent).status_code == 200
    assert added() == before + 3


def test_a_new_key_is_limited_unless_asked_otherwise(admin, appliance):
    """Keys made over the API get INFERBOX_KEY_DEFAULT_RATE_PER_S/_MAX_CONCURRENCY unless their
    creator names limits, or asks for none with null."""
    settings = appliance.settings
    defaulted = admin.create_key("defaulted", ["infer"])
    assert defaulted["max_concurrency"] == settings.key_default_max_concurrency > 0
    assert defaulted["rate_per_s"] is None and settings.key_default_rate_per_s == 0
    own = admin.create_key("own", ["infer"], rate_per_s=5, max_concurrency=2)
    assert (own["rate_per_s"], own["burst"], own["max_concurrency"]) == (5, 5, 2)
    unlimited = admin.create_key("unlimited", ["infer"], unlimited=True)
    assert unlimited["rate_per_s"] is None and unlimited["max_concurrency"] is None
    # The defaulted key serves (its limits are checked in Redis on every call).
    assert _infer(appliance, defaulted["key"]).status_code == 200


def test_a_key_limited_to_some_models_lists_only_those(appliance, make_key):
    """The repository index and the model list show a restricted key its models only."""
    key = make_key("infer", allowed_models=["mlp"])[0]
    index = httpx.post(f"{appliance.url}/v2/repository/index", headers=bearer(key))
    assert index.status_code == 200
    assert {entry["name"] for entry in index.json()} == {"mlp"}
    listed = httpx.get(f"{appliance.url}/v1/models", headers=bearer(key))
    assert [model["name"] for model in listed.json()["models"]] == ["mlp"]
    everything = httpx.post(f"{appliance.url}/v2/repository/index", headers=appliance.headers)
    assert len({entry["name"] for entry in everything.json()}) > 1


def test_only_keys_that_may_change_a_model_see_who_made_it_and_where_it_runs(
    appliance, admin, make_key, tmp_path
):
    """Key ids (``created_by``) and worker ids (host and process) in version views go to
    admin keys and to ``models:write`` keys allowed the model; callers and readers get null."""
    name = f"who-{uuid.uuid4().hex[:8]}"
    admin.push(onnx_models.mlp(tmp_path / "m.onnx"), name)
    version_url = f"{appliance.url}/v1/models/{name}/versions/1"
    urls = (version_url, f"{appliance.url}/v1/models/{name}")

    def reported() -> dict | None:
        view = httpx.get(version_url, headers=appliance.headers).json()
        return view if view["workers"] else None

    shown = wait_for(reported, 60, "a worker's report of the new version")
    assert shown["created_by"] == appliance.api_key.partition(".")[0]
    workers = set(shown["workers"])

    def views(key: str, url: str) -> list[dict]:
        response = httpx.get(url, headers=bearer(key))
        assert response.status_code == 200, response.text
        return response.json().get("versions", [response.json()])

    writer = make_key("models:write", allowed_models=[name])[0]
    for url in urls:
        (view,) = views(writer, url)
        assert view["created_by"] == shown["created_by"] and set(view["workers"]) == workers
    for key in (make_key("infer")[0], make_key("infer", "jobs", allowed_models=[name])[0]):
        for url in urls:
            (view,) = views(key, url)
            assert (view["created_by"], view["workers"]) == (None, None)
            assert view["state"] == "ready"


def test_an_operators_default_rate_applies_to_keys_made_without_one():
    import msgspec

    from inferbox.api.admin import NewKey, _limits
    from inferbox.config import Settings

    settings = Settings(key_default_rate_per_s=25, key_default_max_concurrency=8)

    def limits(body: bytes):
        return _limits(msgspec.json.decode(body, type=NewKey), settings)

    assert limits(b'{"name": "a", "scopes": ["infer"]}') == (25, 8)
    assert limits(b'{"name": "a", "scopes": [], "rate_per_s": 3}') == (3, 8)
    assert limits(b'{"name": "a", "scopes": [], "rate_per_s": null, "max_concurrency": null}') == (
        None,
        None,
    )
