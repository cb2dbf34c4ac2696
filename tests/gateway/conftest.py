"""nginx from the Debian package, run with the shipped config in front of the ``appliance``
(``tests.support.gateway``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, make_certs, running_gateway
from tests.support.processes import free_port


@pytest.fixture(scope="session")
def gateway_certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def gateway(appliance, tmp_path_factory, gateway_certs) -> Iterator[Gateway]:
    """nginx with the shipped defaults (64m bodies, 100 r/s with a burst of 200)."""
    upstream = appliance.url.removeprefix("http://")
    with running_gateway(upstream, tmp_path_factory.mktemp("gateway"), gateway_certs) as running:
        yield running


@pytest.fixture(scope="module")
def strict_gateway(appliance, tmp_path_factory, gateway_certs) -> Iterator[Gateway]:
    """nginx with small limits: 4 KiB bodies, 2 requests/s with a burst of 3."""
    upstream = appliance.url.removeprefix("http://")
    with running_gateway(
        upstream,
        tmp_path_factory.mktemp("strict"),
        gateway_certs,
        max_body_size="4k",
        rate="2r/s",
        burst="3",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def orphan_gateway(tmp_path_factory, gateway_certs) -> Iterator[Gateway]:
    """nginx whose upstream does not answer (the API is down)."""
    upstream = f"127.0.0.1:{free_port()}"
    with running_gateway(upstream, tmp_path_factory.mktemp("orphan"), gateway_certs) as running:
        yield running
