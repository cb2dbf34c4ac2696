"""Triton's model configuration (``config.pbtxt``) read with Triton's own message definitions.

The file is parsed with protobuf's text format into ``model_config_pb2.ModelConfig`` (shipped in
the ``tritonclient`` wheel), never by hand. ``serving_from_triton`` turns it into what inferbox
serves: the tensors clients see (names, datatypes, dims checked against the ONNX graph), the
``ModelConfig`` fields Triton's settings map to, and the names of every field set in the file
that inferbox does not apply, so nothing is dropped silently. ``to_json`` gives the config in
the JSON form Triton's ``/v2/models/{name}/config`` answers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from inferbox.models.spec import TensorSpec

CONFIG_FILE = "config.pbtxt"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"

# Fields inferbox applies, by the names ``not_honoured`` reports (``input[x].dims``); ``[*]``
# stands for any key or label.
HONOURED = (
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "default_model_filename",
    "version_policy.latest.num_versions",
    "version_policy.latest",
    "version_policy.all",
    "version_policy.specific.versions",
    "input[*].name",
    "input[*].data_type",
    "input[*].dims",
    "input[*].reshape",
    "input[*].reshape.shape",
    "output[*].name",
    "output[*].data_type",
    "output[*].dims",
    "output[*].reshape",
    "output[*].reshape.shape",
    "dynamic_batching",
    "dynamic_batching.preferred_batch_size",
    "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.priority_levels",
    "dynamic_batching.default_priority_level",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.allow_timeout_override",
    "dynamic_batching.default_queue_policy.timeout_action",  # REJECT only (DELAY reported)
    "instance_group[*].name",
    "instance_group[*].count",
    "instance_group[*].kind",
    "parameters[intra_op_thread_count].string_value",
    "optimization.graph.level",
    "optimization.cuda.graphs",
    "optimization.execution_accelerators.gpu_execution_accelerator[*].name",
    "optimization.execution_accelerators.cpu_execution_accelerator[*].name",
    "model_warmup[*].name",
    "model_warmup[*].batch_size",
    "model_warmup[*].count",
    "model_warmup[*].inputs[*].data_type",
    "model_warmup[*].inputs[*].dims",
    "model_warmup[*].inputs[*].zero_data",
    "model_warmup[*].inputs[*].random_data",
    "response_cache",
    "response_cache.enable",
)

_HONOURED = re.compile("|".join(re.escape(p).replace(r"\[\*\]", r"\[[^\]]*\]") for p in HONOURED))

# Triton's ONNX Runtime backend: optimization.graph.level -1 basic, 1 extended, 2 none, else all.
_GRAPH_LEVELS = {-1: "basic", 0: "all", 1: "extended", 2: "disable"}
_ACCELERATORS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_KIND = model_config_pb2.ModelInstanceGroup.Kind
_TIMEOUT = model_config_pb2.ModelQueuePolicy.TimeoutAction


class TritonConfigError(ValueError):
    """A config.pbtxt that cannot be read, or that does not describe its ONNX graph."""


@dataclass
class TritonServing:
    """What a config.pbtxt means for inferbox."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: dict
    """``ModelConfig`` fields (Triton's settings and the report)."""
    proto: model_config_pb2.ModelConfig
    not_honoured: list[str] = field(default_factory=list)


