"""A Triton model repository with real config.pbtxt files, built for the tests.

Every model is a real ONNX graph (``inferbox.testing.onnx_models``) beside the config.pbtxt a
Triton user would have written for it.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from inferbox.testing import onnx_models

CONFIGS = {
    # No server-side batching: dimension 0 is the model's own, so one call may carry any number
    # of rows (Triton serves a 65,536-row call of this model).
    "rows": """
name: "rows"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 4 ] } ]
""",
    # Dynamic batching with everything inferbox maps, and a few fields it does not.
    "batched": """
name: "batched"
backend: "onnxruntime"
max_batch_size: 8
version_policy: { all { } }
input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 100, default_timeout_microseconds: 5000000 }
  priority_queue_policy { key: 1 value: { max_queue_size: 10 } }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
optimization { graph { level: 1 } }
response_cache { enable: true }
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 2
    inputs { key: "x" value: { data_type: TYPE_FP32, dims: [ 16 ], zero_data: true } }
  },
  {
    name: "random"
    batch_size: 1
    inputs { key: "x" value: { data_type: TYPE_FP32, dims: [ 16 ], random_data: true } }
  }
]
""",
    # Dynamic dims beyond the batch: an identity of any length.
    "dynamic": """
max_batch_size: 4
input [ { name: "in_FP32", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "out_FP32", data_type: TYPE_FP32, dims: [ -1 ] } ]
""",
    # Clients send [4, 4] and get [2, 2]; the graph takes [16] and gives [4].
    "reshaped": """
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4, 4 ], reshape: { shape: [ 16 ] } } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2, 2 ], reshape: { shape: [ 4 ] } } ]
""",
    # Only the declared output is served; the latest version only (Triton's default policy).
    "declared": """
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] },
        { name: "INPUT1", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 4 ] } ]
""",
    # Dims that do not fit the graph: refused, naming the tensor and both shapes.
    "wrongdims": """
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 15 ] } ]
""",
    "wrongtype": """
max_batch_size: 8
input [ { name: "x", data_type: TYPE_INT32, dims: [ 16 ] } ]
""",
    "notonnx": """
platform: "tensorrt_plan"
max_batch_size: 8
""",
}


def write_triton_repository(root: Path) -> Path:
    """Write the repository under ``root`` and return it."""
    onnx_models.mlp(root / "rows" / "1" / "model.onnx", inputs=16, outputs=4, seed=3)
    onnx_models.mlp(root / "batched" / "1" / "model.onnx", inputs=16, outputs=4, seed=4)
    onnx_models.mlp(root / "batched" / "2" / "model.onnx", inputs=16, outputs=4, seed=5)
    onnx_models.identity_all_types(root / "dynamic" / "1" / "model.onnx", types=["FP32"])
    onnx_models.mlp(root / "reshaped" / "1" / "model.onnx", inputs=16, outputs=4, seed=6)
    for version in (1, 2):
        path = onnx_models.add_sub(root / "declared" / str(version) / "model.onnx")
        # Two different files (the same graph): the registry keeps one version per file.
        model = onnx.load(str(path))
        model.doc_string = f"version {version}"
        onnx.save(model, str(path))
    onnx_models.mlp(root / "wrongdims" / "1" / "model.onnx", inputs=16, outputs=4)
    onnx_models.mlp(root / "wrongtype" / "1" / "model.onnx", inputs=16, outputs=4)
    onnx_models.mlp(root / "notonnx" / "1" / "model.onnx", inputs=16, outputs=4)
    # No config.pbtxt: every datatype, served from the graph alone.
    onnx_models.identity_all_types(root / "alltypes" / "1" / "model.onnx")
    # Every datatype that typed gRPC contents can carry (FP16 travels raw only).
    typed = [t for t in onnx_models.IDENTITY_TYPES if t != "FP16"]
    onnx_models.identity_all_types(root / "typed" / "1" / "model.onnx", types=typed)
    for name, text in CONFIGS.items():
        (root / name / "config.pbtxt").write_text(text.lstrip())
    return root
