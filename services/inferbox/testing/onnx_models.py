"""Small, real ONNX models built with ``onnx.helper``.

The test suite, ``scripts/bench`` and the local stack's demo repository use these instead of
downloading anything: each builder writes a valid model file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="inferbox-tests",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp(path: Path, inputs: int = 64, hidden: int = 128, outputs: int = 10, seed: int = 0) -> Path:
    """A two-layer perceptron ``x[N, inputs] -> y[N, outputs]`` (FP32, dynamic batch)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, outputs)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (rng.standard_normal(outputs) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    return _save(graph, path)


def conv_net(
    path: Path, channels: int = 32, size: int = 64, classes: int = 10, seed: int = 0
) -> Path:
    """A small compute-heavy conv net ``image[N, 3, size, size] -> logits[N, classes]`` (FP32)."""
    rng = np.random.default_rng(seed)

    def conv_weights(out_c: int, in_c: int) -> np.ndarray:
        return (rng.standard_normal((out_c, in_c, 3, 3)) / np.sqrt(in_c * 9)).astype(np.float32)

    inits = [
        numpy_helper.from_array(conv_weights(channels, 3), "c1"),
        numpy_helper.from_array(conv_weights(channels * 2, channels), "c2"),
        numpy_helper.from_array(conv_weights(channels * 2, channels * 2), "c3"),
        numpy_helper.from_array(
            (rng.standard_normal((channels * 2, classes)) / np.sqrt(channels * 2)).astype(
                np.float32
            ),
            "fc",
        ),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fcb"),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["image", "c1"], ["a1"], pads=pads),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2"], ["a2"], pads=pads, strides=[2, 2]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Conv", ["r2", "c3"], ["a3"], pads=pads),
        helper.make_node("Relu", ["a3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _save(graph, path)


# Every V2 datatype inferbox serves, with the ONNX element type that carries it.
IDENTITY_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_all_types(path: Path, types: list[str] | None = None) -> Path:
    """One ``Identity`` per datatype: input ``in_<TYPE>[N, -1]`` echoes to ``out_<TYPE>``."""
    nodes, inputs, outputs = [], [], []
    for name, elem in IDENTITY_TYPES.items():
        if types is not None and name not in types:
            continue
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", "n"]))
    return _save(helper.make_graph(nodes, "identity_all_types", inputs, outputs), path)


def add_sub(path: Path, size: int = 4) -> Path:
    """Triton's classic example: ``INPUT0, INPUT1[N, size] -> OUTPUT0 = a+b, OUTPUT1 = a-b``."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", size]),
            helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, ["batch", size]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", size]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", size]),
        ],
    )
    return _save(graph, path)


def fixed_shape(path: Path) -> Path:
    """A model without a batch dimension: ``x[2, 3] -> y = x * 2`` (batching off)."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[two],
    )
    return _save(graph, path)


def slow(path: Path, size: int = 1024, repeats: int = 100) -> Path:
    """A deliberately slow model (repeated matmuls) for deadline and cancellation tests."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def write_demo_repository(root: Path) -> Path:
    """Write a Triton-layout repository (``<root>/<name>/1/model.onnx``) of the demo models."""
    mlp(root / "mlp" / "1" / "model.onnx")
    conv_net(root / "conv" / "1" / "model.onnx")
    add_sub(root / "add_sub" / "1" / "model.onnx")
    identity_all_types(root / "identity" / "1" / "model.onnx")
    fixed_shape(root / "fixed" / "1" / "model.onnx")
    return root
