"""Batches are formed by shape and size, and every call gets exactly its own rows back."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.lanes.consumer import Call
from inferbox.lanes.wire import CallHeader, TensorMeta
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec
from inferbox.worker.batcher import SplitError, assemble, split, to_array, to_raw

pytestmark = pytest.mark.unit


def _spec(max_batch: int) -> ModelSpec:
    return ModelSpec(
        name="m",
        version=1,
        path="/dev/null",
        sha256="0",
        size=0,
        inputs=[TensorSpec("x", "FP32", [-1, -1])],
        outputs=[TensorSpec("y", "FP32", [-1, -1])],
        config=ModelConfig(max_batch_size=max_batch),
    )


def _call(token: str, array: np.ndarray, outputs=None) -> Call:
    header = CallHeader(
        channel="c",
        token=token,
        deadline=0,
        inputs=[TensorMeta("x", "FP32", list(array.shape))],
        outputs=outputs,
    )
    return Call("s", b"1-0", header, [array.astype(np.float32).tobytes()])


def test_calls_with_the_same_trailing_shape_share_a_batch():
    calls = [_call("a", np.ones((2, 3))), _call("b", np.zeros((1, 3))), _call("c", np.ones((1, 4)))]
    batches = assemble(calls, _spec(8))
    assert [[c.header.token for c in b.calls] for b in batches] == [["a", "b"], ["c"]]
    assert batches[0].feeds["x"].shape == (3, 3)
    assert batches[0].rows == [2, 1]


def test_batches_never_exceed_max_batch_size():
    calls = [_call(str(i), np.ones((3, 2))) for i in range(5)]
    batches = assemble(calls, _spec(7))
    assert [sum(b.rows) for b in batches] == [6, 6, 3]


def test_without_batching_every_call_runs_alone():
    calls = [_call("a", np.ones((2, 3))), _call("b", np.ones((2, 3)))]
    assert [len(b.calls) for b in assemble(calls, _spec(0))] == [1, 1]


def test_split_gives_each_call_its_rows_and_only_its_outputs():
    calls = [_call("a", np.ones((2, 3))), _call("b", np.ones((1, 3)), outputs=["z"])]
    batch = assemble(calls, _spec(8))[0]
    y = np.arange(9, dtype=np.float32).reshape(3, 3)
    z = np.arange(3, dtype=np.float32).reshape(3, 1)
    replies = split(batch, ["y", "z"], [y, z], {"y": "FP32", "z": "FP32"})
    (a_meta, a_raw), (b_meta, b_raw) = replies
    assert [m.name for m in a_meta] == ["y", "z"]
    np.testing.assert_array_equal(to_array(a_meta[0], a_raw[0]), y[:2])
    assert [m.name for m in b_meta] == ["z"]
    np.testing.assert_array_equal(to_array(b_meta[0], b_raw[0]), z[2:])


def test_split_refuses_outputs_that_lost_the_batch_dimension():
    batch = assemble([_call("a", np.ones((2, 3))), _call("b", np.ones((1, 3)))], _spec(8))[0]
    with pytest.raises(SplitError):
        split(batch, ["y"], [np.ones((1, 3), np.float32)], {"y": "FP32"})


def test_bytes_round_trip_as_text():
    array = np.array([["héllo", ""]], dtype=object)
    raw = to_raw(array, "BYTES")
    assert to_array(TensorMeta("s", "BYTES", [1, 2]), raw).tolist() == [["héllo", ""]]
