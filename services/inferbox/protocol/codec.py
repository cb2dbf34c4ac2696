"""Decode V2 inference requests and encode V2 inference responses (HTTP/REST, JSON + binary).

Follows the KServe V2 / Open Inference Protocol and Triton's binary tensor data extension
byte-for-byte as ``tritonclient.http`` writes and reads it: a JSON header, optionally followed
by the raw tensor bytes whose header length is sent in ``Inference-Header-Content-Length``.
Pure functions, no I/O. Every bad input raises ``BadRequest`` with a message naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain
from typing import Annotated, Any

import msgspec
import numpy as np

from inferbox.errors import BadRequest, InferboxError
from inferbox.protocol.datatypes import (
    V2_TO_NUMPY,
    check_datatype,
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)


@dataclass(slots=True)
class InputTensor:
    """One decoded input.

    ``raw`` is the tensor's bytes in C order, little-endian; for BYTES it is Triton's
    length-prefixed serialization.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it in the binary section."""

    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request.

    ``outputs`` None means all outputs, each binary iff ``binary_output_default``.
    ``timeout_us`` is the client's ``timeout`` parameter (microseconds). ``parameters`` is the
    request-level ``parameters`` object as sent.
    """

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    binary_output_default: bool
    timeout_us: int | None
    priority: int | None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TensorLimits:
    """Bounds checked on every declared input shape before anything is allocated."""

    max_rank: int = 8
    max_dim: int = 16_777_216
    max_elements: int = 16_777_216
    max_bytes_elements: int = 1_048_576


@dataclass(slots=True)
class OutputTensor:
    """One model output to encode; ``raw`` follows the same convention as ``InputTensor``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


# --- the JSON header, as msgspec structs: type errors come back with a JSON path -----------------


class _InputHeader(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = {}
    # Any here: checked per datatype later, where the message can name the input and element.
    data: Any = msgspec.UNSET


class _OutputHeader(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _RequestHeader(msgspec.Struct):
    inputs: list[_InputHeader]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[_OutputHeader] | None = None


_HEADER_DECODER = msgspec.json.Decoder(_RequestHeader)


class _InputPeek(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class _RequestPeek(msgspec.Struct):
    inputs: list[_InputPeek]


# Fields not named above (``data`` above all) are skipped by the decoder, never built.
_PEEK_DECODER = msgspec.json.Decoder(_RequestPeek)


def peek_inputs(body: bytes, header_length: int | None) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of each input, read without decoding any tensor data; empty
    when the header is malformed (``decode_infer_request`` then says what is wrong)."""
    header = body if header_length is None else memoryview(body)[:header_length]
    try:
        peek = _PEEK_DECODER.decode(header)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, TypeError):
        return []
    return [(tensor.name, tensor.datatype, tensor.shape) for tensor in peek.inputs]


TOO_DEEP = "the request's JSON is nested too deeply"
"""The message of a JSON document deeper than the decoder's recursion limit (about 1,000)."""


def _int_range(dt: np.dtype) -> type:
    info = np.iinfo(dt)
    if info.max > np.iinfo(np.int64).max:
        # msgspec bounds must fit an int64: UINT64's upper bound is checked by the numpy cast.
        return Annotated[int, msgspec.Meta(ge=0)]
    return Annotated[int, msgspec.Meta(ge=int(info.min), le=int(info.max))]


def _float_range(dt: np.dtype) -> type:
    # Finite JSON numbers beyond the type's range would silently become inf in the cast.
    big = float(np.finfo(dt).max)
    return Annotated[float, msgspec.Meta(ge=-big, le=big)]


