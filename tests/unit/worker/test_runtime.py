"""Execution provider choice and session loading."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.models.spec import ModelConfig, spec_from_onnx
from inferbox.testing import onnx_models
from inferbox.worker.runtime import choose_providers, load_model, probe_device

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("preferred", "available", "expected"),
    [
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CPUExecutionProvider"],
            ["CPUExecutionProvider"],
        ),
        (["TensorrtExecutionProvider"], ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            ["CPUExecutionProvider", "CUDAExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CPUExecutionProvider", "CUDAExecutionProvider"],
        ),
    ],
)
def test_providers_follow_preference_and_always_end_with_cpu(preferred, available, expected):
    assert choose_providers(preferred, available) == expected


def test_a_machine_without_a_gpu_reports_cpu():
    assert probe_device(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cpu"


def test_load_model_warms_up_and_runs(tmp_path):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    model = load_model(spec)
    assert model.providers == ["CPUExecutionProvider"]
    names, (y,) = model.run({"x": np.ones((3, 64), np.float32)})
    assert names == ["y"] and y.shape == (3, 10)


def test_an_invalid_file_fails_to_load_with_its_reason(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    spec = spec_from_onnx("bad", 1, path)
    assert spec.error and "not a valid ONNX model" in spec.error
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        load_model(spec)


@pytest.mark.parametrize(
    ("config", "device", "expected"),
    [
        (ModelConfig(max_batch_size=64), "cpu", 1),
        (ModelConfig(max_batch_size=0), "cpu", 2),
        (ModelConfig(max_batch_size=0), "cuda", 1),
        (ModelConfig(max_batch_size=64), "cuda", 1),
        (ModelConfig(max_batch_size=64, instance_count=3), "cpu", 3),
    ],
)
def test_batch_loops_per_model(config, device, expected):
    # One loop gathers a whole batch; only a model without batching needs two on a CPU.
    assert config.instances(device) == expected
