"""The V2 request decoder and response encoder, checked against tritonclient's own wire code."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.http._utils import _get_inference_request

from inferbox.errors import BadRequest, InferboxError
from inferbox.protocol import (
    SUPPORTED_DATATYPES,
    V2_TO_NUMPY,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    TensorLimits,
    decode_infer_request,
    encode_infer_response,
    serialize_bytes_tensor,
)

pytestmark = pytest.mark.unit

LIMITS = TensorLimits()


def sample(dt: str) -> np.ndarray:
    """A 2x3 array of ``dt`` that includes the type's extremes."""
    if dt == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dt == "BYTES":
        return np.array([[b"a", b"", "héllo".encode()], [b"xyz", b"0", b"  "]], dtype=object)
    npdt = V2_TO_NUMPY[dt]
    if npdt.kind in "iu":
        info = np.iinfo(npdt)
        return np.array([[info.min, info.max, 0], [1, 2, info.max - 1]], dtype=npdt)
    return np.array([[0.5, -1.25, 3.0], [65504.0, -0.0, 1e-3]], dtype=npdt)


def expected_raw(arr: np.ndarray) -> bytes:
    if arr.dtype == object:
        return serialize_bytes_tensor(arr)
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def triton_request(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool,
    outputs: list[th.InferRequestedOutput] | None = None,
    request_id: str = "",
    priority: int = 0,
    timeout: int | None = None,
) -> tuple[bytes, int | None]:
    """Build a request body exactly as tritonclient.http does."""
    inputs = []
    for name, arr in arrays.items():
        dt = (
            "BYTES"
            if arr.dtype == object
            else next(k for k, v in V2_TO_NUMPY.items() if v == arr.dtype)
        )
        inp = th.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    body, json_size = _get_inference_request(
        inputs, request_id, outputs, 0, False, False, priority, timeout, None
    )
    return (body.encode() if isinstance(body, str) else body), json_size


def decode_json(header: dict[str, Any] | bytes, binary: bytes = b"") -> InferRequest:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return decode_infer_request(text + binary, len(text) if binary else None, LIMITS)