# The element type each V2 datatype accepts in JSON ``data``. msgspec.convert checks a whole
# list against it in C: strict mode refuses bools as numbers and floats as ints, and the Meta
# bounds give the range check, so the common path never loops over elements in Python.
_JSON_ELEMENT: dict[str, Any] = {
    "BOOL": bool,
    **{n: _int_range(V2_TO_NUMPY[n]) for n in ("UINT8", "UINT16", "UINT32", "UINT64")},
    **{n: _int_range(V2_TO_NUMPY[n]) for n in ("INT8", "INT16", "INT32", "INT64")},
    "FP16": _float_range(V2_TO_NUMPY["FP16"]),
    "FP32": _float_range(V2_TO_NUMPY["FP32"]),
    "FP64": float,
    "BYTES": str,
}
_JSON_LIST: dict[str, Any] = {name: list[elem] for name, elem in _JSON_ELEMENT.items()}
# Long FP16 and FP32 lists skip the per-element bounds: a value past the type's range becomes
# inf in the cast, which one vectorised test finds (the bounded conversion then names the
# element). That saves about a third of the conversion from 1,000 elements up; below that, the
# fixed cost of the vectorised test is larger than what it saves.
_VECTOR_CHECKED = frozenset({"FP16", "FP32"})
_VECTOR_CHECK_MIN = 1024


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _check_no_shared_memory(params: dict[str, Any], where: str) -> None:
    if any(key.startswith("shared_memory_") for key in params):
        raise BadRequest(f"{where}: shared memory is not supported; send the tensor data inline")


def _non_negative_int(params: dict[str, Any], key: str, where: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    # type() rather than isinstance: JSON true/false decode to bool, a subclass of int.
    if type(value) is not int or value < 0:
        raise BadRequest(f"{where}: parameter {key!r} must be a non-negative integer")
    return value


def _bool_param(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if type(value) is not bool:
        raise BadRequest(f"{where}: parameter {key!r} must be true or false")
    return value


def _checked_shape(
    shape: list[int], where: str, limits: TensorLimits
) -> tuple[tuple[int, ...], int]:
    """Validate a declared shape against ``limits`` and return it with its element count."""
    if len(shape) > limits.max_rank:
        raise BadRequest(f"{where}: shape has {len(shape)} dimensions, at most {limits.max_rank}")
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadRequest(f"{where}: shape {_shape_text(shape)} has a negative dimension")
        if dim > limits.max_dim:
            raise BadRequest(
                f"{where}: shape {_shape_text(shape)} has a dimension above {limits.max_dim}"
            )
        count *= dim
    if count > limits.max_elements:
        raise BadRequest(
            f"{where}: shape {_shape_text(shape)} has {count} elements, at most "
            f"{limits.max_elements}"
        )
    return tuple(shape), count


def _flatten(data: list[Any], where: str) -> list[Any]:
    """Flatten row-major nested lists one level at a time, refusing ragged nesting."""
    level = data
    depth = 0
    while level and type(level[0]) is list:
        width = len(level[0])
        if not all(type(item) is list and len(item) == width for item in level):
            raise BadRequest(f"{where}: nested data is ragged (level {depth + 1} is not uniform)")
        level = list(chain.from_iterable(level))
        depth += 1
    return level


def _json_data_to_raw(data: Any, datatype: str, count: int, where: str) -> bytes:
    """Validate JSON ``data`` for ``datatype`` and ``count`` elements; return the raw bytes."""
    if type(data) is not list:
        raise BadRequest(f"{where}: 'data' must be a list")
    # The common case is a flat list: test one element instead of walking the whole list.
    flat = _flatten(data, where) if data and type(data[0]) is list else data
    if len(flat) != count:
        raise BadRequest(f"{where}: 'data' has {len(flat)} elements but the shape needs {count}")
    if datatype in _VECTOR_CHECKED and len(flat) >= _VECTOR_CHECK_MIN:
        array = _float_array(flat, V2_TO_NUMPY[datatype])
        if array is not None:
            return array.tobytes()
    try:
        values = msgspec.convert(flat, _JSON_LIST[datatype])
    except msgspec.ValidationError as exc:
        # msgspec says "at `$[3]`"; the index is into the (flattened) data list.
        detail = str(exc).replace("`$", "`data")
        raise BadRequest(f"{where}: invalid {datatype} data: {detail}") from None
    if datatype == "BYTES":
        return serialize_bytes_tensor(v.encode("utf-8") for v in values)
    try:
        # Values are type- and range-checked, so this cast cannot truncate; only a UINT64 value
        # past 2**64 - 1 is left for numpy to refuse. fromiter with a count fills the array in
        # one pass, where asarray first walks the list to guess its shape.
        return np.fromiter(values, V2_TO_NUMPY[datatype], len(values)).tobytes()
    except OverflowError:
        raise BadRequest(f"{where}: invalid {datatype} data: a value is out of range") from None


def _float_array(flat: list[Any], dtype: np.dtype) -> np.ndarray | None:
    """``flat`` as an array of ``dtype`` when every element is a number within its range.

    None otherwise: the caller's bounded conversion then says which element is wrong.
    """
    try:
        values = msgspec.convert(flat, list[float])
    except msgspec.ValidationError:
        return None
    with np.errstate(over="ignore"):
        array = np.fromiter(values, dtype, len(values))
    return None if np.isinf(array).any() else array


def _check_binary_size(
    datatype: str, shape: tuple[int, ...], count: int, raw: bytes, where: str
) -> None:
    if datatype == "BYTES":
        try:
            deserialize_bytes_tensor(raw, count)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc.message}") from None
        return
    expected = count * V2_TO_NUMPY[datatype].itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"{where}: binary_data_size is {len(raw)} bytes but {datatype} shape "
            f"{_shape_text(shape)} needs {expected}"
        )


