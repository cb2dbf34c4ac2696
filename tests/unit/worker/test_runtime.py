"""Execution provider choice and session loading."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from inferbox.models.spec import ModelConfig, spec_from_onnx
from inferbox.testing import onnx_models
from inferbox.worker.runtime import (
    CudaUnavailable,
    choose_providers,
    load_model,
    probe_device,
    spinning_pays,
)

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


def test_a_worker_that_requires_cuda_refuses_the_cpu():
    # A GPU worker (INFERBOX_WORKER_REQUIRE_CUDA) whose CUDA libraries or GPU are missing.
    with pytest.raises(CudaUnavailable, match="will not serve on the CPU"):
        probe_device(["CUDAExecutionProvider", "CPUExecutionProvider"], require_cuda=True)


def test_load_model_warms_up_and_runs(tmp_path):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    model = load_model(spec)
    assert model.providers == ["CPUExecutionProvider"]
    names, (y,) = model.run({"x": np.ones((3, 64), np.float32)})
    assert names == ["y"] and y.shape == (3, 10)


def _spinning_option(model) -> str:
    """What the session was really created with."""
    return model.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning"
    )


def _with_config(spec, **changes):
    return msgspec.structs.replace(spec, config=msgspec.structs.replace(spec.config, **changes))


def test_automatic_spinning_follows_the_warm_run_time(tmp_path):
    """A model whose batch-1 run is long gets spinning threads; a tiny one's threads sleep."""
    tiny = load_model(
        _with_config(spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m")), intra_op_threads=2)
    )
    assert not tiny.spinning and _spinning_option(tiny) == "0"
    # Four times the default conv net's work per row: well above the threshold on any CPU.
    path = onnx_models.conv_net(tmp_path / "conv.onnx", channels=64, size=96)
    heavy = load_model(_with_config(spec_from_onnx("conv", 1, path), intra_op_threads=2))
    assert heavy.spinning and _spinning_option(heavy) == "1"
    _, (logits,) = heavy.run({"image": np.ones((2, 3, 96, 96), np.float32)})
    assert logits.shape == (2, 10)


@pytest.mark.parametrize(
    ("changes", "available", "expected"),
    [
        ({"intra_op_spinning": True}, None, True),
        ({"intra_op_spinning": False}, None, False),
        # Nothing to spin with one thread; nothing timed without a warmup.
        ({"intra_op_threads": 1}, None, False),
        ({"warmup": False}, None, False),
        # CUDA listed as available but the session runs on the CPU: what it really uses counts.
        ({}, ["CUDAExecutionProvider", "CPUExecutionProvider"], True),
    ],
)
# This ONNX Runtime build has no CUDA provider: it warns and creates the session on the CPU.
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_spinning_settings_and_where_it_is_never_automatic(tmp_path, changes, available, expected):
    spec = spec_from_onnx(
        "conv", 1, onnx_models.conv_net(tmp_path / "conv.onnx", channels=64, size=96)
    )
    changes = {"intra_op_threads": 2, **changes}
    model = load_model(_with_config(spec, **changes), available=available)
    assert model.providers == ["CPUExecutionProvider"]
    assert model.spinning is expected
    assert _spinning_option(model) == ("1" if expected else "0")


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


@pytest.mark.parametrize(
    ("providers", "run_s", "expected"),
    [
        (["CPUExecutionProvider"], 0.001, True),
        (["CPUExecutionProvider"], 0.0001, False),
        # A GPU session's intra-op threads serve only the operators left on the CPU.
        (["CUDAExecutionProvider", "CPUExecutionProvider"], 0.001, False),
    ],
)
def test_only_a_session_running_on_the_cpu_alone_spins(providers, run_s, expected):
    assert spinning_pays(providers, run_s) is expected
