"""A bulk job's outputs spooled to disk make the same response as the in-memory join."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.errors import BadRequest
from inferbox.jobs.tensors import OutputJoiner, SpooledOutputs, to_raw
from inferbox.lanes.wire import TensorMeta
from inferbox.protocol.codec import RequestedOutput, encode_infer_response

pytestmark = pytest.mark.unit

NAMING = {"model_name": "m", "model_version": "3", "request_id": "bulk-1"}


def _chunks():
    """Three chunks (out of order) of a model with a float, an int and a BYTES output."""
    chunks = []
    for start, rows in ((4, 3), (0, 4), (7, 1)):
        y = np.arange(start * 2, (start + rows) * 2, dtype=np.float32).reshape(rows, 2)
        k = np.arange(start, start + rows, dtype=np.int64)
        words = np.array([f"row-{i}".encode() * (i % 3 + 1) for i in range(start, start + rows)])
        metas = [
            TensorMeta("y", "FP32", [rows, 2]),
            TensorMeta("k", "INT64", [rows]),
            TensorMeta("w", "BYTES", [rows]),
        ]
        raws = [to_raw("FP32", y), to_raw("INT64", k), to_raw("BYTES", words.astype(object))]
        chunks.append((start, metas, raws))
    return chunks


@pytest.mark.parametrize(
    "requested",
    [None, [RequestedOutput("w", True), RequestedOutput("y", True)]],
    ids=["all", "chosen"],
)
def test_spooled_response_equals_the_in_memory_one(tmp_path, requested):
    joiner, spooled = OutputJoiner(), SpooledOutputs(tmp_path / "parts")
    for start, metas, raws in _chunks():
        joiner.add(start, metas, raws)
        spooled.add(start, metas, raws)
    expected, expected_length = encode_infer_response(
        **NAMING, outputs=joiner.join(), requested=requested, binary_default=True
    )
    header_length, size = spooled.write_response(tmp_path / "result", **NAMING, requested=requested)
    assert (tmp_path / "result").read_bytes() == expected
    assert (header_length, size) == (expected_length, len(expected))


def test_an_unknown_requested_output_is_refused(tmp_path):
    spooled = SpooledOutputs(tmp_path / "parts")
    for start, metas, raws in _chunks():
        spooled.add(start, metas, raws)
    with pytest.raises(BadRequest, match="'nope' is not an output"):
        spooled.write_response(
            tmp_path / "result", **NAMING, requested=[RequestedOutput("nope", True)]
        )
