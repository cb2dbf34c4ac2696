"""An appliance whose response cache is a ``redis-server`` this suite owns, to break at will.

The queues stay on the machine's Redis; the cache Redis (``CacheRedis``) runs beside it with
its own memory budget and ``allkeys-lru``. The models are one tiny MLP file under several names
and configs, so cached and uncached answers of the same version can be compared bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferbox.testing import onnx_models
from tests.conftest import Appliance, CacheRedis, running_appliance

TIMEOUT_MS = 50
RETRY_S = 0.5
MAX_ENTRY_BYTES = 20_000
"""400 rows of the MLP's 10-float output (16,000 bytes) are stored; 600 rows are not."""

MODELS = {
    # name: inferbox.json
    "plain": {},
    "cached": {"response_cache": True, "max_batch_size": 1024},
    "private": {"response_cache": True, "response_cache_per_key": True},
    # Waits for company, so concurrent calls run as one batch.
    "batched": {
        "response_cache": True,
        "max_queue_delay_microseconds": 300_000,
        "preferred_batch_size": [16],
    },
    "retire": {"response_cache": True},
    "repeated": {"response_cache": True, "response_cache_admit": "repeated"},
    "gather": {"response_cache": True},
}


def gather(path: Path) -> Path:
    """``idx[N] (INT64) -> y[N, 2]``: rows of a 4x2 table; an index past 3 fails in ONNX
    Runtime (a call the worker answers with an error)."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@dataclass
class CacheStack:
    appliance: Appliance
    cache: CacheRedis

    @property
    def url(self) -> str:
        return self.appliance.url

    def entries(self, model: str) -> list[bytes]:
        """Keys of the stored answers of ``model`` in the cache Redis."""
        prefix = self.appliance.keys.prefix
        return list(self.cache.client().scan_iter(f"{prefix}:rc:{model}:*", count=1000))

    def api_metric(self, name: str, **labels: str) -> float:
        """Sum of an API metric's samples matching ``labels`` (all gunicorn workers merged)."""
        text = httpx.get(f"{self.url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total


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