def one_input(**fields: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    tensor.update(fields)
    return {"inputs": [tensor]}


def bad(header: dict[str, Any] | bytes, match: str, binary: bytes = b"") -> BadRequest:
    with pytest.raises(BadRequest, match=match) as info:
        decode_json(header, binary)
    assert info.value.status == 400
    return info.value


# --- requests: round trips with tritonclient --------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dt", SUPPORTED_DATATYPES)
def test_request_round_trip_every_datatype(dt: str, binary: bool) -> None:
    arr = sample(dt)
    body, json_size = triton_request({"in": arr}, binary=binary)
    assert (json_size is None) is not binary
    req = decode_infer_request(body, json_size, LIMITS)
    (tensor,) = req.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("in", dt, (2, 3))
    assert tensor.raw == expected_raw(arr)


def test_request_mixed_binary_and_json_inputs_in_order() -> None:
    a = np.arange(4, dtype=np.int64)
    b = np.array([b"x", b"yy"], dtype=object)
    c = np.ones((2, 2), dtype=np.float16)
    ia = th.InferInput("a", [4], "INT64").set_data_from_numpy(a, binary_data=True)
    ib = th.InferInput("b", [2], "BYTES").set_data_from_numpy(b, binary_data=False)
    ic = th.InferInput("c", [2, 2], "FP16").set_data_from_numpy(c, binary_data=True)
    body, json_size = _get_inference_request([ia, ib, ic], "", None, 0, False, False, 0, None, None)
    req = decode_infer_request(body, json_size, LIMITS)
    assert [t.name for t in req.inputs] == ["a", "b", "c"]
    assert req.inputs[0].raw == a.tobytes()
    assert req.inputs[1].raw == serialize_bytes_tensor(b)
    assert req.inputs[2].raw == c.tobytes()
    # tritonclient asks for all outputs in binary when it names none.
    assert req.outputs is None
    assert req.binary_output_default is True


def test_request_id_priority_timeout_and_outputs() -> None:
    outputs = [th.InferRequestedOutput("y", binary_data=False), th.InferRequestedOutput("z")]
    body, json_size = triton_request(
        {"x": np.zeros(3, np.float32)},
        binary=True,
        outputs=outputs,
        request_id="req-7",
        priority=2,
        timeout=1500,
    )
    req = decode_infer_request(body, json_size, LIMITS)
    assert req.id == "req-7"
    assert req.priority == 2
    assert req.timeout_us == 1500
    assert req.binary_output_default is False
    assert req.outputs == [RequestedOutput("y", False), RequestedOutput("z", True)]
    assert req.parameters == {"priority": 2, "timeout": 1500}


def test_request_defaults() -> None:
    req = decode_json(one_input())
    assert req.id is None
    assert req.outputs is None
    assert req.binary_output_default is False
    assert (req.timeout_us, req.priority, req.parameters) == (None, None, {})


def test_binary_data_output_default_applies_to_outputs_without_binary_data() -> None:
    header = one_input()
    header["parameters"] = {"binary_data_output": True, "custom": "kept"}
    header["outputs"] = [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]
    req = decode_json(header)
    assert req.binary_output_default is True
    assert req.outputs == [RequestedOutput("a", True), RequestedOutput("b", False)]
    assert req.parameters["custom"] == "kept"


def test_empty_outputs_list_means_all() -> None:
    assert decode_json({**one_input(), "outputs": []}).outputs is None


def test_flat_data_for_a_2d_shape() -> None:
    req = decode_json(one_input(shape=[2, 2], data=[1, 2, 3, 4.5]))
    assert req.inputs[0].raw == np.array([1, 2, 3, 4.5], "<f4").tobytes()


def test_nested_data() -> None:
    data = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    req = decode_json(one_input(datatype="INT16", shape=[2, 2, 2], data=data))
    assert req.inputs[0].raw == np.array(data, "<i2").tobytes()


def test_nested_data_may_differ_from_declared_shape() -> None:
    req = decode_json(one_input(datatype="INT32", shape=[6], data=[[1, 2, 3], [4, 5, 6]]))
    assert req.inputs[0].raw == np.arange(1, 7, dtype="<i4").tobytes()


def test_nested_bytes_data() -> None:
    req = decode_json(one_input(datatype="BYTES", shape=[2, 1], data=[["a"], ["ü"]]))
    assert req.inputs[0].raw == serialize_bytes_tensor([b"a", "ü".encode()])


def test_zero_element_inputs() -> None:
    req = decode_json(one_input(shape=[0, 3], data=[]))
    assert req.inputs[0].raw == b""
    empty = np.array([], dtype=object)
    body, json_size = triton_request({"s": empty, "f": np.zeros((2, 0), np.float32)}, binary=True)
    req = decode_infer_request(body, json_size, LIMITS)
    assert [(t.shape, t.raw) for t in req.inputs] == [((0,), b""), ((2, 0), b"")]


def test_uint64_and_int64_extremes_in_json() -> None:
    req = decode_json(one_input(datatype="UINT64", shape=[2], data=[0, 2**64 - 1]))
    assert req.inputs[0].raw == np.array([0, 2**64 - 1], "<u8").tobytes()
    req = decode_json(one_input(datatype="INT64", shape=[2], data=[-(2**63), 2**63 - 1]))
    assert req.inputs[0].raw == np.array([-(2**63), 2**63 - 1], "<i8").tobytes()


# --- requests: bad input -----------------------------------------------------------------------


def test_malformed_json() -> None:
    bad(b'{"inputs": [', "malformed inference request JSON")


def test_invalid_utf8_header() -> None:
    bad(b'{"id": "\xff"}', "malformed")


def test_non_object_header() -> None:
    bad(b"[1, 2]", "invalid inference request: Expected `object`")


def test_missing_inputs() -> None:
    bad({"id": "a"}, "missing required field `inputs`")


def test_empty_inputs() -> None:
    bad({"inputs": []}, "no inputs")


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"name": 3}, r"\$\.inputs\[0\]\.name"),
        ({"shape": [2.0]}, r"\$\.inputs\[0\]\.shape\[0\]"),
        ({"shape": [True, 2]}, r"\$\.inputs\[0\]\.shape\[0\]"),
        ({"shape": "2"}, r"\$\.inputs\[0\]\.shape"),
        ({"parameters": []}, r"\$\.inputs\[0\]\.parameters"),
    ],
)
def test_wrong_field_types(fields: dict[str, Any], path: str) -> None:
    bad(one_input(**fields), "invalid inference request: Expected .*" + path)


