"""The key format and the authorization rules, without services."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest
from litestar.utils import normalize_path

from inferbox.api.app import create_app
from inferbox.api.infer import INFER_PATH
from inferbox.cli.parsing import parse_duration
from inferbox.config import Settings
from inferbox.security.access import access_of
from inferbox.security.auth import Need, permits, remote_address, trusted_networks
from inferbox.security.keys import (
    bearer_token,
    hash_secret,
    key_id_of,
    new_key,
    secret_matches,
    split_key,
)
from inferbox.security.keystore import KeyRecord

pytestmark = pytest.mark.unit


def test_new_keys_split_and_verify():
    key_id, secret, full = new_key()
    assert full == f"{key_id}.{secret}" and len(secret) == 43
    assert split_key(full) == (key_id, secret)
    assert secret_matches(secret, hash_secret(secret))
    assert not secret_matches(secret[:-1] + "A" if secret[-1] != "A" else "B", hash_secret(secret))
    assert new_key()[2] != full


@pytest.mark.parametrize(
    "token", ["", "ibk_short.x", "nope", "ibk_AbCdEfGh", "ibk_AbCdEfGh." + "!" * 43, "a.b.c"]
)
def test_malformed_keys_are_rejected(token):
    assert split_key(token) is None


def test_bearer_header_parsing():
    assert bearer_token(b"Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token(b"Basic abc") is None
    assert bearer_token(None) is None
    assert bearer_token(b"Bearer ") is None
    assert key_id_of("ibk_AbCdEfGh.secret") == "ibk_AbCdEfGh"
    assert key_id_of("sk-something") is None


@pytest.fixture(scope="module")
def app():
    return create_app(Settings())


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2", None),
        ("GET", "/docs/openapi.json", None),
        ("POST", "/v2/models/mlp/infer", Need("infer", "mlp")),
        ("GET", "/v2/models/mlp/versions/2/ready", Need("infer", "mlp")),
        ("POST", "/v2/repository/index", Need("infer")),
        ("POST", "/v2/repository/models/mlp/unload", Need("models:write", "mlp")),
        ("GET", "/v1/models", Need(None)),
        ("GET", "/v1/models/mlp", Need(None, "mlp")),
        ("POST", "/v1/models/mlp/versions", Need("models:write", "mlp")),
        ("DELETE", "/v1/keys/ibk_AbCdEfGh", Need("admin")),
        ("GET", "/v1/audit", Need("admin")),
        ("POST", "/v1/jobs/inputs", Need("jobs")),
        ("POST", "/v2/models/mlp/jobs", Need("jobs", "mlp")),
        ("OPTIONS", "/v1/keys", Need(None)),
        # What Litestar routes a non-canonical spelling to is decided as that route (the API
        # refuses such paths before routing anyway).
        ("GET", "//v1//keys/", Need("admin")),
        ("POST", "/v2//repository/models/mlp/unload", Need("models:write", "mlp")),
    ],
)
def test_the_need_is_the_resolved_handlers(app, method, path, need):
    _, handler, _, params, _ = app.asgi_router.handle_routing(normalize_path(path), method)
    assert access_of(handler).need(params) == need
    assert INFER_PATH.fullmatch(path) is None or need == Need("infer", "mlp")


def _key(scopes, models=None) -> KeyRecord:
    return KeyRecord(
        id="ibk_AbCdEfGh",
        secret_hash="0" * 64,
        name="t",
        scopes=scopes,
        allowed_models=models,
        created_at=datetime.now(UTC),
    )


def test_permits():
    assert permits(_key(["infer"]), Need("infer", "mlp")) is None
    assert "scope" in permits(_key(["infer"]), Need("models:write"))
    assert permits(_key(["admin"]), Need("models:write", "x")) is None
    assert "model" in permits(_key(["infer"], ["a"]), Need("infer", "b"))
    assert permits(_key(["jobs"]), Need(None)) is None


def test_remote_address_trusts_x_real_ip_only_from_a_trusted_proxy():
    headers = {b"x-real-ip": b"203.0.113.9"}
    assert remote_address({"client": ("127.0.0.1", 1)}, headers) == "203.0.113.9"
    assert remote_address({"client": ("8.8.8.8", 1)}, headers) == "8.8.8.8"
    # A private peer is not a proxy unless configured as one (at da4a7bd any private peer was).
    assert remote_address({"client": ("10.0.0.7", 1)}, headers) == "10.0.0.7"
    assert remote_address({"client": ("172.18.0.5", 1)}, headers) == "172.18.0.5"
    nginx = trusted_networks("172.18.0.0/16, ::1")
    assert remote_address({"client": ("172.18.0.5", 1)}, headers, nginx) == "203.0.113.9"
    assert remote_address({"client": ("127.0.0.1", 1)}, headers, nginx) == "127.0.0.1"
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        trusted_networks("nginx")
    assert remote_address({"client": ("127.0.0.1", 1)}, {b"x-real-ip": b"junk"}) == "127.0.0.1"
    assert remote_address({}, headers) is None


def test_durations():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90") == 90
    with pytest.raises(click.BadParameter):
        parse_duration("soon")
