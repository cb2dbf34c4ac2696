"""The Open Inference Protocol's gRPC binding as bytes: messages, framing, status codes.

``ModelInferRequest``/``ModelInferResponse`` to and from inferbox's decoded tensors. Inputs arrive either as ``raw_input_contents`` (what ``tritonclient.grpc`` sends: one bytes
entry per input, little-endian, BYTES in Triton's length-prefixed form) or as typed
``contents``; both become the same ``InferRequest`` the HTTP codec produces, checked against
the same limits with the same messages. Outputs always go back as ``raw_output_contents``, as
Triton answers.

Two servers speak it: ``inferbox grpc`` (grpcio, every RPC) and the API's ``ModelInfer`` relay
(``inferbox.api.grpc_infer``: nginx passes the RPC as HTTP/1.1 and turns the API's
``X-Grpc-Status``/``X-Grpc-Message`` headers into the trailers gRPC ends a call with). The
framing, the ``grpc-timeout`` header and the status codes they both need are here.
"""

from __future__ import annotations

import struct
import urllib.parse

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


# --- the wire: gRPC's length-prefixed messages, deadlines and status codes --------------------

STATUS_CODE = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    409: 9,  # FAILED_PRECONDITION
    413: 8,  # RESOURCE_EXHAUSTED
    429: 8,  # RESOURCE_EXHAUSTED
    499: 1,  # CANCELLED
    500: 13,  # INTERNAL
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}
"""The gRPC status code (its number) of each HTTP status an ``InferboxError`` carries."""

UNKNOWN = 2
UNIMPLEMENTED = 12


def status_code(http_status: int) -> int:
    """The gRPC status code for an HTTP status (``UNKNOWN`` for one without a mapping)."""
    return STATUS_CODE.get(http_status, UNKNOWN)


_PREFIX = struct.Struct(">BI")


def frame(message: bytes) -> bytes:
    """``message`` as one gRPC length-prefixed message (uncompressed)."""
    return _PREFIX.pack(0, len(message)) + message


class Compressed(BadRequest):
    """A compressed message: the relay accepts identity encoding only."""

    status = 405  # UNIMPLEMENTED, what gRPC answers for an encoding it does not support


def unframe(body: bytes) -> bytes:
    """The one message of a unary call's body; ``BadRequest`` when the body is not exactly one
    length-prefixed message, ``Compressed`` when it is compressed."""
    if len(body) < _PREFIX.size:
        raise BadRequest("the request is not a gRPC message (shorter than its 5-byte prefix)")
    compressed, length = _PREFIX.unpack_from(body)
    if length != len(body) - _PREFIX.size:
        raise BadRequest(
            f"the gRPC message says {length} bytes but {len(body) - _PREFIX.size} arrived"
        )
    if compressed:
        raise Compressed("compressed gRPC messages are not supported; send them uncompressed")
    return body[_PREFIX.size :]


_TIMEOUT_UNIT = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def timeout_s(value: bytes) -> float:
    """The seconds a ``grpc-timeout`` header gives (1 to 8 digits and a unit:
    ``H M S m u n``); ``BadRequest`` for anything else."""
    unit = _TIMEOUT_UNIT.get(value[-1:])
    digits = value[:-1]
    if unit is None or not (0 < len(digits) <= 8) or not digits.isdigit():
        raise BadRequest(f"grpc-timeout {value[:20].decode('latin-1')!r} is not a gRPC timeout")
    return int(digits) * unit


def status_message(message: str) -> bytes:
    """``grpc-message``'s value: the text percent-encoded as the gRPC spec says (UTF-8, every
    byte outside printable ASCII and ``%`` itself escaped)."""
    return urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")