def _decode_header(header: bytes) -> _RequestHeader:
    try:
        return _HEADER_DECODER.decode(header)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid inference request: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError itself for a string that is not valid UTF-8.
        raise BadRequest(f"malformed inference request JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None


# Every inference call runs this: written flat on purpose, as helpers would add calls per request.
def decode_infer_request(  # noqa: C901
    body: bytes, header_length: int | None, limits: TensorLimits
) -> InferRequest:
    """Decode a V2 inference request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None when absent: the
    whole body is JSON). Shapes are checked against ``limits`` before any tensor data is
    touched. Raises BadRequest for anything malformed or unsupported.
    """
    if header_length is None:
        header_length = len(body)
    elif type(header_length) is not int or not 0 < header_length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} must be between 1 and the "
            f"body length ({len(body)})"
        )
    view = memoryview(body)
    req = _decode_header(view[:header_length])

    _check_no_shared_memory(req.parameters, "request")
    timeout_us = _non_negative_int(req.parameters, "timeout", "request")
    priority = _non_negative_int(req.parameters, "priority", "request")
    binary_default = bool(_bool_param(req.parameters, "binary_data_output", "request"))

    if not req.inputs:
        raise BadRequest("request has no inputs")
    binary = view[header_length:]
    offset = 0
    seen: set[str] = set()
    inputs: list[InputTensor] = []
    for spec in req.inputs:
        where = f"input {spec.name!r}"
        if spec.name in seen:
            raise BadRequest(f"{where} appears more than once")
        seen.add(spec.name)
        try:
            check_datatype(spec.datatype)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc.message}") from None
        _check_no_shared_memory(spec.parameters, where)
        shape, count = _checked_shape(spec.shape, where, limits)
        if spec.datatype == "BYTES" and count > limits.max_bytes_elements:
            raise BadRequest(
                f"{where}: BYTES shape {_shape_text(shape)} has {count} elements, at most "
                f"{limits.max_bytes_elements}"
            )
        size = _non_negative_int(spec.parameters, "binary_data_size", where)
        has_data = spec.data is not msgspec.UNSET
        if size is not None:
            if has_data:
                raise BadRequest(f"{where}: has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise BadRequest(
                    f"{where}: binary_data_size {size} runs past the binary section "
                    f"({len(binary) - offset} bytes left); check Inference-Header-Content-Length"
                )
            raw = bytes(binary[offset : offset + size])
            offset += size
            _check_binary_size(spec.datatype, shape, count, raw, where)
        elif has_data:
            raw = _json_data_to_raw(spec.data, spec.datatype, count, where)
        else:
            raise BadRequest(f"{where}: has neither 'data' nor a binary_data_size parameter")
        inputs.append(InputTensor(spec.name, spec.datatype, shape, raw))
    if offset != len(binary):
        raise BadRequest(
            f"binary section is {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}; check Inference-Header-Content-Length"
        )

    return InferRequest(
        id=req.id,
        inputs=inputs,
        outputs=_requested_outputs(req.outputs, binary_default),
        binary_output_default=binary_default,
        timeout_us=timeout_us,
        priority=priority,
        parameters=req.parameters,
    )