def test_wrong_id_type() -> None:
    bad({**one_input(), "id": 5}, r"Expected `str \| null`, got `int` - at `\$\.id`")


@pytest.mark.parametrize("header_length", [0, -1, 10_000])
def test_header_length_out_of_range(header_length: int) -> None:
    body = json.dumps(one_input()).encode()
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        decode_infer_request(body, header_length, LIMITS)


def test_header_length_cuts_json() -> None:
    body = json.dumps(one_input()).encode()
    with pytest.raises(BadRequest, match="malformed"):
        decode_infer_request(body, len(body) - 1, LIMITS)


def binary_input(size: int, **fields: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {}}
    tensor.update(fields)
    tensor["parameters"]["binary_data_size"] = size
    return {"inputs": [tensor]}


def test_binary_section_too_short() -> None:
    bad(binary_input(8), "runs past the binary section", binary=b"\0" * 4)


def test_binary_section_too_long() -> None:
    bad(binary_input(8), "binary section is 12 bytes .* add up to 8", binary=b"\0" * 12)


def test_binary_data_without_header_length() -> None:
    # No Inference-Header-Content-Length: the whole body is JSON, so there is no binary section.
    with pytest.raises(BadRequest, match="runs past the binary section"):
        decode_infer_request(json.dumps(binary_input(8)).encode(), None, LIMITS)


def test_binary_size_does_not_match_shape() -> None:
    bad(binary_input(4), "binary_data_size is 4 bytes but FP32 shape \\[2\\] needs 8", b"\0" * 4)


def test_binary_bytes_element_count_mismatch() -> None:
    raw = serialize_bytes_tensor([b"a"])
    bad(binary_input(len(raw), datatype="BYTES"), "input 'x'.*1 element.*2 were expected", raw)


def test_binary_bytes_truncated_framing() -> None:
    raw = b"\x05\x00\x00\x00ab"
    bad(binary_input(len(raw), datatype="BYTES", shape=[1]), "input 'x'.*truncated", raw)


def test_negative_binary_data_size() -> None:
    bad(binary_input(-1), "binary_data_size' must be a non-negative integer")


def test_both_data_and_binary_data_size() -> None:
    bad(binary_input(8, data=[1.0, 2.0]), "both 'data' and binary_data_size", b"\0" * 8)


def test_neither_data_nor_binary_data_size() -> None:
    header = one_input()
    del header["inputs"][0]["data"]
    bad(header, "neither 'data' nor a binary_data_size")


def test_unknown_datatype() -> None:
    err = bad(one_input(datatype="FLOAT32"), "input 'x': unsupported datatype 'FLOAT32'")
    assert "BOOL" in err.message
    assert "BYTES" in err.message


def test_negative_dim() -> None:
    bad(one_input(shape=[2, -1]), "negative dimension")


