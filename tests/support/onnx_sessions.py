"""Small ONNX Runtime sessions built in memory for the tests that need a real failing run."""

from __future__ import annotations

import onnxruntime as ort
from onnx import TensorProto, helper


def reshaping_session() -> ort.InferenceSession:
    """x [n, 3] reshaped to [2, 2] by a node named '/encoder/Reshape': only 4 elements fit."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="/encoder/Reshape")],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