def _requested_outputs(
    specs: list[_OutputHeader] | None, binary_default: bool
) -> list[RequestedOutput] | None:
    # An empty list asks for nothing in particular, which Triton treats as "all outputs".
    if not specs:
        return None
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for spec in specs:
        where = f"output {spec.name!r}"
        if spec.name in seen:
            raise BadRequest(f"{where} is requested more than once")
        seen.add(spec.name)
        _check_no_shared_memory(spec.parameters, where)
        if spec.parameters.get("classification"):
            raise BadRequest(f"{where}: the classification extension is not supported")
        wants_binary = _bool_param(spec.parameters, "binary_data", where)
        out.append(
            RequestedOutput(spec.name, binary_default if wants_binary is None else wants_binary)
        )
    return out


def _json_values(tensor: OutputTensor) -> list[Any]:
    """The flat JSON ``data`` list of an output tensor."""
    if tensor.datatype == "BYTES":
        # JSON can only carry text: invalid UTF-8 is replaced rather than failing the response.
        return [v.decode("utf-8", errors="replace") for v in deserialize_bytes_tensor(tensor.raw)]
    return np.frombuffer(tensor.raw, dtype=V2_TO_NUMPY[tensor.datatype]).tolist()


def _check_output(tensor: OutputTensor) -> None:
    # A mismatch here is a server bug, not the client's: surface it as a 500.
    if tensor.datatype not in V2_TO_NUMPY:
        raise InferboxError(f"output {tensor.name!r} has unsupported datatype {tensor.datatype!r}")
    count = math.prod(tensor.shape)
    if tensor.datatype == "BYTES":
        try:
            deserialize_bytes_tensor(tensor.raw, count)
        except BadRequest as exc:
            raise InferboxError(f"output {tensor.name!r}: {exc.message}") from None
        return
    expected = count * V2_TO_NUMPY[tensor.datatype].itemsize
    if len(tensor.raw) != expected:
        raise InferboxError(
            f"output {tensor.name!r} has {len(tensor.raw)} bytes but {tensor.datatype} shape "
            f"{_shape_text(tensor.shape)} needs {expected}"
        )


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
    requested: list[RequestedOutput] | None,
    binary_default: bool,
) -> tuple[bytes, int | None]:
    """Encode a V2 inference response.

    Outputs come in the order of ``requested`` (all of ``outputs`` when None, each binary iff
    ``binary_default``). Returns ``(body, header_length)``: header_length is None when every
    output is inline JSON, else the JSON header's length, to be sent as
    ``Inference-Header-Content-Length`` with the binary tensors following the header.
    """
    by_name = {t.name: t for t in outputs}
    if requested is None:
        chosen = [(t, binary_default) for t in outputs]
    else:
        chosen = []
        for r in requested:
            if r.name not in by_name:
                raise BadRequest(f"requested output {r.name!r} is not an output of the model")
            chosen.append((by_name[r.name], r.binary))

    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, as_binary in chosen:
        _check_output(tensor)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if as_binary:
            entry["parameters"] = {"binary_data_size": len(tensor.raw)}
            blobs.append(tensor.raw)
        else:
            entry["data"] = _json_values(tensor)
        entries.append(entry)

    header = _response_header(model_name, model_version, request_id, entries)
    if not any(as_binary for _, as_binary in chosen):
        return header, None
    return b"".join([header, *blobs]), len(header)


def encode_binary_header(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, str, tuple[int, ...], int]],
) -> bytes:
    """The JSON header of a response whose outputs (name, datatype, shape, byte size) all
    follow it in the binary section, in this order: for answers written piece by piece."""
    entries = [
        {
            "name": name,
            "datatype": datatype,
            "shape": list(shape),
            "parameters": {"binary_data_size": size},
        }
        for name, datatype, shape, size in outputs
    ]
    return _response_header(model_name, model_version, request_id, entries)


def _response_header(
    model_name: str, model_version: str, request_id: str | None, entries: list[dict[str, Any]]
) -> bytes:
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    # msgspec writes NaN/inf as null, which tritonclient reads back as NaN.
    return msgspec.json.encode(doc)
