"""config.pbtxt read with Triton's messages: what is honoured, what is refused, what is reported."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2

from inferbox.models import triton_config
from inferbox.models.repository import list_repository, scan_repository
from inferbox.models.spec import TensorSpec
from tests.triton.repository import write_triton_repository

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_triton_repository(tmp_path_factory.mktemp("triton"))


@pytest.fixture(scope="module")
def specs(repo):
    return {(s.name, s.version): s for s in scan_repository(repo)}


def test_max_batch_size_0_keeps_dimension_0_as_the_models_own(specs):
    rows = specs[("rows", 1)]
    assert rows.error is None
    assert rows.config.max_batch_size == 0
    assert rows.inputs == [TensorSpec("x", "FP32", [-1, 16])]
    assert rows.outputs == [TensorSpec("y", "FP32", [-1, 4])]
    assert rows.config.not_honoured == []


def test_dynamic_batching_instances_parameters_and_optimization_map(specs):
    spec = specs[("batched", 2)]
    config = spec.config
    assert spec.error is None
    assert config.max_batch_size == 8
    assert spec.inputs == [TensorSpec("x", "FP32", [-1, 16])]
    assert config.preferred_batch_size == [4, 8]
    assert config.max_queue_delay_microseconds == 2000
    assert config.default_priority_level == 2
    assert config.max_queue_size == 100
    assert config.timeout_ms == 5000
    assert config.instance_count == 2
    assert config.execution_providers == ["CPUExecutionProvider"]
    assert config.intra_op_threads == 1
    assert config.graph_optimization_level == "extended"
    assert [(w.name, w.batch_size, w.count) for w in config.warmup_samples] == [
        ("zeros", 8, 2),
        ("random", 1, 1),
    ]
    assert config.warmup_samples[1].inputs[0].random


def test_every_field_not_honoured_is_named(specs):
    assert specs[("batched", 1)].config.not_honoured == [
        "dynamic_batching.priority_queue_policy[1].max_queue_size",
        "parameters[execution_mode].string_value",
    ]


def test_response_cache_is_honoured(specs):
    assert specs[("batched", 1)].config.response_cache is True
    assert specs[("rows", 1)].config.response_cache is False
    off = triton_config.serving_from_triton(
        triton_config.parse('name: "m"\nresponse_cache { enable: false }'),
        "m",
        [TensorSpec("x", "FP32", [-1, 16])],
        [TensorSpec("y", "FP32", [-1, 4])],
    )
    assert off.config["response_cache"] is False and off.not_honoured == []


def test_version_policy_decides_what_is_loaded(specs):
    assert specs[("batched", 1)].loaded and specs[("batched", 2)].loaded  # all { }
    assert not specs[("declared", 1)].loaded  # Triton's default: the latest version only
    assert specs[("declared", 2)].loaded


def test_declared_outputs_only_and_reshape(specs):
    declared = specs[("declared", 2)]
    assert [t.name for t in declared.inputs] == ["INPUT0", "INPUT1"]
    assert [t.name for t in declared.outputs] == ["OUTPUT1"]
    reshaped = specs[("reshaped", 1)]
    assert reshaped.inputs == [TensorSpec("x", "FP32", [-1, 4, 4], reshape=[16])]
    assert reshaped.outputs == [TensorSpec("y", "FP32", [-1, 2, 2], reshape=[4])]
    dynamic = specs[("dynamic", 1)]
    assert dynamic.inputs == [TensorSpec("in_FP32", "FP32", [-1, -1])]
    assert dynamic.config.max_batch_size == 4


def test_mismatches_are_refused_with_the_tensor_named(specs, repo):
    assert specs[("wrongdims", 1)].error == (
        "input 'x': config.pbtxt dims [15] do not match the ONNX graph's [16] "
        "(without the batch dimension)"
    )
    assert specs[("wrongtype", 1)].error == (
        "input 'x': config.pbtxt says TYPE_INT32, the ONNX graph has FP32"
    )
    skipped = {e.name: e.problem for e in list_repository(repo) if e.path is None}
    assert skipped == {
        "notonnx": "config.pbtxt platform 'tensorrt_plan': inferbox serves ONNX models only "
        "(onnxruntime_onnx)"
    }


def test_a_syntax_error_names_the_line():
    with pytest.raises(triton_config.TritonConfigError, match=r"invalid config.pbtxt: 2:"):
        triton_config.parse('name: "m"\nmax_batch_size: "eight"\n')


def test_a_file_without_tensors_lets_the_graph_decide_batching():
    graph = [TensorSpec("x", "FP32", [-1, 16])], [TensorSpec("y", "FP32", [-1, 4])]
    serving = triton_config.serving_from_triton(
        triton_config.parse('name: "m"'), "m", *graph, default_max_batch_size=64
    )
    assert serving.config["max_batch_size"] == 64
    assert serving.inputs == [TensorSpec("x", "FP32", [-1, 16])]


def test_json_form_is_tritons(specs):
    body = specs[("batched", 2)].config.triton_config
    assert body["name"] == "batched"
    assert body["platform"] == "onnxruntime_onnx" and body["backend"] == "onnxruntime"
    assert body["max_batch_size"] == 8
    assert body["input"][0]["data_type"] == "TYPE_FP32"
    assert body["input"][0]["dims"] == [16]  # int64 as numbers, as Triton writes them
    assert body["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert body["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 100
    assert body["version_policy"] == {"all": {}}
    back = triton_config.from_json(body)
    assert isinstance(back, model_config_pb2.ModelConfig)
    assert back.dynamic_batching.preferred_batch_size == [4, 8]
    assert specs[("rows", 1)].config.triton_config["version_policy"] == {
        "latest": {"num_versions": 1}
    }


def _serving(text: str, **graph):
    inputs = graph.get("inputs", [TensorSpec("x", "FP32", [-1, 16])])
    outputs = graph.get("outputs", [TensorSpec("y", "FP32", [-1, 4])])
    return triton_config.serving_from_triton(triton_config.parse(text), "m", inputs, outputs)


def test_values_inferbox_cannot_mean_are_reported_with_the_value():
    serving = _serving(
        """
