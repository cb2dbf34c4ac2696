"""The key format and the authorization rules, without services."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest

from inferbox.cli_remote import parse_duration
from inferbox.security.auth import Need, permits, remote_address, requirement
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


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2", None),
        ("GET", "/docs/openapi.json", None),
        ("GET", "/metrics", None),
        ("POST", "/v2/models/mlp/infer", Need("infer", "mlp")),
        ("GET", "/v2/models/mlp/versions/2/ready", Need("infer", "mlp")),
        ("POST", "/v2/repository/index", Need("infer")),
        ("POST", "/v2/repository/models/mlp/unload", Need("models:write", "mlp")),
        ("GET", "/v1/models", Need(None)),
        ("GET", "/v1/models/mlp", Need(None, "mlp")),
        ("POST", "/v1/models/mlp/versions", Need("models:write", "mlp")),
        ("DELETE", "/v1/keys/ibk_AbCdEfGh", Need("admin")),
        ("GET", "/v1/audit", Need("admin")),
        ("POST", "/v1/jobs", Need("jobs")),
        ("GET", "/elsewhere", Need(None)),
    ],
)
def test_requirement(method, path, need):
    assert requirement(method, path) == need


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


def test_remote_address_trusts_x_real_ip_only_from_a_private_peer():
    headers = {b"x-real-ip": b"203.0.113.9"}
    assert remote_address({"client": ("127.0.0.1", 1)}, headers) == "203.0.113.9"
    assert remote_address({"client": ("8.8.8.8", 1)}, headers) == "8.8.8.8"
    assert remote_address({"client": ("127.0.0.1", 1)}, {b"x-real-ip": b"junk"}) == "127.0.0.1"
    assert remote_address({}, headers) is None


def test_durations():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90") == 90
    with pytest.raises(click.BadParameter):
        parse_duration("soon")
