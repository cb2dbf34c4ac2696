"""Tensors of a job as numpy arrays: cut into chunks along the batch dimension, and the chunks'
outputs joined back into one tensor per output."""

from __future__ import annotations

import math

import numpy as np

from inferbox.lanes.wire import TensorMeta
from inferbox.protocol.codec import OutputTensor
from inferbox.protocol.datatypes import (
    V2_TO_NUMPY,
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)


def to_array(datatype: str, shape: list[int] | tuple[int, ...], raw: bytes) -> np.ndarray:
    """The array a raw V2 tensor holds (an object array of ``bytes`` for BYTES)."""
    if datatype == "BYTES":
        count = math.prod(shape)
        array = np.empty(count, dtype=object)
        array[:] = deserialize_bytes_tensor(raw, count)
        return array.reshape(shape)
    return np.frombuffer(raw, dtype=V2_TO_NUMPY[datatype]).reshape(shape)


def to_raw(datatype: str, array: np.ndarray) -> bytes:
    """The raw V2 bytes of an array (little-endian, C order; length-prefixed for BYTES)."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype]).tobytes()


def chunk_call(
    names: list[str], datatypes: list[str], arrays: list[np.ndarray], start: int, stop: int
) -> tuple[list[TensorMeta], list[bytes]]:
    """Rows ``start:stop`` of every input, as the metadata and raw bytes of one queued call."""
    metas, raws = [], []
    for name, datatype, array in zip(names, datatypes, arrays, strict=True):
        part = array[start:stop]
        metas.append(TensorMeta(name, datatype, list(part.shape)))
        raws.append(to_raw(datatype, part))
    return metas, raws


class OutputJoiner:
    """Collects each chunk's outputs in row order and joins them at the end."""

    def __init__(self) -> None:
        self._parts: dict[int, list[tuple[TensorMeta, bytes]]] = {}

    def add(self, start: int, metas: list[TensorMeta], raws: list) -> None:
        """The outputs of the chunk that began at row ``start``."""
        self._parts[start] = [(meta, bytes(raw)) for meta, raw in zip(metas, raws, strict=True)]

    def join(self) -> list[OutputTensor]:
        """One tensor per output, the chunks concatenated along dimension 0."""
        chunks = [self._parts[start] for start in sorted(self._parts)]
        if len(chunks) == 1:
            return [OutputTensor(m.name, m.datatype, tuple(m.shape), raw) for m, raw in chunks[0]]
        joined = []
        for index, (first, _) in enumerate(chunks[0]):
            arrays = [
                to_array(c[index][0].datatype, c[index][0].shape, c[index][1]) for c in chunks
            ]
            array = np.concatenate(arrays, axis=0)
            joined.append(
                OutputTensor(
                    first.name, first.datatype, tuple(array.shape), to_raw(first.datatype, array)
                )
            )
        return joined
