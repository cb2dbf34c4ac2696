"""The V2 datatype tables and Triton's BYTES wire format."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest
from tritonclient.utils import deserialize_bytes_tensor as triton_deserialize
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from inferbox.errors import BadRequest
from inferbox.protocol import (
    ONNX_ELEM_TO_V2,
    ONNX_TO_V2,
    SUPPORTED_DATATYPES,
    V2_TO_NUMPY,
    check_datatype,
    deserialize_bytes_tensor,
    itemsize,
    serialize_bytes_tensor,
    v2_to_triton_config_type,
)

pytestmark = pytest.mark.unit

FIXED = [dt for dt in SUPPORTED_DATATYPES if dt != "BYTES"]


def test_thirteen_datatypes() -> None:
    assert len(SUPPORTED_DATATYPES) == 13
    assert set(ONNX_TO_V2.values()) == set(SUPPORTED_DATATYPES)
    assert set(ONNX_ELEM_TO_V2.values()) == set(SUPPORTED_DATATYPES)


@pytest.mark.parametrize("dt", FIXED)
def test_numpy_dtype_matches_tritonclient_and_is_little_endian(dt: str) -> None:
    ours = V2_TO_NUMPY[dt]
    assert ours == np.dtype(triton_to_np_dtype(dt))
    assert ours.byteorder in ("<", "|", "=")
    assert ours.newbyteorder("<") == ours
    assert itemsize(dt) == ours.itemsize


def test_bytes_is_object_and_variable_length() -> None:
    assert V2_TO_NUMPY["BYTES"] == np.dtype(object)
    assert itemsize("BYTES") is None


def test_onnx_element_types_match_onnx_enum() -> None:
    names = {
        "FLOAT": "FP32",
        "FLOAT16": "FP16",
        "DOUBLE": "FP64",
        "BOOL": "BOOL",
        "STRING": "BYTES",
        "UINT8": "UINT8",
        "UINT16": "UINT16",
        "UINT32": "UINT32",
        "UINT64": "UINT64",
        "INT8": "INT8",
        "INT16": "INT16",
        "INT32": "INT32",
        "INT64": "INT64",
    }
    for onnx_name, v2 in names.items():
        assert ONNX_ELEM_TO_V2[getattr(onnx.TensorProto, onnx_name)] == v2


@pytest.mark.parametrize(
    ("ort", "v2"),
    [
        ("tensor(float)", "FP32"),
        ("tensor(float16)", "FP16"),
        ("tensor(double)", "FP64"),
        ("tensor(bool)", "BOOL"),
        ("tensor(string)", "BYTES"),
        ("tensor(uint64)", "UINT64"),
        ("tensor(int8)", "INT8"),
        ("tensor(int64)", "INT64"),
    ],
)
def test_onnxruntime_type_strings(ort: str, v2: str) -> None:
    assert ONNX_TO_V2[ort] == v2


def test_triton_config_type() -> None:
    assert v2_to_triton_config_type("FP32") == "TYPE_FP32"
    assert v2_to_triton_config_type("BYTES") == "TYPE_STRING"
    assert v2_to_triton_config_type("BOOL") == "TYPE_BOOL"


@pytest.mark.parametrize("fn", [check_datatype, itemsize, v2_to_triton_config_type])
def test_unknown_datatype_is_bad_request_listing_supported(fn) -> None:
    with pytest.raises(BadRequest, match=r"unsupported datatype 'BF16'.*FP32") as info:
        fn("BF16")
    assert info.value.status == 400


def test_serialize_matches_tritonclient() -> None:
    arr = np.array([[b"a", b""], ["héllo", b"\x00\xff"]], dtype=object)
    ours = serialize_bytes_tensor(arr)
    assert ours == serialize_byte_tensor(arr).item()
    assert ours[:5] == struct.pack("<I", 1) + b"a"


def test_serialize_list_and_empty() -> None:
    assert serialize_bytes_tensor([]) == b""
    assert serialize_bytes_tensor(["x", b"yz"]) == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"


def test_deserialize_round_trip_and_matches_tritonclient() -> None:
    elements = [b"", b"abc", "ü".encode(), b"\x00" * 300]
    raw = serialize_bytes_tensor(elements)
    assert deserialize_bytes_tensor(raw) == elements
    assert deserialize_bytes_tensor(raw, count=4) == elements
    assert list(triton_deserialize(raw)) == elements
    assert deserialize_bytes_tensor(b"") == []
    assert deserialize_bytes_tensor(b"", count=0) == []


@pytest.mark.parametrize(
    "raw",
    [b"\x01\x00", b"\x05\x00\x00\x00abc", b"\x01\x00\x00\x00a\x00", b"\xff\xff\xff\xff"],
    ids=["short-prefix", "overrun", "trailing-partial-prefix", "huge-length"],
)
def test_deserialize_truncated_framing(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="truncated"):
        deserialize_bytes_tensor(raw)


def test_deserialize_count_mismatch() -> None:
    raw = serialize_bytes_tensor([b"a", b"b", b"c"])
    with pytest.raises(BadRequest, match="3 element"):
        deserialize_bytes_tensor(raw, count=2)
    with pytest.raises(BadRequest, match="3 element"):
        deserialize_bytes_tensor(raw, count=4)


def test_deserialize_stops_early_on_too_many_elements() -> None:
    # A million empty elements where one was declared: refused without building the whole list.
    with pytest.raises(BadRequest, match="more than 2 element"):
        deserialize_bytes_tensor(b"\x00\x00\x00\x00" * 1_000_000, count=1)
