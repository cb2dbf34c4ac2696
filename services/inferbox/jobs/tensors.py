"""Tensors of a job as numpy arrays: cut into chunks along the batch dimension, and the chunks'
outputs joined back into one tensor per output (in memory, or on disk for bulk jobs)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from inferbox.errors import BadRequest, InferboxError
from inferbox.lanes.wire import TensorMeta
from inferbox.protocol.codec import OutputTensor, RequestedOutput, encode_binary_header
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


class SpooledOutputs:
    """A bulk job's chunk outputs, each written to a file under ``folder`` as it arrives, then
    laid out as one binary V2 response file: the result never sits in memory whole."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._metas: dict[int, list[TensorMeta]] = {}

    def add(self, start: int, metas: list[TensorMeta], raws: list) -> None:
        """The outputs of the chunk that began at row ``start``."""
        for index, raw in enumerate(raws):
            self._part(index, start).write_bytes(raw)
        self._metas[start] = list(metas)

    def _part(self, index: int, start: int) -> Path:
        return self.folder / f"{index}.{start:015d}"

    def write_response(
        self,
        path: Path,
        *,
        model_name: str,
        model_version: str,
        request_id: str | None,
        requested: list[RequestedOutput] | None,
    ) -> tuple[int, int]:
        """Write the response (header, then every chosen output's bytes, binary) to ``path``;
        returns (header length, total size)."""
        starts = sorted(self._metas)
        first = self._metas[starts[0]]
        index_of = {meta.name: index for index, meta in enumerate(first)}
        if requested is None:
            chosen = list(range(len(first)))
        else:
            unknown = [r.name for r in requested if r.name not in index_of]
            if unknown:
                raise BadRequest(f"requested output {unknown[0]!r} is not an output of the model")
            chosen = [index_of[r.name] for r in requested]
        outputs = []
        for index in chosen:
            meta = first[index]
            rows = sum(self._metas[start][index].shape[0] for start in starts)
            shape = (rows, *meta.shape[1:])
            size = sum(self._part(index, start).stat().st_size for start in starts)
            if meta.datatype != "BYTES":
                expected = math.prod(shape) * V2_TO_NUMPY[meta.datatype].itemsize
                if size != expected:  # a chunk answered with another row shape: a server bug
                    raise InferboxError(f"output {meta.name!r}: {size} bytes for shape {shape}")
            outputs.append((meta.name, meta.datatype, shape, size))
        header = encode_binary_header(
            model_name=model_name,
            model_version=model_version,
            request_id=request_id,
            outputs=outputs,
        )
        with path.open("wb") as out:
            out.write(header)
            for index in chosen:
                for start in starts:
                    with self._part(index, start).open("rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
        return len(header), path.stat().st_size
