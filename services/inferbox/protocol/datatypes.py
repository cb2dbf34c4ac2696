"""The V2 (KServe / Open Inference Protocol) tensor datatypes and Triton's BYTES wire format.

Maps between V2 datatype names, numpy dtypes, ONNX Runtime type strings, ONNX element types and
Triton model-config type names. Pure functions, no I/O; ``onnx`` itself is not imported here
because it is a slow import and only its stable integer enum values are needed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from inferbox.errors import BadRequest

# Every dtype is explicitly little-endian: the V2 binary wire format is little-endian whatever
# the host is, so raw tensor bytes must never follow the native byte order.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

SUPPORTED_DATATYPES: tuple[str, ...] = tuple(V2_TO_NUMPY)


def numpy_to_v2(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype (any byte order; strings and objects are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    for name, candidate in V2_TO_NUMPY.items():
        if candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize:
            return name
    raise ValueError(f"no V2 datatype for numpy dtype {dtype}")


# onnxruntime's NodeArg.type strings.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# onnx.TensorProto.DataType values (fixed by the ONNX spec; checked against onnx in the tests).
ONNX_ELEM_TO_V2: dict[int, str] = {
    1: "FP32",  # FLOAT
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",  # STRING
    9: "BOOL",
    10: "FP16",  # FLOAT16
    11: "FP64",  # DOUBLE
    12: "UINT32",
    13: "UINT64",
}

_LEN = struct.Struct("<I")
_MAX_ELEMENT_BYTES = 0xFFFFFFFF  # the length prefix is a 4-byte unsigned integer


def check_datatype(datatype: str) -> str:
    """Return ``datatype`` if it is a supported V2 name, else raise BadRequest listing them."""
    if datatype not in V2_TO_NUMPY:
        raise BadRequest(
            f"unsupported datatype {datatype!r}; supported: {', '.join(SUPPORTED_DATATYPES)}"
        )
    return datatype


def v2_to_triton_config_type(datatype: str) -> str:
    """Triton model-config name of a V2 datatype: ``"FP32"`` -> ``"TYPE_FP32"``."""
    check_datatype(datatype)
    # Triton's config calls the variable-length type STRING; everything else keeps its name.
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def itemsize(datatype: str) -> int | None:
    """Bytes per element of a V2 datatype, or None for BYTES (variable length)."""
    check_datatype(datatype)
    return None if datatype == "BYTES" else V2_TO_NUMPY[datatype].itemsize


def _as_bytes(element: object) -> bytes:
    if isinstance(element, bytes):  # includes np.bytes_
        return element
    if isinstance(element, bytearray | memoryview):
        return bytes(element)
    # Same rule as tritonclient's serialize_byte_tensor: anything else is sent as its UTF-8 text.
    return str(element).encode("utf-8")


def serialize_bytes_tensor(elements: np.ndarray | Iterable[object]) -> bytes:
    """Triton's BYTES wire format: per element, a 4-byte little-endian length then the bytes.

    ``elements`` is a numpy array (object or ``bytes_`` dtype, any shape, taken in C order) or
    a flat iterable of ``bytes``/``str``; ``str`` is encoded as UTF-8.
    """
    if isinstance(elements, np.ndarray):
        elements = elements.ravel(order="C").tolist()
    parts: list[bytes] = []
    for element in elements:
        data = _as_bytes(element)
        if len(data) > _MAX_ELEMENT_BYTES:
            raise BadRequest("a BYTES element is longer than 4 GiB and cannot be framed")
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(raw: bytes, count: int | None = None) -> list[bytes]:
    """Split Triton's length-prefixed BYTES serialization into its elements.

    Raises BadRequest if a length prefix is cut short or a length runs past the end, or if
    ``count`` is given and the number of elements differs from it.
    """
    data = bytes(raw)
    end = len(data)
    out: list[bytes] = []
    offset = 0
    while offset < end:
        if offset + 4 > end:
            raise BadRequest(
                f"BYTES data is truncated: {end - offset} byte(s) left where a 4-byte length "
                f"prefix was expected (element {len(out)})"
            )
        (length,) = _LEN.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(
                f"BYTES data is truncated: element {len(out)} declares {length} bytes but only "
                f"{end - offset} remain"
            )
        out.append(data[offset : offset + length])
        offset += length
        # Stop early on a mismatch so a body of many empty elements cannot build a huge list.
        if count is not None and len(out) > count:
            break
    if count is not None and len(out) != count:
        more = "more than " if len(out) > count else ""
        raise BadRequest(f"BYTES data holds {more}{len(out)} element(s) but {count} were expected")
    return out
