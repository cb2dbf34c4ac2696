"""Fixtures that start the real thing: Redis keys under a fresh prefix, a worker and the API.

Every test run uses its own key prefix on the machine's Redis, so runs never see each other's
queues or catalogs; the processes are the same commands the appliance runs. The helpers behind
the fixtures are in ``tests/support``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from moto.server import ThreadedMotoServer

from inferbox.models.spec import ModelSpec
from inferbox.testing import onnx_models
from tests.support.appliance import Appliance, running_appliance
from tests.support.paths import ROOT
from tests.support.postgres import POSTGRES, admin
from tests.support.redis import REDIS_URL, CacheRedis


@pytest.fixture(scope="session")
def cache_redis(tmp_path_factory) -> CacheRedis:
    """The session's cache Redis (beside the machine's Redis, which carries the queues)."""
    server = CacheRedis(tmp_path_factory.mktemp("cache-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def make_database():
    """A factory of empty databases (conninfo strings), all dropped when the session ends."""
    created: list[str] = []

    def make() -> str:
        name = f"ibtest_{uuid.uuid4().hex[:12]}"
        admin(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{POSTGRES} dbname={name}"

    yield make
    for name in created:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 API on 127.0.0.1 (moto's server; it does not check signatures)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    return client


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """The demo models, a slow one, a broken file, and configured variants."""
    root = onnx_models.write_demo_repository(tmp_path_factory.mktemp("models"))
    onnx_models.slow(root / "slow" / "1" / "model.onnx")
    # Big batches of the slow model keep the worker busy for about a second.
    (root / "slow" / "inferbox.json").write_text('{"max_batch_size": 1024, "instance_count": 1}')
    # A tiny queue, to see 503 when it is full.
    onnx_models.slow(root / "slow_queue" / "1" / "model.onnx")
    (root / "slow_queue" / "inferbox.json").write_text('{"max_queue_size": 1}')
    # Batching that waits for company, to see batches form.
    onnx_models.mlp(root / "mlp_delay" / "1" / "model.onnx")
    (root / "mlp_delay" / "inferbox.json").write_text(
        '{"max_queue_delay_microseconds": 200000, "preferred_batch_size": [8]}'
    )
    # Two versions of one model: the newest ready one serves unversioned calls.
    onnx_models.mlp(root / "versions" / "1" / "model.onnx", seed=1)
    onnx_models.mlp(root / "versions" / "2" / "model.onnx", seed=2)
    onnx_models.identity_all_types(root / "strings" / "1" / "model.onnx", types=["BYTES"])
    # The mlp with the response cache.
    onnx_models.mlp(root / "cached" / "1" / "model.onnx")
    (root / "cached" / "inferbox.json").write_text('{"response_cache": true}')
    return root


@pytest.fixture(scope="session")
def appliance(
    redis_client, model_repo, tmp_path_factory, make_database, s3_endpoint, cache_redis
) -> Appliance:
    """The appliance serving ``model_repo`` from the registry, plus ``broken``: a catalog
    entry whose file is not ONNX, to see a version that fails to load on the worker (uploads
    could never get it past validation). Its response cache is ``cache_redis``."""
    broken = tmp_path_factory.mktemp("broken") / "model.onnx"
    broken.write_bytes(os.urandom(2048))
    certs = tmp_path_factory.mktemp("certs")
    subprocess.run([str(ROOT / "scripts" / "certs"), str(certs)], check=True, capture_output=True)
    with running_appliance(
        redis_client,
        tmp_path_factory,
        make_database(),
        s3_endpoint,
        model_repo,
        ready=(
            "mlp",
            "conv",
            "add_sub",
            "identity",
            "fixed",
            "slow",
            "versions",
            "strings",
            "cached",
        ),
        extra_catalog=[
            ModelSpec(name="broken", version=1, path=str(broken), sha256="0" * 64, size=2048)
        ],
        INFERBOX_TLS_CERT_FILE=str(certs / "tls.crt"),
        INFERBOX_CACHE_URL=cache_redis.url,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def http(appliance) -> httpx.Client:
    """One keep-alive HTTP client to the API (so tests also see the connection stay usable),
    sending the admin key."""
    with httpx.Client(base_url=appliance.url, timeout=30, headers=appliance.headers) as client:
        yield client


_KINDS = ("unit", "integration", "e2e", "appliance")
_BY_FOLDER = {"unit": "unit", "appliance": "appliance", "stack": "e2e"}


def pytest_collection_modifyitems(config, items):
    """Every test gets its kind from its folder unless it names one itself: ``tests/unit``
    unit, ``tests/appliance`` appliance, ``tests/stack`` e2e, the rest integration (they talk
    to real services). So ``-m unit`` selects what needs no service, without anyone
    remembering to mark a new file."""
    root = Path(__file__).parent
    for item in items:
        if any(item.get_closest_marker(kind) for kind in _KINDS):
            continue
        folder = Path(item.path).relative_to(root).parts[0]
        item.add_marker(getattr(pytest.mark, _BY_FOLDER.get(folder, "integration")))