max_batch_size: 8
dynamic_batching { default_queue_policy { timeout_action: DELAY } }
instance_group [ { name: "a", count: 1, kind: KIND_MODEL }, { count: 1, kind: KIND_GPU, gpus: [0] } ]
optimization {
  graph { level: 5 }
  execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt",
      parameters { key: "precision_mode" value: "FP16" } }, { name: "magic" } ] }
}
model_transaction_policy { decoupled: true }
"""
    )
    assert serving.not_honoured == [
        "dynamic_batching.default_queue_policy.timeout_action: DELAY",
        "instance_group: groups of several kinds (one kind per model)",
        "instance_group[1].gpus",
        "instance_group[a].kind: KIND_MODEL",
        "model_transaction_policy.decoupled",
        "optimization.execution_accelerators.gpu: magic",
        "optimization.execution_accelerators.gpu_execution_accelerator[tensorrt].parameters"
        "[precision_mode]",
        "optimization.graph.level: 5",
    ]
    assert serving.config["instance_count"] == 2
    assert serving.config["execution_providers"][0] == "TensorrtExecutionProvider"


def test_dims_more_specific_than_the_graph_narrow_it_and_fixed_dims_cannot_be_dynamic():
    narrowed = _serving(
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 3, 16 ] } ]',
        inputs=[TensorSpec("x", "FP32", [-1, -1])],
    )
    assert narrowed.inputs == [TensorSpec("x", "FP32", [3, 16])]
    with pytest.raises(triton_config.TritonConfigError, match=r"dims \[-1\] do not match"):
        _serving('max_batch_size: 4 input [ { name: "x", dims: [ -1 ] } ]')
    with pytest.raises(triton_config.TritonConfigError, match="needs a dynamic dimension 0"):
        _serving("max_batch_size: 4", inputs=[TensorSpec("x", "FP32", [1, 16])])
    with pytest.raises(triton_config.TritonConfigError, match="'nope' is not an input"):
        _serving('input [ { name: "nope", dims: [ 16 ] } ]')


def test_cuda_graphs_in_the_optimization_section_are_honoured():
    graph = [TensorSpec("x", "FP32", [-1, 16])], [TensorSpec("y", "FP32", [-1, 4])]
    proto = triton_config.parse(
        'name: "m"\nmax_batch_size: 8\noptimization { cuda { graphs: true } }'
    )
    serving = triton_config.serving_from_triton(proto, "m", *graph, default_max_batch_size=64)
    assert serving.config["cuda_graphs"] is True
    assert serving.not_honoured == []
