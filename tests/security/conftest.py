"""Fixtures of the security suite: an admin client of the shared ``appliance`` and a key maker."""

from __future__ import annotations

import pytest

from inferbox.client import InferboxClient


@pytest.fixture(scope="module")
def admin(appliance) -> InferboxClient:
    """The control-plane client, with the appliance's bootstrap admin key."""
    with InferboxClient(appliance.url, api_key=appliance.api_key, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def make_key(admin):
    """``make_key(*scopes, **options) -> (full key, id)``: a fresh key made over the API."""

    def make(*scopes: str, name: str = "test", **options) -> tuple[str, str]:
        created = admin.create_key(name, list(scopes), **options)
        return created["key"], created["id"]

    return make
