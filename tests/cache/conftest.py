"""An appliance whose response cache is a ``redis-server`` this suite owns, to break at will.

The queues stay on the machine's Redis; the cache Redis (``CacheRedis``) runs beside it with
its own memory budget and ``allkeys-lru``. The models are one tiny MLP file under several names
and configs, so cached and uncached answers of the same version can be compared bit for bit.
"""

from __future__ import annotations

import json

import pytest

from inferbox.testing import onnx_models
from tests.support.appliance import running_appliance
from tests.support.cache import MAX_ENTRY_BYTES, MODELS, RETRY_S, TIMEOUT_MS, CacheStack, gather
from tests.support.redis import CacheRedis


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> CacheRedis:
    server = CacheRedis(tmp_path_factory.mktemp("cache"), maxmemory="64mb")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(redis_client, tmp_path_factory, make_database, s3_endpoint, cache) -> CacheStack:
    repo = tmp_path_factory.mktemp("cache-models")
    for name, config in MODELS.items():
        path = repo / name / "1" / "model.onnx"
        if name == "gather":
            gather(path)
        else:
            onnx_models.mlp(path, seed=5)
        (repo / name / "inferbox.json").write_text(json.dumps(config))
    with running_appliance(
        redis_client,
        tmp_path_factory,
        make_database(),
        s3_endpoint,
        repo,
        ready=tuple(MODELS),
        INFERBOX_CACHE_URL=cache.url,
        INFERBOX_CACHE_TIMEOUT_MS=str(TIMEOUT_MS),
        INFERBOX_CACHE_RETRY_S=str(RETRY_S),
        INFERBOX_CACHE_MAX_ENTRY_BYTES=str(MAX_ENTRY_BYTES),
    ) as appliance:
        yield CacheStack(appliance, cache)


@pytest.fixture
def healthy_cache(cache):
    """The cache Redis answering with its normal budget again after a test that broke it."""
    yield cache
    if cache.proc is None or cache.proc.poll() is not None:
        cache.start()
    if cache.frozen:
        cache.thaw()
    client = cache.client()
    client.config_set("maxmemory", "64mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
