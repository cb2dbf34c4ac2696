"""Triton's inference statistics (``GET /v2/models[/{m}[/versions/{v}]]/stats``, gRPC
``ModelStatistics``): the counts each worker publishes for each version it serves
(``worker.statistics``), added up across workers, in Triton's document form."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis

from inferbox.errors import NotFound
from inferbox.inference.directory import ModelDirectory
from inferbox.keys import Keys
from inferbox.models.spec import ModelSpec

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")
_decode = msgspec.json.Decoder(dict).decode


def _zero() -> dict:
    return {"count": 0, "ns": 0}


def _add(total: dict, part: dict) -> None:
    total["count"] += int(part.get("count", 0))
    total["ns"] += int(part.get("ns", 0))


def version_statistics(spec: ModelSpec, snapshots: list[dict]) -> dict:
    """One version's ``model_stats`` entry: the workers' ``snapshots`` added up (cache hits and
    misses are the response cache's, counted by the API: zero here)."""
    stats = {name: _zero() for name in _DURATIONS}
    stats |= {"cache_hit": _zero(), "cache_miss": _zero()}
    batches: dict[int, dict] = {}
    entry = {"last_inference": 0, "inference_count": 0, "execution_count": 0}
    for snapshot in snapshots:
        entry["last_inference"] = max(entry["last_inference"], snapshot.get("last_inference", 0))
        entry["inference_count"] += snapshot.get("inference_count", 0)
        entry["execution_count"] += snapshot.get("execution_count", 0)
        for name in _DURATIONS:
            _add(stats[name], snapshot.get(name, {}))
        for size, sized in snapshot.get("batches", {}).items():
            total = batches.setdefault(
                int(size), {"batch_size": int(size)} | {n: _zero() for n in _BATCH_DURATIONS}
            )
            for name in _BATCH_DURATIONS:
                _add(total[name], sized.get(name, {}))
    return {
        "name": spec.name,
        "version": str(spec.version),
        **entry,
        "inference_stats": stats,
        "batch_stats": [batches[size] for size in sorted(batches)],
        "memory_usage": [],
    }


async def model_statistics(
    redis: aioredis.Redis,
    keys: Keys,
    directory: ModelDirectory,
    name: str | None,
    version: str | None,
    shown: Callable[[str], bool],
) -> dict:
    """``{"model_stats": [...]}`` for one version, every version of one model, or (``name``
    None) every version of every model ``shown`` lets the caller see, as Triton answers."""
    if name is None:
        names = sorted(n.decode() for n in await redis.hkeys(keys.catalog))
        names = [n for n in names if shown(n)]
    else:
        names = [name]
    stats = []
    for model in names:
        try:
            if version is not None:
                specs = [await directory.resolve(model, version)]
            else:
                specs = await directory.versions(model)
        except NotFound:
            if name is not None:
                raise
            continue
        published = await redis.hgetall(keys.statistics(model))
        for spec in specs:
            prefix = f"{spec.version}/".encode()
            snapshots = [_decode(v) for f, v in published.items() if f.startswith(prefix)]
            stats.append(version_statistics(spec, snapshots))
    return {"model_stats": stats}
