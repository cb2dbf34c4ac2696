"""The response-cache suite's models, settings and the handle on its appliance and cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.appliance import Appliance
from tests.support.redis import CacheRedis

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
