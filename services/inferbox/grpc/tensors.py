"""``ModelInferRequest``/``ModelInferResponse`` to and from inferbox's decoded tensors.

Inputs arrive either as ``raw_input_contents`` (what ``tritonclient.grpc`` sends: one bytes
entry per input, little-endian, BYTES in Triton's length-prefixed form) or as typed
``contents``; both become the same ``InferRequest`` the HTTP codec produces, checked against
the same limits with the same messages. Outputs always go back as ``raw_output_contents``, as
Triton answers.
"""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2

from inferbox.errors import BadRequest
from inferbox.protocol.codec import (
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    TensorLimits,
    _check_binary_size,
    _checked_shape,
)
from inferbox.protocol.datatypes import V2_TO_NUMPY, check_datatype, serialize_bytes_tensor

# The typed ``InferTensorContents`` field of each datatype (FP16 travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _param(parameter: service_pb2.InferParameter):
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def _non_negative(params, key: str) -> int | None:
    if key not in params:
        return None
    value = _param(params[key])
    if type(value) is not int or value < 0:
        raise BadRequest(f"request: parameter {key!r} must be a non-negative integer")
    return value


def _typed_raw(tensor, datatype: str, count: int, where: str) -> bytes:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"{where}: {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise BadRequest(
            f"{where}: contents has {len(values)} elements but the shape needs {count}"
        )
    if datatype == "BYTES":
        return serialize_bytes_tensor(list(values))
    dtype = V2_TO_NUMPY[datatype]
    wide = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else None)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise BadRequest(f"{where}: invalid {datatype} data: a value is out of range")
    return wide.astype(dtype).tobytes()


def decode_request(request: service_pb2.ModelInferRequest, limits: TensorLimits) -> InferRequest:
    """The request as the HTTP codec would have decoded it; ``BadRequest`` naming the problem."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}"
        if any(key.startswith("shared_memory_") for key in tensor.parameters):
            raise BadRequest(
                f"{where}: shared memory is not supported; send the tensor data inline"
            )
        datatype = check_datatype(tensor.datatype)
        shape, count = _checked_shape(list(tensor.shape), where, limits)
        if raw:
            data = raw[index]
            _check_binary_size(datatype, shape, count, data, where)
        else:
            data = _typed_raw(tensor, datatype, count, where)
        inputs.append(InputTensor(tensor.name, datatype, shape, data))
    outputs = [RequestedOutput(o.name, True) for o in request.outputs] or None
    params = request.parameters
    return InferRequest(
        id=request.id or None,
        inputs=inputs,
        outputs=outputs,
        binary_output_default=True,
        timeout_us=_non_negative(params, "timeout"),
        priority=_non_negative(params, "priority"),
        parameters={key: _param(value) for key, value in params.items()},
    )


def encode_response(
    name: str, version: str, request_id: str, outputs: list[OutputTensor]
) -> service_pb2.ModelInferResponse:
    """Outputs as ``raw_output_contents`` (BYTES in Triton's length-prefixed form)."""
    response = service_pb2.ModelInferResponse(model_name=name, model_version=version, id=request_id)
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(bytes(tensor.raw))
    return response
