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


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, gain: float = 1.0):
    return (rng.standard_normal(shape) * gain * np.sqrt(2.0 / fan_in)).astype(np.float32)


def resnet50(
    path: Path,
    size: int = 224,
    classes: int = 1000,
    width: int = 64,
    blocks: tuple[int, ...] = (3, 4, 6, 3),
    seed: int = 0,
) -> Path:
    """A ResNet-50-shaped CNN ``image[N, 3, size, size] -> logits[N, classes]`` (FP32, random
    weights, batch norm folded into the convolutions' biases).

    With the defaults it has ResNet-50's topology and 25.6 M parameters (the GPU benchmark's CNN);
    smaller ``size``, ``width`` and ``blocks`` give the same graph shape at test size.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    count = iter(range(1_000_000))

    def conv(x: str, out_c: int, in_c: int, k: int, stride: int = 1, relu=True, gain=1.0) -> str:
        n = next(count)
        inits.append(
            numpy_helper.from_array(_he(rng, (out_c, in_c, k, k), in_c * k * k, gain), f"w{n}")
        )
        inits.append(numpy_helper.from_array(np.zeros(out_c, np.float32), f"b{n}"))
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{n}", f"b{n}"], [f"c{n}"], pads=[pad] * 4, strides=[stride] * 2
            )
        )
        if not relu:
            return f"c{n}"
        nodes.append(helper.make_node("Relu", [f"c{n}"], [f"r{n}"]))
        return f"r{n}"

    x = conv("image", width, 3, 7, stride=2)
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]
        )
    )
    x, channels = "pool", width
    for stage, repeats in enumerate(blocks):
        mid = width * 2**stage
        out = mid * 4
        for block in range(repeats):
            stride = 2 if block == 0 and stage > 0 else 1
            h = conv(x, mid, channels, 1)
            h = conv(h, mid, mid, 3, stride=stride)
            # A small last gain keeps the residual sum's scale flat through the stages.
            h = conv(h, out, mid, 1, relu=False, gain=0.2)
            shortcut = x if block else conv(x, out, channels, 1, stride=stride, relu=False)
            n = next(count)
            nodes.append(helper.make_node("Add", [h, shortcut], [f"s{n}"]))
            nodes.append(helper.make_node("Relu", [f"s{n}"], [f"y{n}"]))
            x, channels = f"y{n}", out
    fc = (rng.standard_normal((channels, classes)) / np.sqrt(channels)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fcb"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "resnet50",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _save(graph, path)


def bert_encoder(
    path: Path,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    seq: int = 128,
    vocab: int = 30522,
    seed: int = 0,
) -> Path:
    """A BERT-base-shaped transformer encoder ``input_ids[N, seq] (INT64) -> pooled[N, hidden]``
    (FP32, random weights): token and position embeddings, ``layers`` post-norm encoder layers
    (multi-head self-attention, GELU feed-forward), the first token's state as the output.

    With the defaults it has BERT-base's size (110 M parameters); smaller arguments give the
    same graph at test size.
    """
    rng = np.random.default_rng(seed)
    dh = hidden // heads
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((vocab, hidden)) * 0.02).astype(np.float32), "tok"
        ),
        numpy_helper.from_array(
            (rng.standard_normal((seq, hidden)) * 0.02).astype(np.float32), "pos"
        ),
        numpy_helper.from_array(np.array([0, 0, heads, dh], np.int64), "split"),
        numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "merge"),
        numpy_helper.from_array(np.array(1 / np.sqrt(dh), np.float32), "scale"),
        numpy_helper.from_array(np.array(np.sqrt(0.5), np.float32), "rsqrt2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.int64), "first"),
    ]
    nodes = [
        helper.make_node("Gather", ["tok", "input_ids"], ["emb"]),
        helper.make_node("Add", ["emb", "pos"], ["emb_pos"]),
    ]

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((n_in, n_out)) * 0.02).astype(np.float32), f"{name}_w"
            )
        )
        inits.append(numpy_helper.from_array(np.zeros(n_out, np.float32), f"{name}_b"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_m"]))
        nodes.append(helper.make_node("Add", [f"{name}_m", f"{name}_b"], [name]))
        return name

    def norm(x: str, name: str) -> str:
        inits.append(numpy_helper.from_array(np.ones(hidden, np.float32), f"{name}_g"))
        inits.append(numpy_helper.from_array(np.zeros(hidden, np.float32), f"{name}_beta"))
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [x, f"{name}_g", f"{name}_beta"],
                [name],
                axis=-1,
                epsilon=1e-12,
            )
        )
        return name

    x = norm("emb_pos", "emb_norm")
    for i in range(layers):
        p = f"l{i}"
        heads_of = {}
        for part in ("q", "k", "v"):
            lin = linear(x, f"{p}_{part}", hidden, hidden)
            nodes.append(helper.make_node("Reshape", [lin, "split"], [f"{lin}_4d"]))
            perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]
            nodes.append(helper.make_node("Transpose", [f"{lin}_4d"], [f"{lin}_t"], perm=perm))
            heads_of[part] = f"{lin}_t"
        nodes += [
            helper.make_node("MatMul", [heads_of["q"], heads_of["k"]], [f"{p}_qk"]),
            helper.make_node("Mul", [f"{p}_qk", "scale"], [f"{p}_scores"]),
            helper.make_node("Softmax", [f"{p}_scores"], [f"{p}_probs"], axis=-1),
            helper.make_node("MatMul", [f"{p}_probs", heads_of["v"]], [f"{p}_ctx"]),
            helper.make_node("Transpose", [f"{p}_ctx"], [f"{p}_ctx_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{p}_ctx_t", "merge"], [f"{p}_ctx_3d"]),
        ]
        attn = linear(f"{p}_ctx_3d", f"{p}_o", hidden, hidden)
        nodes.append(helper.make_node("Add", [attn, x], [f"{p}_res1"]))
        x = norm(f"{p}_res1", f"{p}_norm1")
        up = linear(x, f"{p}_up", hidden, ffn)
        # GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2))) (ONNX Runtime fuses it).
        nodes += [
            helper.make_node("Mul", [up, "rsqrt2"], [f"{p}_g1"]),
            helper.make_node("Erf", [f"{p}_g1"], [f"{p}_g2"]),
            helper.make_node("Add", [f"{p}_g2", "one"], [f"{p}_g3"]),
            helper.make_node("Mul", [up, f"{p}_g3"], [f"{p}_g4"]),
            helper.make_node("Mul", [f"{p}_g4", "half"], [f"{p}_gelu"]),
        ]
        down = linear(f"{p}_gelu", f"{p}_down", ffn, hidden)
        nodes.append(helper.make_node("Add", [down, x], [f"{p}_res2"]))
        x = norm(f"{p}_res2", f"{p}_norm2")
    nodes.append(helper.make_node("Gather", [x, "first"], ["pooled"], axis=1))
    graph = helper.make_graph(
        nodes,
        "bert_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits,
    )
    return _save(graph, path)