def parse(text: str | bytes) -> model_config_pb2.ModelConfig:
    """The ``ModelConfig`` message of a config.pbtxt; ``TritonConfigError`` naming the line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise TritonConfigError(f"{CONFIG_FILE} is not UTF-8 text") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonConfigError(f"invalid {CONFIG_FILE}: {exc}") from None


def datatype(type_name: str) -> str:
    """V2 datatype of a Triton config type name: ``TYPE_FP32`` -> ``FP32``."""
    if type_name == "TYPE_STRING":
        return "BYTES"
    return type_name.removeprefix("TYPE_")


def to_json(proto: model_config_pb2.ModelConfig) -> dict:
    """The config as Triton's HTTP API writes it: proto field names, every field with its value
    (defaults too), and 64-bit integers as JSON numbers rather than protobuf's strings."""
    data = json_format.MessageToDict(
        proto, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(proto.DESCRIPTOR, data)
    return data


def from_json(data: dict) -> model_config_pb2.ModelConfig:
    """The message back from ``to_json``'s form (for the gRPC ``ModelConfig`` call)."""
    return json_format.ParseDict(data, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)


_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def _numbers(descriptor, data: dict) -> None:
    for fd in descriptor.fields:
        if fd.name not in data:
            continue
        value = data[fd.name]
        message = fd.message_type
        if message is not None and message.GetOptions().map_entry:
            value_field = message.fields_by_name["value"]
            for key in value:
                if value_field.message_type is not None:
                    _numbers(value_field.message_type, value[key])
                elif value_field.cpp_type in _INT64:
                    value[key] = int(value[key])
        elif message is not None:
            for item in value if isinstance(value, list) else [value]:
                _numbers(message, item)
        elif fd.cpp_type in _INT64:
            data[fd.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


def _label(message: Message, index: int) -> str:
    name = getattr(message, "name", "") if "name" in message.DESCRIPTOR.fields_by_name else ""
    return name or str(index)


def set_fields(message: Message, prefix: str = "") -> list[tuple[str, object]]:
    """Every field set in ``message`` (to a value other than its default), innermost first:
    ``(name, value)`` with names like ``input[INPUT0].dims`` or ``parameters[key].string_value``;
    a sub-message set but empty (``dynamic_batching { }``) is named itself."""
    found: list[tuple[str, object]] = []
    for fd, value in message.ListFields():
        path = f"{prefix}.{fd.name}" if prefix else fd.name
        message_type = fd.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            for key in sorted(value):
                item = value[key]
                if isinstance(item, Message):
                    found += set_fields(item, f"{path}[{key}]") or [(f"{path}[{key}]", item)]
                else:
                    found.append((f"{path}[{key}]", item))
        elif message_type is not None and fd.is_repeated:
            for index, item in enumerate(value):
                label = f"{path}[{_label(item, index)}]"
                found += set_fields(item, label) or [(label, item)]
        elif message_type is not None:
            found += set_fields(value, path) or [(path, value)]
        else:
            found.append((path, value))
    return found


def not_honoured(proto: model_config_pb2.ModelConfig) -> list[str]:
    """The fields set in the file that inferbox does not apply, each by name (with the value
    where only some values are applied)."""
    report = [path for path, _value in set_fields(proto) if not _HONOURED.fullmatch(path)]
    report += _instance_groups_not_honoured(proto)
    report += _optimization_not_honoured(proto)
    queue = proto.dynamic_batching.default_queue_policy
    if queue.timeout_action == _TIMEOUT.DELAY:
        report.append("dynamic_batching.default_queue_policy.timeout_action: DELAY")
    return sorted(set(report))


def _instance_groups_not_honoured(proto: model_config_pb2.ModelConfig) -> list[str]:
    """Instance groups of a kind inferbox cannot place, and a mix of kinds in one model."""
    report = []
    for index, group in enumerate(proto.instance_group):
        if group.kind not in (_KIND.KIND_AUTO, _KIND.KIND_CPU, _KIND.KIND_GPU):
            label = group.name or str(index)
            report.append(f"instance_group[{label}].kind: {_KIND.Name(group.kind)}")
    kinds = {g.kind for g in proto.instance_group if g.kind != _KIND.KIND_AUTO}
    if len(kinds) > 1:
        report.append("instance_group: groups of several kinds (one kind per model)")
    return report


def _optimization_not_honoured(proto: model_config_pb2.ModelConfig) -> list[str]:
    """A graph optimization level or execution accelerators ONNX Runtime has no match for."""
    report = []
    level = proto.optimization.graph.level
    if level not in _GRAPH_LEVELS:
        report.append(f"optimization.graph.level: {level}")
    accelerators = proto.optimization.execution_accelerators
    for kind, items in (
        ("gpu", accelerators.gpu_execution_accelerator),
        ("cpu", accelerators.cpu_execution_accelerator),
    ):
        for item in items:
            if item.name not in _ACCELERATORS:
                report.append(f"optimization.execution_accelerators.{kind}: {item.name}")
    return report


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _tensor(
    kind: str,
    declared,
    graph: TensorSpec,
    batched: bool,
) -> TensorSpec:
    """The client's view of one tensor, after checking the declaration against the graph."""
    name = declared.name
    if declared.data_type != model_config_pb2.TYPE_INVALID:
        want = datatype(model_config_pb2.DataType.Name(declared.data_type))
        if want != graph.datatype:
            raise TritonConfigError(
                f"{kind} {name!r}: {CONFIG_FILE} says "
                f"{model_config_pb2.DataType.Name(declared.data_type)}, the ONNX graph has "
                f"{graph.datatype}"
            )
    graph_shape = list(graph.shape)
    if batched:
        if not graph_shape or graph_shape[0] != -1:
            raise TritonConfigError(
                f"{kind} {name!r}: max_batch_size > 0 needs a dynamic dimension 0 in the ONNX "
                f"graph, which has {_dims_text(graph_shape)}"
            )
        graph_shape = graph_shape[1:]
    dims = list(declared.dims) if declared.dims or declared.HasField("reshape") else graph_shape
    model_dims = list(declared.reshape.shape) if declared.HasField("reshape") else dims
    where = "reshape" if declared.HasField("reshape") else "dims"
    batch_note = " (without the batch dimension)" if batched else ""
    mismatch = TritonConfigError(
        f"{kind} {name!r}: {CONFIG_FILE} {where} {_dims_text(model_dims)} do not match the ONNX "
        f"graph's {_dims_text(graph_shape)}{batch_note}"
    )
    if len(model_dims) != len(graph_shape):
        raise mismatch
    for want, have in zip(model_dims, graph_shape, strict=True):
        if have != -1 and want != have:
            raise mismatch
    if declared.HasField("reshape"):
        if -1 not in dims and -1 not in model_dims and math.prod(dims) != math.prod(model_dims):
            raise TritonConfigError(
                f"{kind} {name!r}: dims {_dims_text(dims)} and reshape "
                f"{_dims_text(model_dims)} hold different numbers of elements"
            )
        reshape = model_dims
    else:
        dims, reshape = model_dims, None
    shape = [-1, *dims] if batched else dims
    return TensorSpec(name=name, datatype=graph.datatype, shape=shape, reshape=reshape)


def _tensors(kind: str, declared, graph: list[TensorSpec], batched: bool, *, fill: bool):
    by_name = {t.name: t for t in graph}
    seen = set()
    result = []
    for item in declared:
        if item.name not in by_name:
            raise TritonConfigError(
                f"{CONFIG_FILE} {kind} {item.name!r} is not an {kind} of the ONNX graph "
                f"(it has {sorted(by_name)})"
            )
        if item.name in seen:
            raise TritonConfigError(f"{CONFIG_FILE} declares {kind} {item.name!r} twice")
        seen.add(item.name)
    declared_by_name = {item.name: item for item in declared}
    for tensor in graph:
        item = declared_by_name.get(tensor.name)
        if item is None:
            if declared and not fill:
                continue  # Triton serves only the outputs its config declares
            item = model_config_pb2.ModelInput(name=tensor.name)
        result.append(_tensor(kind, item, tensor, batched))
    return result


def _warmup(proto, inputs: list[TensorSpec], batched: bool) -> list[dict]:
    by_name = {t.name: t for t in inputs}
    samples = []
    for index, sample in enumerate(proto.model_warmup):
        label = sample.name or str(index)
        items = []
        for name in sorted(sample.inputs):
            data = sample.inputs[name]
            tensor = by_name.get(name)
            if tensor is None:
                raise TritonConfigError(
                    f"model_warmup[{label}]: {name!r} is not an input (inputs: {sorted(by_name)})"
                )
            if data.WhichOneof("input_data_type") == "input_data_file":
                continue  # reported by name; the sample still runs with zeros for it
            dims = list(data.dims)
            if any(d < 0 for d in dims):
                raise TritonConfigError(f"model_warmup[{label}] input {name!r}: dims must be fixed")
            items.append(
                {
                    "name": name,
                    "datatype": tensor.datatype,
                    "dims": dims,
                    "random": data.WhichOneof("input_data_type") == "random_data",
                }
            )
        given = {item["name"] for item in items}
        for tensor in inputs:
            if tensor.name not in given:
                # Triton requires every input; a file-backed one runs with zeros of its shape.
                dims = tensor.shape[1:] if batched else tensor.shape
                if tensor.name in sample.inputs:
                    dims = list(sample.inputs[tensor.name].dims)
                if any(d < 0 for d in dims):
                    raise TritonConfigError(
                        f"model_warmup[{label}] has no fixed-shape data for input {tensor.name!r}"
                    )
                items.append(
                    {
                        "name": tensor.name,
                        "datatype": tensor.datatype,
                        "dims": dims,
                        "random": False,
                    }
                )
        samples.append(
            {
                "name": label,
                "inputs": items,
                "batch_size": sample.batch_size if batched else 0,
                "count": max(sample.count, 1),
            }
        )
    return samples


def check_platform(proto: model_config_pb2.ModelConfig) -> None:
    """``TritonConfigError`` unless the config is for an ONNX model (or names no platform)."""
    if proto.platform and proto.platform != ONNX_PLATFORM:
        raise TritonConfigError(
            f"{CONFIG_FILE} platform {proto.platform!r}: inferbox serves ONNX models only "
            f"({ONNX_PLATFORM})"
        )
    if proto.backend and proto.backend != ONNX_BACKEND:
        raise TritonConfigError(
            f"{CONFIG_FILE} backend {proto.backend!r}: inferbox serves ONNX models only "
            f"({ONNX_BACKEND})"
        )


def serving_from_triton(
    proto: model_config_pb2.ModelConfig,
    name: str,
    graph_inputs: list[TensorSpec],
    graph_outputs: list[TensorSpec],
    default_max_batch_size: int = 0,
) -> TritonServing:
    """What ``proto`` means for the model ``name`` whose ONNX graph has these tensors.

    ``max_batch_size: 0`` turns batching off, except in a file that declares no tensors at all,
    where Triton's auto-complete decides from the graph: ``default_max_batch_size`` (what
    inferbox would choose from the graph; 0 when it cannot batch) is taken then.

    Raises ``TritonConfigError`` naming the first mismatch (a name, datatype or dims that do not
    fit the graph, a model name other than the folder's, a platform other than ONNX).
    """
    proto = _checked_model_fields(proto, name, default_max_batch_size)
    batched = proto.max_batch_size > 0
    inputs = _tensors("input", proto.input, graph_inputs, batched, fill=True)
    outputs = _tensors("output", proto.output, graph_outputs, batched, fill=False)

    config: dict = {"max_batch_size": proto.max_batch_size}
    config.update(_batching_config(proto, batched))
    config.update(_instances_config(proto))
    config.update(_onnxruntime_config(proto))
    _add_accelerators(config, proto)
    if proto.model_warmup:
        config["warmup_samples"] = _warmup(proto, inputs, batched)
    if proto.HasField("response_cache"):
        config["response_cache"] = proto.response_cache.enable

    report = not_honoured(proto)
    complete = completed(proto, name, inputs, outputs)
    config["triton_config"] = to_json(complete)
    config["not_honoured"] = report
    return TritonServing(inputs, outputs, config, complete, report)


def _checked_model_fields(
    proto: model_config_pb2.ModelConfig, name: str, default_max_batch_size: int
) -> model_config_pb2.ModelConfig:
    """``proto`` once its platform, name and batch size are accepted; a copy with
    ``default_max_batch_size`` when the file sets neither a batch size nor any tensor."""
    check_platform(proto)
    if proto.name and proto.name != name:
        raise TritonConfigError(f"{CONFIG_FILE} names the model {proto.name!r}, not {name!r}")
    if proto.max_batch_size < 0:
        raise TritonConfigError("max_batch_size must be >= 0")
    if proto.max_batch_size == 0 and not proto.input and not proto.output:
        proto = _copy(proto)
        proto.max_batch_size = default_max_batch_size
    return proto


def _batching_config(proto: model_config_pb2.ModelConfig, batched: bool) -> dict:
    """The batcher's settings from ``dynamic_batching`` (none when batching is off)."""
    config: dict = {}
    batching = proto.dynamic_batching
    if proto.HasField("dynamic_batching"):
        config["preferred_batch_size"] = list(batching.preferred_batch_size)
        config["max_queue_delay_microseconds"] = batching.max_queue_delay_microseconds
        if batching.default_priority_level:
            config["default_priority_level"] = batching.default_priority_level
        queue = batching.default_queue_policy
        if queue.max_queue_size:
            config["max_queue_size"] = queue.max_queue_size
        if queue.default_timeout_microseconds:
            config["timeout_ms"] = max(1, math.ceil(queue.default_timeout_microseconds / 1000))
    elif batched:
        # Triton without a dynamic batcher runs each request alone: inferbox never waits to
        # fill a batch either (requests already queued still run together).
        config["max_queue_delay_microseconds"] = 0
    return config


def _instances_config(proto: model_config_pb2.ModelConfig) -> dict:
    """The instance count and, for CPU-only groups, the CPU execution provider."""
    config: dict = {}
    count = sum(g.count for g in proto.instance_group)
    if count:
        config["instance_count"] = count
    kinds = {g.kind for g in proto.instance_group}
    if kinds == {_KIND.KIND_CPU}:
        config["execution_providers"] = ["CPUExecutionProvider"]
    return config


def _onnxruntime_config(proto: model_config_pb2.ModelConfig) -> dict:
    """ONNX Runtime session settings: intra-op threads, graph optimization level, CUDA graphs."""
    config: dict = {}
    if "intra_op_thread_count" in proto.parameters:
        value = proto.parameters["intra_op_thread_count"].string_value
        if not value.strip().isdigit():
            raise TritonConfigError(f"parameters intra_op_thread_count {value!r} is not a count")
        config["intra_op_threads"] = int(value)
    level = proto.optimization.graph.level
    if level in _GRAPH_LEVELS and proto.optimization.HasField("graph"):
        config["graph_optimization_level"] = _GRAPH_LEVELS[level]
    if proto.optimization.cuda.graphs:
        config["cuda_graphs"] = True
    return config


def _add_accelerators(config: dict, proto: model_config_pb2.ModelConfig) -> None:
    """Put the providers of the known execution accelerators ahead of ``config``'s providers
    (CUDA then CPU when it names none)."""
    accelerators = proto.optimization.execution_accelerators
    extra = [
        _ACCELERATORS[item.name]
        for item in [
            *accelerators.gpu_execution_accelerator,
            *accelerators.cpu_execution_accelerator,
        ]
        if item.name in _ACCELERATORS
    ]
    if extra:
        base = config.get("execution_providers", ["CUDAExecutionProvider", "CPUExecutionProvider"])
        config["execution_providers"] = list(dict.fromkeys([*extra, *base]))


def _copy(proto: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    copy = model_config_pb2.ModelConfig()
    copy.CopyFrom(proto)
    return copy


def completed(
    proto: model_config_pb2.ModelConfig,
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> model_config_pb2.ModelConfig:
    """The config as Triton completes it: name, platform, backend, every served tensor with its
    datatype and dims, and the default version policy."""
    full = _copy(proto)
    full.name = name
    full.platform = ONNX_PLATFORM
    full.backend = ONNX_BACKEND
    if not full.HasField("version_policy"):
        full.version_policy.latest.num_versions = 1
    batched = full.max_batch_size > 0
    for tensors, declared in ((inputs, full.input), (outputs, full.output)):
        by_name = {item.name: item for item in declared}
        for tensor in tensors:
            item = by_name.get(tensor.name)
            if item is None:
                item = declared.add(name=tensor.name)
            item.data_type = model_config_pb2.DataType.Value(
                "TYPE_STRING" if tensor.datatype == "BYTES" else f"TYPE_{tensor.datatype}"
            )
            if not item.dims:
                item.dims.extend(tensor.shape[1:] if batched else tensor.shape)
    return full


def selected_versions(proto: model_config_pb2.ModelConfig | None, versions: list[int]) -> set[int]:
    """The versions Triton's ``version_policy`` serves among ``versions`` (default: the latest)."""
    ordered = sorted(versions)
    if proto is None:
        return set(ordered)
    policy = proto.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return set(ordered)
    if which == "specific":
        return set(policy.specific.versions) & set(ordered)
    keep = policy.latest.num_versions if which == "latest" else 1
    return set(ordered[-max(keep, 1) :])
