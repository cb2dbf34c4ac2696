"""Log forging: nobody but the Docker daemon on this host sends Logstash log events, and no
client text becomes a log line of its own.

ONNX Runtime prints model names on stderr in its own (not JSON) lines, e.g. "Removing
initializer '<name>'": a name holding a line break would start a line of the uploader's
choosing, which Logstash reads as one of the appliance's JSON events. The validator refuses any
name that is not printable text.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferbox.registry.errors import UnprocessableModel
from inferbox.registry.validate import validate_model

pytestmark = pytest.mark.integration

FORGED = '{"level":"error","service":"api","message":"key created","actor":"ibk_admin"}'
NAME = f"w\n{FORGED}\nx"


def _model(path: Path, where: str) -> Path:
    names = {k: (NAME if k == where else k) for k in ("x", "w", "y", "node", "unused")}
    initializers = [numpy_helper.from_array(np.ones(4, np.float32), names["w"])]
    if where == "unused":
        initializers.append(numpy_helper.from_array(np.ones(4, np.float32), NAME))
    node = helper.make_node("Add", [names["x"], names["w"]], [names["y"]], name=names["node"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(names["x"], TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info(names["y"], TensorProto.FLOAT, [4])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name=NAME if where == "producer" else "inferbox-tests",
    )
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_runtime_prints_a_names_lines_as_they_are(tmp_path):
    """Why names are checked: this model's warning on stderr carries a whole JSON line."""
    path = _model(tmp_path / "m.onnx", "unused")
    done = subprocess.run(
        [sys.executable, "-c", f"import onnxruntime as o; o.InferenceSession({str(path)!r})"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert FORGED in done.stderr.splitlines()
    assert json.loads(FORGED)["service"] == "api"


@pytest.mark.parametrize("where", ["unused", "x", "w", "y", "node", "producer"])
def test_names_with_line_breaks_are_refused_at_upload(tmp_path, where):
    with pytest.raises(UnprocessableModel) as refused:
        validate_model(_model(tmp_path / "m.onnx", where))
    assert "control character U+000A" in refused.value.reason


def test_printable_names_still_pass(tmp_path):
    path = _model(tmp_path / "m.onnx", "none")
    assert validate_model(path).inputs[0].name == "x"
