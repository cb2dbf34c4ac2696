"""A model cannot make the worker allocate without bound at load: its warm-up inputs (fixed
dimensions, Triton's warm-up samples, padded batch sizes) and the capacity sweep are bounded by
``INFERBOX_WORKER_WARMUP_MAX_BYTES``, checked before anything is allocated."""

from __future__ import annotations

import time
import tracemalloc

import msgspec
import onnx
import pytest
from onnx import TensorProto, helper

from inferbox.models.spec import TensorSpec, WarmupInput, WarmupSample, spec_from_onnx
from inferbox.testing import onnx_models
from inferbox.worker.capacity import sweep
from inferbox.worker.runtime import WarmupTooLarge, load_model

pytestmark = pytest.mark.unit

MiB = 1 << 20


def _relu(path, shape):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "big_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _refused_without_allocating(spec, bound):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(WarmupTooLarge, match="INFERBOX_WORKER_WARMUP_MAX_BYTES") as refused:
            load_model(spec, warmup_max_bytes=bound)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB
    assert time.perf_counter() - started < 1.0
    return str(refused.value)


def test_a_fixed_input_larger_than_the_bound_is_refused_before_allocating(tmp_path):
    # 2^16 x 2^16 floats: 16 GiB of zeros for one warm-up run.
    spec = spec_from_onnx("huge", 1, _relu(tmp_path / "m.onnx", [1 << 16, 1 << 16]))
    assert "warm-up needs 17179869184 bytes" in _refused_without_allocating(spec, 64 * MiB)


def test_a_warmup_sample_larger_than_the_bound_is_refused(tmp_path):
    spec = spec_from_onnx("sampled", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    sample = WarmupSample(
        name="bomb", batch_size=1 << 20, inputs=[WarmupInput("x", "FP32", [1 << 16])]
    )
    config = msgspec.structs.replace(spec.config, warmup_samples=[sample])
    spec = msgspec.structs.replace(spec, config=config)
    assert "warm-up sample 'bomb'" in _refused_without_allocating(spec, 64 * MiB)


def test_padded_batch_sizes_count_at_the_largest(tmp_path):
    # 512 KiB a row; padding warms every bucket up to 1024 rows: 512 MiB.
    spec = spec_from_onnx("padded", 1, _relu(tmp_path / "m.onnx", [-1, 1 << 17]))
    config = msgspec.structs.replace(spec.config, max_batch_size=1024, pad_batches=True)
    spec = msgspec.structs.replace(spec, config=config)
    assert "padded batch size 1024" in _refused_without_allocating(spec, 64 * MiB)


def test_a_model_within_the_bound_loads_and_warms_up(tmp_path):
    spec = spec_from_onnx("small", 1, _relu(tmp_path / "m.onnx", [256, 1024]))
    model = load_model(spec, warmup_max_bytes=1 * MiB)  # exactly 1 MiB of inputs
    assert model.output_names == ["y"]
    with pytest.raises(WarmupTooLarge):
        load_model(spec, warmup_max_bytes=1 * MiB - 1)


def test_the_capacity_sweep_stops_below_the_bound():
    seen = []
    tensors = [TensorSpec(name="x", datatype="FP32", shape=[-1, 1 << 16])]  # 256 KiB a row
    card = sweep(
        lambda feeds: seen.append(feeds["x"].shape[0]),
        tensors,
        1024,
        device="cpu",
        memory_bytes=0,
        seconds_per_size=1.0,
        max_runs=1,
        max_input_bytes=4 * MiB,  # 16 rows
    )
    assert max(point.batch_size for point in card.points) == 16
    assert max(seen) == 16
