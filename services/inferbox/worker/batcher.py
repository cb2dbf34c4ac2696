"""Turning queued calls into batches and batch results back into per-call replies.

Calls for the same model whose inputs agree on every dimension but the first are concatenated
along dimension 0 (up to ``max_batch_size`` rows) and run as one; each call then gets exactly
its own rows of every output back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inferbox.lanes.consumer import Call
from inferbox.lanes.wire import TensorMeta
from inferbox.models.spec import ModelSpec
from inferbox.protocol.datatypes import (
    V2_TO_NUMPY,
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)


@dataclass(slots=True)
class Batch:
    """Calls run together, with their concatenated inputs."""

    calls: list[Call]
    feeds: dict[str, np.ndarray]
    rows: list[int]


def to_array(meta: TensorMeta, raw: bytes) -> np.ndarray:
    """The numpy array a raw tensor stands for (BYTES become ``str`` objects for ONNX Runtime)."""
    if meta.datatype == "BYTES":
        items = [item.decode("utf-8") for item in deserialize_bytes_tensor(bytes(raw))]
        return np.array(items, dtype=object).reshape(meta.shape)
    return np.frombuffer(raw, dtype=V2_TO_NUMPY[meta.datatype]).reshape(meta.shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian, C-order bytes of an output array."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(
            [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in array.ravel()]
        )
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype]).tobytes()


def _signature(call: Call) -> tuple:
    return tuple((m.name, tuple(m.shape[1:])) for m in call.header.inputs)


def assemble(calls: list[Call], spec: ModelSpec) -> list[Batch]:
    """Group calls into batches; without batching every call is its own batch."""
    limit = spec.config.max_batch_size
    if limit <= 0:
        return [
            Batch(
                [c],
                {m.name: to_array(m, r) for m, r in zip(c.header.inputs, c.raws, strict=True)},
                [0],
            )
            for c in calls
        ]
    groups: dict[tuple, list[list[Call]]] = {}
    for call in calls:
        runs = groups.setdefault(_signature(call), [[]])
        rows = call.header.inputs[0].shape[0]
        if sum(c.header.inputs[0].shape[0] for c in runs[-1]) + rows > limit:
            runs.append([])
        runs[-1].append(call)
    batches = []
    for runs in groups.values():
        for run in runs:
            batches.append(_concatenate(run))
    return batches


def _concatenate(calls: list[Call]) -> Batch:
    names = [m.name for m in calls[0].header.inputs]
    per_input: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for call in calls:
        for meta, raw in zip(call.header.inputs, call.raws, strict=True):
            per_input[meta.name].append(to_array(meta, raw))
    feeds = {
        name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        for name, arrays in per_input.items()
    }
    return Batch(calls, feeds, [c.header.inputs[0].shape[0] for c in calls])


class SplitError(ValueError):
    """A batched output's first dimension does not match the batch's rows."""


def split(
    batch: Batch, names: list[str], results: list[np.ndarray], datatypes: dict[str, str]
) -> list[tuple[list[TensorMeta], list[bytes]]]:
    """Each call's own outputs (only those it asked for) as metadata and raw bytes."""
    total = sum(batch.rows)
    batched = len(batch.calls) > 1 or total > 0
    if batched:
        for name, result in zip(names, results, strict=True):
            if result.ndim == 0 or result.shape[0] != total:
                raise SplitError(f"output {name!r} has {result.shape} rows for a batch of {total}")
    replies = []
    offset = 0
    for call, rows in zip(batch.calls, batch.rows, strict=True):
        wanted = call.header.outputs
        metas, raws = [], []
        for name, result in zip(names, results, strict=True):
            if wanted is not None and name not in wanted:
                continue
            part = result[offset : offset + rows] if batched else result
            metas.append(TensorMeta(name, datatypes[name], list(part.shape)))
            raws.append(to_raw(part, datatypes[name]))
        if wanted is not None:
            order = {n: i for i, n in enumerate(wanted)}
            pairs = sorted(zip(metas, raws, strict=True), key=lambda p: order[p[0].name])
            metas, raws = [p[0] for p in pairs], [p[1] for p in pairs]
        replies.append((metas, raws))
        offset += rows
    return replies


def batch_buckets(max_batch_size: int) -> list[int]:
    """The batch sizes a padded batch takes: powers of two, and ``max_batch_size`` itself."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size] if max_batch_size > 0 else []


def padded(feeds: dict[str, np.ndarray], rows: int, buckets: list[int]) -> dict[str, np.ndarray]:
    """``feeds`` with zero rows added up to the smallest bucket that holds ``rows`` (unchanged
    when none does, or when ``rows`` is a bucket already)."""
    target = next((b for b in buckets if b >= rows), rows)
    if target == rows:
        return feeds
    return {
        name: np.concatenate([array, np.zeros((target - rows, *array.shape[1:]), array.dtype)])
        for name, array in feeds.items()
    }
