"""The documents both protocols answer with the same content: server extensions, model
metadata, the Triton model configuration and the repository index (HTTP ``/v2`` and gRPC
``ModelMetadata``/``ModelConfig``/``RepositoryIndex``)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from inferbox.errors import NotFound
from inferbox.models.spec import PLATFORM, ModelSpec
from inferbox.protocol.datatypes import v2_to_triton_config_type

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]
"""Triton protocol extensions this server really implements (and nothing more)."""

_encode = msgspec.json.Encoder().encode


NOT_HONOURED = "inferbox_not_honoured"
"""The parameter (in the config, and in the model metadata) naming the config.pbtxt fields
inferbox does not apply."""


def model_metadata(spec: ModelSpec, versions: list[ModelSpec]) -> dict:
    """The V2 model metadata document of ``spec`` (``versions``: all its served versions)."""
    body = {
        "name": spec.name,
        "versions": [str(v.version) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.inputs],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.outputs
        ],
    }
    if spec.config.not_honoured:
        body["parameters"] = {NOT_HONOURED: ", ".join(spec.config.not_honoured)}
    return body


def _from_config_pbtxt(spec: ModelSpec) -> dict:
    """The imported config.pbtxt (as Triton completes it) with the serving values now in force
    (a PATCH may have changed them since) and the fields not honoured named."""
    config = spec.config
    body = msgspec.json.decode(_encode(config.triton_config))
    body["max_batch_size"] = config.max_batch_size
    if "dynamic_batching" in body:
        batching = body["dynamic_batching"]
        batching["preferred_batch_size"] = config.preferred_batch_size
        batching["max_queue_delay_microseconds"] = config.max_queue_delay_microseconds
    body["response_cache"] = {"enable": config.response_cache}
    if config.not_honoured:
        body.setdefault("parameters", {})[NOT_HONOURED] = {
            "string_value": ", ".join(config.not_honoured)
        }
    return body


def triton_config(spec: ModelSpec) -> dict:
    """The Triton model configuration ``/v2/models/{m}/config`` answers: the imported
    config.pbtxt completed with the values in force, else one made from the spec."""
    config = spec.config
    if config.triton_config:
        return _from_config_pbtxt(spec)
    batched = config.max_batch_size > 0

    def dims(shape: list[int]) -> list[int]:
        # Triton leaves the batch dimension out of dims when the model batches.
        return shape[1:] if batched else shape

    body = {
        "name": spec.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [spec.version]}},
        "max_batch_size": config.max_batch_size,
        "input": [
            {
                "name": t.name,
                "data_type": v2_to_triton_config_type(t.datatype),
                "dims": dims(t.shape),
            }
            for t in spec.inputs
        ],
        "output": [
            {
                "name": t.name,
                "data_type": v2_to_triton_config_type(t.datatype),
                "dims": dims(t.shape),
            }
            for t in spec.outputs
        ],
        "instance_group": [{"count": config.instance_count, "kind": "KIND_AUTO"}],  # 0: auto
        "parameters": {
            "execution_providers": {"string_value": ",".join(config.execution_providers)},
            "graph_optimization_level": {"string_value": config.graph_optimization_level},
        },
        "response_cache": {"enable": config.response_cache},
    }
    if batched:
        body["dynamic_batching"] = {
            "preferred_batch_size": config.preferred_batch_size,
            "max_queue_delay_microseconds": config.max_queue_delay_microseconds,
            "default_queue_policy": {"max_queue_size": config.max_queue_size},
        }
    return body


async def repository_index(state, shown: Callable[[str], bool]) -> list[dict]:
    """Every version with its state: READY, LOADING, UNLOADED or UNAVAILABLE (with reason), of
    the models ``shown`` lets the caller see."""
    entries = []
    names = (n.decode() for n in await state.redis.hkeys(state.redis_keys.catalog))
    for name in sorted(n for n in names if shown(n)):
        try:
            versions = await state.directory.versions(name)
        except NotFound:
            continue
        for spec in versions:
            available = await state.directory.availability(spec)
            if available.ready:
                status, reason = "READY", ""
            elif not spec.loaded:
                status, reason = "UNLOADED", "unloaded"
            elif available.reason == "loading":
                status, reason = "LOADING", ""
            else:
                status, reason = "UNAVAILABLE", available.reason or ""
            entries.append(
                {"name": name, "version": str(spec.version), "state": status, "reason": reason}
            )
    return entries