def test_huge_dim_is_refused_fast_without_allocating() -> None:
    body = json.dumps(binary_input(4 * 10**9, shape=[10**9])).encode()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(BadRequest, match="dimension above"):
            decode_infer_request(body + b"\0" * 16, len(body), LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 1_000_000


def test_too_many_elements() -> None:
    bad(one_input(shape=[4096, 4096, 2]), "33554432 elements, at most 16777216")


def test_too_many_dims() -> None:
    bad(one_input(shape=[1] * 9), "9 dimensions, at most 8")


def test_limits_are_configurable() -> None:
    limits = TensorLimits(max_rank=1, max_dim=4, max_elements=4)
    body = json.dumps(one_input(shape=[5], data=[1] * 5)).encode()
    with pytest.raises(BadRequest, match="dimension above 4"):
        decode_infer_request(body, None, limits)


def test_element_count_mismatch() -> None:
    bad(one_input(shape=[3]), "'data' has 2 elements but the shape needs 3")


def test_nested_count_mismatch() -> None:
    bad(one_input(shape=[2, 3], data=[[1, 2], [3, 4]]), "has 4 elements but the shape needs 6")


@pytest.mark.parametrize(
    "data",
    [[[1, 2], [3]], [[1, 2], 3], [[[1], [2]], [[3], [4, 5]]]],
    ids=["short-row", "scalar-row", "deep"],
)
def test_ragged_nested_data(data: list[Any]) -> None:
    bad(one_input(shape=[4], data=data), "ragged")


def test_list_hidden_in_flat_data() -> None:
    bad(one_input(data=[1.0, [2.0]]), "invalid FP32 data: Expected `float`, got `array`")


def test_data_not_a_list() -> None:
    bad(one_input(shape=[1], data=1.0), "'data' must be a list")


@pytest.mark.parametrize(
    ("datatype", "data", "match"),
    [
        ("INT32", [1, 1.5], r"invalid INT32 data: Expected `int`, got `float` - at `data\[1\]`"),
        ("INT32", [1, 2.0], "Expected `int`, got `float`"),
        ("INT32", [1, "2"], "Expected `int`, got `str`"),
        ("INT32", [1, True], "Expected `int`, got `bool`"),
        ("INT32", [1, 2**31], "Expected `int` <= 2147483647"),
        ("UINT8", [1, 300], r"invalid UINT8 data: Expected `int` <= 255 - at `data\[1\]`"),
        ("UINT32", [-1, 1], "Expected `int` >= 0"),
        ("UINT64", [2**64, 1], "invalid UINT64 data: a value is out of range"),
        ("UINT64", [1, -1], "invalid UINT64 data: Expected `int` >= 0"),
        ("INT64", [-(2**63) - 1, 1], "Expected `int` >= -9223372036854775808"),
        ("FP32", [1.0, True], "invalid FP32 data: Expected `float`, got `bool`"),
        ("FP32", [1.0, "2.0"], "Expected `float`, got `str`"),
        ("FP32", [1.0, None], "Expected `float`, got `null`"),
        ("FP32", [1.0, 1e39], "Expected `float` <= 3.4"),
        ("FP16", [1.0, -70000.0], "Expected `float` >= -65504.0"),
        ("FP32", [0.5] * 3000 + [1e39], r"Expected `float` <= 3.4.* - at `data\[3000\]`"),
        ("FP32", [0.5] * 3000 + [True], r"got `bool` - at `data\[3000\]`"),
        ("BOOL", [True, 1], "invalid BOOL data: Expected `bool`, got `int`"),
        ("BOOL", [True, "true"], "Expected `bool`, got `str`"),
        ("BYTES", ["a", 1], "invalid BYTES data: Expected `str`, got `int`"),
    ],
)
def test_json_data_type_checks(datatype: str, data: list[Any], match: str) -> None:
    bad(one_input(datatype=datatype, shape=[len(data)], data=data), match)


@pytest.mark.parametrize("repeat", [1, 1000], ids=["short", "long"])
@pytest.mark.parametrize("datatype", ["FP16", "FP32"])
def test_json_floats_cast_like_numpy(datatype: str, repeat: int) -> None:
    """Integers, signed zero, subnormals and the type's largest value, as numpy casts them
    (short lists and long ones take different paths)."""
    dtype = np.dtype(V2_TO_NUMPY[datatype])
    data = [1, -2.5, -0.0, 1e-45, 6e-8, float(np.finfo(dtype).max), 0.1] * repeat
    req = decode_infer_request(
        json.dumps(one_input(datatype=datatype, shape=[len(data)], data=data)).encode(),
        None,
        LIMITS,
    )
    assert req.inputs[0].raw == np.asarray(data, dtype=dtype).tobytes()


def test_nested_type_error_names_flat_index() -> None:
    bad(one_input(datatype="INT8", shape=[2, 2], data=[[1, 2], [3, 4.5]]), r"at `data\[3\]`")


def test_nan_literal_is_malformed_json() -> None:
    text = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1.0,NaN]}]}'
    bad(text, "malformed inference request JSON")


