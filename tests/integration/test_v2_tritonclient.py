"""The V2 endpoints through the stock ``tritonclient`` (JSON and binary, sync and async)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from inferbox.testing.onnx_models import IDENTITY_TYPES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(appliance):
    with appliance.triton(concurrency=8, connection_timeout=30, network_timeout=30) as c:
        yield c


def _add_sub_inputs(a: np.ndarray, b: np.ndarray, binary: bool) -> list[triton.InferInput]:
    inputs = [
        triton.InferInput("INPUT0", list(a.shape), "FP32"),
        triton.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "inferbox"
    assert set(meta["extensions"]) == {
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
        "statistics",
    }


def test_model_metadata_and_config(client):
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}]
    assert "dynamic_batching" in config
    fixed = client.get_model_config("fixed", "1")
    assert fixed["max_batch_size"] == 0
    assert fixed["input"][0]["dims"] == [2, 3]
    assert "dynamic_batching" not in fixed


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_add_sub(client, binary):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    outputs = [
        triton.InferRequestedOutput("OUTPUT0", binary_data=binary),
        triton.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer(
        "add_sub", _add_sub_inputs(a, b, binary), outputs=outputs, request_id="r-1"
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "r-1"
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == "1"


def test_requested_outputs_filter_the_response(client):
    a = np.ones((1, 4), dtype=np.float32)
    result = client.infer(
        "add_sub",
        _add_sub_inputs(a, a, True),
        outputs=[triton.InferRequestedOutput("OUTPUT1", binary_data=False)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 4), np.float32))


def _identity_inputs(binary: bool) -> tuple[list[triton.InferInput], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {}
    for name in IDENTITY_TYPES:
        if name == "BYTES":
            arrays[name] = np.array([["héllo", "", "x" * 300], ["a", "b", "c"]], dtype=np.object_)
        elif name == "BOOL":
            arrays[name] = rng.integers(0, 2, (2, 3)).astype(bool)
        elif name.startswith("FP"):
            arrays[name] = rng.standard_normal((2, 3)).astype(triton.triton_to_np_dtype(name))
        else:
            info = np.iinfo(triton.triton_to_np_dtype(name))
            arrays[name] = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=info.dtype)
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs, arrays


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(client, binary):
    inputs, arrays = _identity_inputs(binary)
    outputs = [triton.InferRequestedOutput(f"out_{n}", binary_data=binary) for n in arrays]
    result = client.infer("identity", inputs, outputs=outputs)
    for name, array in arrays.items():
        got = result.as_numpy(f"out_{name}")
        if name == "BYTES":
            assert [x.decode() if isinstance(x, bytes) else x for x in got.ravel()] == list(
                array.ravel()
            )
        else:
            assert got.dtype == array.dtype, name
            np.testing.assert_array_equal(got, array, err_msg=name)


def test_async_infer(client):
    a = np.full((1, 4), 3, dtype=np.float32)
    pending = [client.async_infer("add_sub", _add_sub_inputs(a * i, a, True)) for i in range(8)]
    for i, handle in enumerate(pending):
        np.testing.assert_array_equal(handle.get_result().as_numpy("OUTPUT0"), a * i + a)


def test_fifty_concurrent_requests_get_exactly_their_rows(appliance, client, model_repo):
    session = ort.InferenceSession(str(model_repo / "mlp" / "1" / "model.onnx"))
    rng = np.random.default_rng(3)
    batches = [
        rng.standard_normal((int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(50)
    ]

    def call(x: np.ndarray, binary: bool) -> np.ndarray:
        with appliance.triton() as own:
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            return own.infer("mlp", [tensor]).as_numpy("y")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, batches, [i % 2 == 0 for i in range(50)]))
    for x, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_unversioned_calls_use_the_newest_ready_version(client, model_repo):
    x = np.ones((1, 64), np.float32)
    tensor = triton.InferInput("x", [1, 64], "FP32")
    tensor.set_data_from_numpy(x)
    newest = ort.InferenceSession(str(model_repo / "versions" / "2" / "model.onnx")).run(
        None, {"x": x}
    )[0]
    oldest = ort.InferenceSession(str(model_repo / "versions" / "1" / "model.onnx")).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(client.infer("versions", [tensor]).as_numpy("y"), newest, rtol=1e-5)
    np.testing.assert_allclose(
        client.infer("versions", [tensor], model_version="1").as_numpy("y"), oldest, rtol=1e-5
    )
    assert client.get_model_metadata("versions")["versions"] == ["1", "2"]


def test_model_without_batch_dimension(client):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = triton.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("fixed", [tensor]).as_numpy("y"), x * 2)
