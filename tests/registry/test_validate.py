"""The upload validator against good models and a corpus of hostile ones."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path

import bad_models
import pytest

from inferbox.errors import Unavailable
from inferbox.models.spec import spec_from_onnx
from inferbox.registry import validate
from inferbox.registry.errors import UnprocessableModel
from inferbox.registry.validate import ValidationLimits, validate_model
from inferbox.testing import onnx_models

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("build", "reason"), bad_models.CORPUS, ids=[build.__name__ for build, _ in bad_models.CORPUS]
)
def test_bad_model_is_rejected_with_its_reason(tmp_path: Path, build, reason: str) -> None:
    path = build(tmp_path)
    with pytest.raises(UnprocessableModel) as caught:
        validate_model(path)
    assert caught.value.status == 422
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "build",
    [
        onnx_models.mlp,
        onnx_models.conv_net,
        onnx_models.add_sub,
        onnx_models.identity_all_types,
        onnx_models.fixed_shape,
    ],
    ids=lambda b: b.__name__,
)
def test_good_model_is_accepted_with_its_tensors(tmp_path: Path, build) -> None:
    path = build(tmp_path / "model.onnx")
    result = validate_model(path)
    expected = spec_from_onnx("m", 1, path)
    assert expected.error is None
    assert result.inputs == expected.inputs
    assert result.outputs == expected.outputs
    assert result.ir_version == onnx_models.IR_VERSION
    assert result.opsets == {"": onnx_models.OPSET}


def test_mlp_tensors_have_dynamic_batch(tmp_path: Path) -> None:
    result = validate_model(onnx_models.mlp(tmp_path / "mlp.onnx", inputs=8, outputs=3))
    assert [(t.name, t.datatype, t.shape) for t in result.inputs] == [("x", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, t.shape) for t in result.outputs] == [("y", "FP32", [-1, 3])]


def test_configurable_limits(tmp_path: Path) -> None:
    path = onnx_models.mlp(tmp_path / "mlp.onnx")
    with pytest.raises(UnprocessableModel, match=r"opset 17 is outside the accepted 7\.\.13"):
        validate_model(path, ValidationLimits(max_opset=13))
    with pytest.raises(UnprocessableModel, match="dimension 64"):
        validate_model(path, ValidationLimits(max_dim=32))
    with pytest.raises(UnprocessableModel, match="larger than 100 bytes"):
        validate_model(path, ValidationLimits(max_bytes=100))


def test_model_needing_too_much_memory_is_rejected_cleanly(tmp_path: Path) -> None:
    path = bad_models.big_initializer(tmp_path, megabytes=32)
    limits = ValidationLimits(memory_bytes=200 << 20, memory_per_file_byte=0)
    with pytest.raises(UnprocessableModel, match="memory limit of 200 MiB"):
        validate_model(path, limits)
    # The same file passes with the default limits: the rejection was about memory only.
    assert validate_model(path).inputs[0].shape == [8 << 20]


def test_tiny_memory_limit_is_a_clean_rejection(tmp_path: Path) -> None:
    path = onnx_models.mlp(tmp_path / "mlp.onnx")
    limits = ValidationLimits(memory_bytes=1 << 20, memory_per_file_byte=0)
    with pytest.raises(UnprocessableModel, match="memory limit"):
        validate_model(path, limits)


def test_a_parse_that_runs_out_of_memory_counts_as_the_memory_limit(tmp_path, monkeypatch):
    # Under the address-space cap protobuf may fail its arena allocation while parsing, and says
    # so as a parse error; whether it happens there or later depends on the allocator.
    import onnx
    from google.protobuf.message import DecodeError

    from inferbox.registry import _validate_child

    def failing_parse(data):
        raise DecodeError("Error parsing message with type 'onnx.ModelProto': Arena alloc failed")

    monkeypatch.setattr(onnx.ModelProto, "FromString", failing_parse)
    path = onnx_models.mlp(tmp_path / "mlp.onnx")
    with pytest.raises(MemoryError):
        _validate_child.check(str(path), asdict(ValidationLimits()))


def test_timeout_is_a_clean_rejection(tmp_path: Path) -> None:
    path = onnx_models.mlp(tmp_path / "mlp.onnx")
    with pytest.raises(UnprocessableModel, match=r"longer than 0\.01 s"):
        validate_model(path, ValidationLimits(timeout_s=0.01))


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnprocessableModel, match="cannot read"):
        validate_model(tmp_path / "absent.onnx")


def test_the_check_runs_without_network_where_namespaces_allow(tmp_path: Path) -> None:
    checked = validate_model(onnx_models.mlp(tmp_path / "m.onnx"))
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    assert checked.network_isolated == (probe.returncode == 0)


def test_validations_are_bounded_in_number_and_a_waiting_one_gives_up(tmp_path: Path) -> None:
    path = onnx_models.mlp(tmp_path / "m.onnx")
    for _ in range(validate.MAX_CONCURRENT):
        validate._SLOTS.acquire()
    try:
        with pytest.raises(Unavailable, match="being validated"):
            validate_model(path, ValidationLimits(timeout_s=0.2))
    finally:
        for _ in range(validate.MAX_CONCURRENT):
            validate._SLOTS.release()
    assert validate_model(path).inputs