def test_out_of_range_float_literal() -> None:
    text = b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":[1e400]}]}'
    bad(text, "Number out of range")


def test_duplicate_input_name() -> None:
    header = one_input()
    header["inputs"].append(dict(header["inputs"][0]))
    bad(header, "input 'x' appears more than once")


def test_duplicate_output_name() -> None:
    bad({**one_input(), "outputs": [{"name": "y"}, {"name": "y"}]}, "output 'y' is requested more")


def test_bad_output_binary_data_type() -> None:
    bad(
        {**one_input(), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
        "output 'y': parameter 'binary_data' must be true or false",
    )


def test_classification_is_refused() -> None:
    body, json_size = triton_request(
        {"x": np.zeros(2, np.float32)},
        binary=False,
        outputs=[th.InferRequestedOutput("y", class_count=3)],
    )
    with pytest.raises(BadRequest, match="classification"):
        decode_infer_request(body, json_size, LIMITS)


def test_shared_memory_input_is_refused() -> None:
    inp = th.InferInput("x", [2], "FP32")
    inp.set_shared_memory("region", 8)
    body, json_size = _get_inference_request([inp], "", None, 0, False, False, 0, None, None)
    with pytest.raises(BadRequest, match="input 'x': shared memory is not supported"):
        decode_infer_request(body, json_size, LIMITS)


def test_shared_memory_output_is_refused() -> None:
    out = th.InferRequestedOutput("y")
    out.set_shared_memory("region", 8)
    body, json_size = triton_request({"x": np.zeros(2, np.float32)}, binary=True, outputs=[out])
    with pytest.raises(BadRequest, match="output 'y': shared memory is not supported"):
        decode_infer_request(body, json_size, LIMITS)


def test_shared_memory_request_parameter_is_refused() -> None:
    bad({**one_input(), "parameters": {"shared_memory_region": "r"}}, "shared memory")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"timeout": "100"}, "'timeout' must be a non-negative integer"),
        ({"timeout": 1.5}, "'timeout' must be a non-negative integer"),
        ({"timeout": -1}, "'timeout' must be a non-negative integer"),
        ({"timeout": True}, "'timeout' must be a non-negative integer"),
        ({"priority": "high"}, "'priority' must be a non-negative integer"),
        ({"priority": -2}, "'priority' must be a non-negative integer"),
        ({"binary_data_output": "yes"}, "'binary_data_output' must be true or false"),
    ],
)
def test_bad_request_parameters(params: dict[str, Any], match: str) -> None:
    bad({**one_input(), "parameters": params}, match)


def test_request_parameters_not_an_object() -> None:
    bad({**one_input(), "parameters": [1]}, r"at `\$\.parameters`")


def test_flat_float_decode_is_fast() -> None:
    body = json.dumps(one_input(shape=[64], data=[float(i) for i in range(64)])).encode()
    start = time.perf_counter()
    for _ in range(1000):
        decode_infer_request(body, None, LIMITS)
    # About 15 µs each on a laptop; a generous bound that still catches a per-element Python path.
    assert time.perf_counter() - start < 1.0


# --- responses -----------------------------------------------------------------------------------


def output_of(name: str, arr: np.ndarray) -> OutputTensor:
    dt = (
        "BYTES"
        if arr.dtype == object
        else next(k for k, v in V2_TO_NUMPY.items() if v == arr.dtype)
    )
    return OutputTensor(name, dt, tuple(arr.shape), expected_raw(arr))


def parse(body: bytes, header_length: int | None) -> th.InferResult:
    return th.InferResult.from_response_body(body, verbose=False, header_length=header_length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dt", SUPPORTED_DATATYPES)
def test_response_round_trip_every_datatype(dt: str, binary: bool) -> None:
    arr = sample(dt)
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[output_of("out", arr)],
        requested=[RequestedOutput("out", binary)],
        binary_default=not binary,
    )
    assert (header_length is None) is not binary
    got = parse(body, header_length).as_numpy("out")
    assert got.shape == arr.shape
    if dt == "BYTES":
        if binary:
            assert got.tolist() == arr.tolist()
        else:
            # JSON carries text: the client gets str back.
            assert got.tolist() == [[v.decode() for v in row] for row in arr.tolist()]
    else:
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)


