"""Reading model specs from ONNX graphs and Triton-layout folders."""

from __future__ import annotations

import pytest

from inferbox.models.repository import scan_repository
from inferbox.models.spec import spec_from_onnx
from inferbox.testing import onnx_models

pytestmark = pytest.mark.unit


def test_batching_defaults_come_from_the_graph(tmp_path):
    batched = spec_from_onnx("m", 1, onnx_models.mlp(tmp_path / "a.onnx"), max_batch_size=32)
    assert batched.config.max_batch_size == 32
    assert batched.inputs[0].shape == [-1, 64]
    fixed = spec_from_onnx("f", 1, onnx_models.fixed_shape(tmp_path / "b.onnx"))
    assert fixed.config.max_batch_size == 0
    assert fixed.inputs[0].shape == [2, 3]
    assert len(batched.sha256) == 64 and batched.size > 0


def test_scan_reads_versions_config_and_skips_what_is_not_ours(tmp_path):
    onnx_models.mlp(tmp_path / "good" / "1" / "model.onnx")
    onnx_models.mlp(tmp_path / "good" / "3" / "model.onnx")
    (tmp_path / "good" / "inferbox.json").write_text('{"max_queue_delay_microseconds": 500}')
    (tmp_path / "good" / "config.pbtxt").write_text("name: 'good'")
    onnx_models.mlp(tmp_path / "Bad Name" / "1" / "model.onnx")
    onnx_models.mlp(tmp_path / "noversion" / "latest" / "model.onnx")
    onnx_models.mlp(tmp_path / "badconfig" / "1" / "model.onnx")
    (tmp_path / "badconfig" / "inferbox.json").write_text('{"max_batch_size": "lots"}')
    specs = {(s.name, s.version): s for s in scan_repository(tmp_path)}
    assert set(specs) == {("good", 1), ("good", 3), ("badconfig", 1)}
    assert specs[("good", 3)].config.max_queue_delay_microseconds == 500
    assert specs[("good", 3)].config.max_batch_size == 64
    assert "invalid inferbox.json" in specs[("badconfig", 1)].error
