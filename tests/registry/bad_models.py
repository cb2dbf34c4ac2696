"""A corpus of hostile or broken ONNX files, built with ``onnx.helper``.

Each builder writes one file into a folder and returns its path; ``CORPUS`` pairs a builder
with a fragment the validator's rejection reason must contain.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inferbox.testing import onnx_models


def _model(
    nodes, inputs, outputs, *, initializer=(), opset: int = 17, domains=(), ir: int = 8
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(initializer))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="inferbox-tests")
    model.ir_version = ir
    return model


def _write(model: onnx.ModelProto, path: Path) -> Path:
    # Serialized by hand: onnx.save would try to resolve or write external data.
    path.write_bytes(model.SerializeToString())
    return path


def _add(n: int = 4, **kwargs) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones(n, np.float32), "w")
    return _model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        initializer=[w],
        **kwargs,
    )


def _point_outside(tensor: TensorProto, location: str) -> None:
    """Make ``tensor`` claim its bytes live in the file ``location``."""
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def _external(location: str) -> onnx.ModelProto:
    model = _add()
    _point_outside(model.graph.initializer[0], location)
    return model


def random_bytes(folder: Path) -> Path:
    path = folder / "random.onnx"
    path.write_bytes(random.Random(0).randbytes(8192))
    return path


def truncated(folder: Path) -> Path:
    full = onnx_models.mlp(folder / "full.onnx").read_bytes()
    path = folder / "truncated.onnx"
    path.write_bytes(full[: len(full) // 2])
    return path


def external_traversal(folder: Path) -> Path:
    return _write(_external("../../etc/passwd"), folder / "traversal.onnx")


def external_absolute(folder: Path) -> Path:
    return _write(_external("/etc/passwd"), folder / "absolute.onnx")


def external_link(folder: Path) -> Path:
    (folder / "weights.bin").symlink_to("/etc/passwd")
    return _write(_external("weights.bin"), folder / "link.onnx")


def external_in_constant(folder: Path) -> Path:
    value = numpy_helper.from_array(np.ones(4, np.float32), "c")
    _point_outside(value, "../secret.bin")
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], value=value),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return _write(model, folder / "constant.onnx")


def huge_dims(folder: Path) -> Path:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**40, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**40, 4])],
    )
    return _write(model, folder / "huge.onnx")


def opset_too_new(folder: Path) -> Path:
    return _write(_add(opset=99), folder / "opset99.onnx")


def opset_too_old(folder: Path) -> Path:
    return _write(_add(opset=5), folder / "opset5.onnx")


def ir_too_new(folder: Path) -> Path:
    return _write(_add(ir=99), folder / "ir99.onnx")


def custom_domain(folder: Path) -> Path:
    model = _model(
        [helper.make_node("Exfiltrate", ["x"], ["y"], domain="com.evil")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        domains=["com.evil"],
    )
    return _write(model, folder / "custom.onnx")


def empty_graph(folder: Path) -> Path:
    return _write(_model([], [], []), folder / "empty.onnx")


def dangling_input(folder: Path) -> Path:
    model = _model(
        [helper.make_node("Add", ["x", "nowhere"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return _write(model, folder / "dangling.onnx")


def shape_mismatch(folder: Path) -> Path:
    model = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
    )
    return _write(model, folder / "mismatch.onnx")


CORPUS: list[tuple[Callable[[Path], Path], str]] = [
    (random_bytes, "not an ONNX protobuf"),
    (truncated, "not an ONNX protobuf"),
    (external_traversal, "external data at '../../etc/passwd'"),
    (external_absolute, "external data at '/etc/passwd'"),
    (external_link, "external data at 'weights.bin'"),
    (external_in_constant, "external data at '../secret.bin'"),
    (huge_dims, "declares dimension 1099511627776"),
    (opset_too_new, "opset 99 is outside"),
    (opset_too_old, "opset 5 is outside"),
    (ir_too_new, "IR version 99 is outside"),
    (custom_domain, "'com.evil' is not accepted"),
    (empty_graph, "no nodes"),
    (dangling_input, "onnx.checker"),
    (shape_mismatch, "shape inference failed: [ShapeInferenceError]"),
]


def big_initializer(folder: Path, megabytes: int) -> Path:
    """A valid model whose checking needs several times ``megabytes`` of memory."""
    return _write(_add((megabytes << 20) // 4), folder / "big.onnx")