def test_response_order_id_and_mixed_binary() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([True, False])
    c = np.array([b"\xff\xfe", b"ok"], dtype=object)
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="3",
        request_id="abc",
        outputs=[output_of("a", a), output_of("b", b), output_of("c", c)],
        requested=[RequestedOutput("c", False), RequestedOutput("a", True)],
        binary_default=False,
    )
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["model_name"] == "m"
    assert header["model_version"] == "3"
    assert header["id"] == "abc"
    assert [o["name"] for o in header["outputs"]] == ["c", "a"]
    # Invalid UTF-8 in a JSON BYTES output is replaced, not an error.
    assert header["outputs"][0] == {
        "name": "c",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["\ufffd\ufffd", "ok"],
    }
    assert header["outputs"][1] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {"binary_data_size": 24},
    }
    assert body[header_length:] == a.tobytes()
    result = parse(body, header_length)
    np.testing.assert_array_equal(result.as_numpy("a"), a)
    assert result.as_numpy("b") is None


def test_response_all_outputs_binary_default() -> None:
    a = np.arange(3, dtype=np.int32)
    b = np.array([b"x"], dtype=object)
    outputs = [output_of("a", a), output_of("b", b)]
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=outputs,
        requested=None,
        binary_default=True,
    )
    assert header_length is not None
    assert "id" not in json.loads(body[:header_length])
    assert body[header_length:] == a.tobytes() + serialize_bytes_tensor([b"x"])
    result = parse(body, header_length)
    np.testing.assert_array_equal(result.as_numpy("a"), a)
    assert result.as_numpy("b").tolist() == [b"x"]

    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=outputs,
        requested=None,
        binary_default=False,
    )
    assert header_length is None
    assert json.loads(body)["outputs"][0]["data"] == [0, 1, 2]


def test_response_empty_tensors() -> None:
    for binary in (True, False):
        body, header_length = encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[
                output_of("f", np.zeros((0, 4), np.float32)),
                output_of("s", np.array([], dtype=object)),
            ],
            requested=None,
            binary_default=binary,
        )
        result = parse(body, header_length)
        assert result.as_numpy("f").shape == (0, 4)
        assert result.as_numpy("s").shape == (0,)


def test_response_nan_becomes_null_and_reads_back_as_nan() -> None:
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[output_of("f", np.array([np.nan, 1.0], np.float32))],
        requested=None,
        binary_default=False,
    )
    assert json.loads(body)["outputs"][0]["data"] == [None, 1.0]
    got = parse(body, header_length).as_numpy("f")
    assert np.isnan(got[0])
    assert got[1] == 1.0


def test_response_unknown_requested_output() -> None:
    with pytest.raises(BadRequest, match="requested output 'nope'"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[output_of("a", np.zeros(1, np.float32))],
            requested=[RequestedOutput("nope", True)],
            binary_default=False,
        )


def test_response_raw_size_mismatch_is_a_server_error() -> None:
    tensor = OutputTensor("a", "FP32", (3,), b"\0" * 8)
    with pytest.raises(InferboxError, match="has 8 bytes but FP32 shape \\[3\\] needs 12") as info:
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[tensor],
            requested=None,
            binary_default=False,
        )
    assert info.value.status == 500


def test_request_to_response_round_trip_via_tritonclient() -> None:
    arrays = {dt: sample(dt) for dt in SUPPORTED_DATATYPES}
    body, json_size = triton_request(arrays, binary=True)
    req = decode_infer_request(body, json_size, LIMITS)
    outputs = [OutputTensor(t.name, t.datatype, t.shape, t.raw) for t in req.inputs]
    body, header_length = encode_infer_response(
        model_name="echo",
        model_version="1",
        request_id=req.id,
        outputs=outputs,
        requested=req.outputs,
        binary_default=req.binary_output_default,
    )
    result = parse(body, header_length)
    for name, arr in arrays.items():
        got = result.as_numpy(name)
        assert got.tolist() == arr.tolist(), name
