"""A Triton repository imported and served over gRPC and HTTP with the stock clients.

Results are compared with what ONNX Runtime itself gives for the same model file.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferbox.testing.onnx_models import IDENTITY_TYPES
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(triton_appliance):
    return triton_appliance


@pytest.fixture(scope="module")
def auth(served):
    return {"authorization": f"Bearer {served.appliance.api_key}"}


class Endpoint:
    """Where a gRPC client connects: ``inferbox grpc`` itself (every RPC), or nginx over TLS,
    which relays ``ModelInfer`` to the API's fast path and every other RPC to ``inferbox grpc``."""

    def __init__(self, served, gateway=None) -> None:
        self.served = served
        self.gateway = gateway
        if gateway is None:
            self.target = served.grpc_url
        else:
            self.target = f"127.0.0.1:{gateway.https_port}"

    def client(self, module=grpcclient):
        """A ``tritonclient`` client (``tritonclient.grpc`` or its ``aio``) of this endpoint."""
        if self.gateway is None:
            return module.InferenceServerClient(self.target)
        return module.InferenceServerClient(
            self.target, ssl=True, root_certificates=str(self.gateway.ca)
        )

    def channel(self) -> grpc.Channel:
        """A plain grpcio channel to this endpoint."""
        if self.gateway is None:
            return grpc.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(self.gateway.ca.read_bytes())
        return grpc.secure_channel(self.target, credentials)

    def metrics_url(self) -> str:
        """The metrics of the process that serves ``ModelInfer`` here."""
        if self.gateway is None:
            return self.served.grpc_metrics_url
        return f"{self.served.appliance.url}/metrics"


@pytest.fixture(scope="module", params=["grpc-server", "nginx"])
def endpoint(request, served):
    if request.param == "grpc-server":
        return Endpoint(served)
    return Endpoint(served, request.getfixturevalue("triton_gateway"))


@pytest.fixture(scope="module")
def client(endpoint):
    with endpoint.client() as c:
        yield c


def _ort(repo, name: str, version: int, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repo / name / str(version) / "model.onnx"))
    return session.run(None, feeds)


def _numpy(datatype: str, shape) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        return np.array([f"é{i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = {
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }[datatype]
    return rng.integers(0, 100, shape).astype(dtype)


def test_import_reports_what_is_not_honoured(served):
    report = served.import_report
    assert "batched/1: imported as version 1; config.pbtxt fields not honoured: " in report
    assert "parameters[execution_mode]" in report and "response_cache" not in report
    assert (
        "declared/1: imported as version 1 (unloaded: outside config.pbtxt's version_policy)"
        in (report)
    )
    assert "wrongdims/1: rejected: input 'x': config.pbtxt dims [15] do not match" in report
    assert "notonnx: skipped (config.pbtxt platform 'tensorrt_plan'" in report


def test_server_calls(client, auth):
    assert client.is_server_live(headers=auth)
    assert client.is_server_ready(headers=auth)
    meta = client.get_server_metadata(headers=auth, as_json=True)
    assert meta["name"] == "inferbox"
    assert "model_repository" in meta["extensions"]


def test_model_metadata_ready_and_config(client, auth, served):
    assert client.is_model_ready("rows", headers=auth)
    meta = client.get_model_metadata("rows", headers=auth, as_json=True)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "16"]}]
    config = client.get_model_config("batched", headers=auth, as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["input"][0]["dims"] == ["16"]
    not_honoured = config["parameters"]["inferbox_not_honoured"]["string_value"]
    assert "parameters[execution_mode]" in not_honoured and "response_cache" not in not_honoured
    assert config["response_cache"] == {"enable": True}
    # The same answer over HTTP, in Triton's JSON form.
    with httpclient.InferenceServerClient(served.appliance.url.removeprefix("http://")) as http:
        body = http.get_model_config("batched", headers={"Authorization": auth["authorization"]})
    assert body["max_batch_size"] == 8 and body["input"][0]["dims"] == [16]
    assert body["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 100


def test_65536_rows_without_server_batching(client, auth, served):
    x = np.random.default_rng(1).standard_normal((65_536, 16)).astype(np.float32)
    inputs = [grpcclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = client.infer("rows", inputs, headers=auth)
    (want,) = _ort(served.repo, "rows", 1, {"x": x})
    np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5, atol=1e-5)
    # And over HTTP with binary tensors.
    with httpclient.InferenceServerClient(
        served.appliance.url.removeprefix("http://"), network_timeout=60
    ) as http:
        h = [httpclient.InferInput("x", list(x.shape), "FP32")]
        h[0].set_data_from_numpy(x, binary_data=True)
        answer = http.infer("rows", h, headers={"Authorization": auth["authorization"]})
    np.testing.assert_allclose(answer.as_numpy("y"), want, rtol=1e-5, atol=1e-5)


def test_reshape_and_declared_outputs(client, auth, served):
    x = np.random.default_rng(2).standard_normal((3, 4, 4)).astype(np.float32)
    inputs = [grpcclient.InferInput("x", [3, 4, 4], "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = client.infer("reshaped", inputs, headers=auth)
    (want,) = _ort(served.repo, "reshaped", 1, {"x": x.reshape(3, 16)})
    np.testing.assert_allclose(result.as_numpy("y"), want.reshape(3, 2, 2), rtol=1e-5)
    a = np.ones((2, 4), np.float32)
    pair = [grpcclient.InferInput(n, [2, 4], "FP32") for n in ("INPUT0", "INPUT1")]
    for item in pair:
        item.set_data_from_numpy(a)
    answer = client.infer("declared", pair, headers=auth)
    assert [o["name"] for o in answer.get_response(as_json=True)["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT1"), a - a)
    assert answer.get_response().model_version == "2"


_FIELDS = {
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


def _check_identity(values: dict, got) -> None:
    for datatype, value in values.items():
        answer = got(f"out_{datatype}")
        if datatype == "BYTES":
            assert [v.decode() for v in answer.ravel()] == list(value.ravel())
        else:
            assert answer.dtype == value.dtype
            np.testing.assert_array_equal(answer, value)


def test_every_datatype_raw(client, auth):
    values = {datatype: _numpy(datatype, (2, 3)) for datatype in IDENTITY_TYPES}
    inputs = []
    for datatype, value in values.items():
        item = grpcclient.InferInput(f"in_{datatype}", [2, 3], datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    result = client.infer("alltypes", inputs, headers=auth)
    _check_identity(values, result.as_numpy)


def test_every_datatype_typed_contents(endpoint, auth):
    """Typed ``contents`` (what KServe's gRPC clients send) for every datatype they can carry."""
    values = {t: _numpy(t, (2, 3)) for t in IDENTITY_TYPES if t != "FP16"}
    request = service_pb2.ModelInferRequest(model_name="typed", id="typed")
    for datatype, value in values.items():
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[2, 3])
        flat = value.ravel().tolist()
        if datatype == "BYTES":
            flat = [v.encode() for v in flat]
        getattr(tensor.contents, _FIELDS[datatype]).extend(flat)
    with endpoint.channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=list(auth.items()))
        result = grpcclient.InferResult(response)
        assert response.id == "typed"
        _check_identity(values, result.as_numpy)
        fp16 = service_pb2.ModelInferRequest(model_name="alltypes")
        tensor = fp16.inputs.add(name="in_FP16", datatype="FP16", shape=[1])
        tensor.contents.fp32_contents.append(1.0)
        with pytest.raises(grpc.RpcError) as raw_only:
            stub.ModelInfer(fp16, metadata=list(auth.items()))
    assert raw_only.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        raw_only.value.details() == "input 'in_FP16': FP16 data must be sent in raw_input_contents"
    )


def test_config_pbtxt_response_cache_answers_grpc_and_http(auth, served, endpoint):
    """``response_cache { enable: true }`` in config.pbtxt: a repeated call is a hit, over gRPC
    (``x-inferbox-cache`` initial metadata) and HTTP alike, with its own id."""
    x = np.random.default_rng(uuid.uuid4().int).standard_normal((2, 16)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="batched", id="first")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 16])
    request.raw_input_contents.append(x.tobytes())
    with endpoint.channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first, call = stub.ModelInfer.with_call(request, metadata=list(auth.items()))
        assert dict(call.initial_metadata())["x-inferbox-cache"] == "miss"
        request.id = "second"
        second, call = stub.ModelInfer.with_call(request, metadata=list(auth.items()))
        assert dict(call.initial_metadata())["x-inferbox-cache"] == "hit"
        assert second.id == "second" and first.id == "first"
        assert second.raw_output_contents == first.raw_output_contents
        # A model whose config.pbtxt does not enable it says nothing.
        rows = service_pb2.ModelInferRequest(model_name="rows")
        rows.inputs.add(name="x", datatype="FP32", shape=[2, 16])
        rows.raw_input_contents.append(x.tobytes())
        _, call = stub.ModelInfer.with_call(rows, metadata=list(auth.items()))
        assert "x-inferbox-cache" not in dict(call.initial_metadata())
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}]
    }
    response = httpx.post(
        f"{served.appliance.url}/v2/models/batched/infer",
        json=body,
        headers={"Authorization": auth["authorization"]},
    )
    assert response.headers["x-inferbox-cache"] == "hit"
    got = np.asarray(response.json()["outputs"][0]["data"], np.float32)
    assert got.tobytes() == first.raw_output_contents[0]


def test_large_tensor(client, auth):
    value = np.arange(4_000_000, dtype=np.float32).reshape(1, -1)  # 16 MB
    item = grpcclient.InferInput("in_FP32", list(value.shape), "FP32")
    item.set_data_from_numpy(value)
    result = client.infer("dynamic", [item], headers=auth)
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), value)


def test_errors_carry_the_http_messages(client, served):
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("rows")
    assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
    key = {"authorization": f"Bearer {served.appliance.api_key}"}
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope", headers=key)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with (
        httpclient.InferenceServerClient(served.appliance.url.removeprefix("http://")) as http,
        pytest.raises(InferenceServerException) as http_unknown,
    ):
        http.get_model_metadata("nope", headers={"Authorization": key["authorization"]})
    assert unknown.value.message() == http_unknown.value.message()
    item = grpcclient.InferInput("x", [1, 15], "FP32")
    item.set_data_from_numpy(np.zeros((1, 15), np.float32))
    with pytest.raises(InferenceServerException) as bad:
        client.infer("batched", [item], headers=key)
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "dimension 1 must be 16" in bad.value.message()
    big = grpcclient.InferInput("x", [9, 16], "FP32")
    big.set_data_from_numpy(np.zeros((9, 16), np.float32))
    with pytest.raises(InferenceServerException, match="this model takes 1 to 8"):
        client.infer("batched", [big], headers=key)


def test_repository_index_unload_and_load(client, auth):
    index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
    states = {(m["name"], m.get("version")): m.get("state") for m in index}
    assert states[("declared", "1")] == "UNLOADED"
    assert states[("declared", "2")] == "READY"

    def state(name):
        index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
        return {m["name"]: m.get("state") for m in index}[name]

    client.unload_model("reshaped", headers=auth)
    wait_for(lambda: state("reshaped") == "UNLOADED", 15, "reshaped to be unloaded")
    client.load_model("reshaped", headers=auth)
    wait_for(lambda: state("reshaped") == "READY", 30, "reshaped to be loaded again")


def test_aio_concurrency(served, endpoint, auth):
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(64)]

    async def run():
        async with endpoint.client(grpcaio) as aio:

            async def one(x):
                item = grpcaio.InferInput("x", [1, 16], "FP32")
                item.set_data_from_numpy(x)
                result = await aio.infer("batched", [item], headers=auth)
                return result.as_numpy("y")

            return await asyncio.gather(*(one(x) for x in rows))

    answers = asyncio.run(run())
    (want,) = _ort(served.repo, "batched", 2, {"x": np.concatenate(rows)})
    np.testing.assert_allclose(np.concatenate(answers), want, rtol=1e-5, atol=1e-5)


def test_stream_infer_answers_in_order_and_survives_an_error(served, auth):
    answers = []
    x = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    with grpcclient.InferenceServerClient(served.grpc_url) as client:
        client.start_stream(
            callback=lambda result, error: answers.append((result, error)), headers=auth
        )
        for index, width in enumerate((16, 15, 16)):
            item = grpcclient.InferInput("x", [2, width], "FP32")
            item.set_data_from_numpy(x[:, :width].copy())
            client.async_stream_infer("batched", [item], request_id=str(index))
        client.stop_stream()
    assert len(answers) == 3
    (want,) = _ort(served.repo, "batched", 2, {"x": x})
    first, second, third = answers
    assert first[1] is None and first[0].get_response().id == "0"
    np.testing.assert_allclose(first[0].as_numpy("y"), want, rtol=1e-5, atol=1e-5)
    assert second[0] is None and "dimension 1 must be 16" in second[1].message()
    assert third[1] is None and third[0].get_response().id == "2"


def _served_calls(url: str) -> float:
    """``inferbox_requests_total`` of the model ``batched`` answered 200, from a metrics page."""
    text = httpx.get(url).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("inferbox_requests_total{")
        and 'model="batched"' in line
        and 'status="200"' in line
    )


def test_calls_are_counted_like_http_ones(endpoint, client, auth):
    """Counted by the process that served them: ``inferbox grpc``, or through nginx the API
    (the relay), and not ``inferbox grpc``."""
    grpc_server = endpoint.served.grpc_metrics_url
    before, grpc_before = _served_calls(endpoint.metrics_url()), _served_calls(grpc_server)
    item = grpcclient.InferInput("x", [1, 16], "FP32")
    item.set_data_from_numpy(np.zeros((1, 16), np.float32))
    for _ in range(3):
        client.infer("batched", [item], headers=auth)
    wait_for(
        lambda: _served_calls(endpoint.metrics_url()) >= before + 3, 10, "the calls to be counted"
    )
    if endpoint.gateway is not None:
        assert _served_calls(grpc_server) == grpc_before


def _counted(document: dict) -> tuple[int, int, int]:
    """Rows, successful requests and batches in a one-version statistics document (protobuf's
    JSON form: 64-bit numbers as strings, zeros left out)."""
    (entry,) = document["model_stats"]
    success = entry.get("inference_stats", {}).get("success", {})
    return (
        int(entry.get("inference_count", 0)),
        int(success.get("count", 0)),
        int(entry.get("execution_count", 0)),
    )


def test_statistics_count_the_calls_over_grpc_and_http(client, auth, served):
    def stats():
        return client.get_inference_statistics("batched", "1", headers=auth, as_json=True)

    rows, calls, batches = _counted(stats())
    rng = np.random.default_rng()
    for _ in range(4):  # random inputs: the response cache (on for this model) never answers
        item = grpcclient.InferInput("x", [3, 16], "FP32")
        item.set_data_from_numpy(rng.standard_normal((3, 16)).astype(np.float32))
        client.infer("batched", [item], model_version="1", headers=auth)
    wait_for(
        lambda: _counted(stats())[:2] >= (rows + 12, calls + 4),
        15,
        "the calls to reach the statistics",
    )
    assert _counted(stats())[2] > batches
    (entry,) = stats()["model_stats"]
    assert entry["name"] == "batched" and entry["version"] == "1"
    assert int(entry["inference_stats"]["compute_infer"]["ns"]) > 0
    assert entry["batch_stats"] and int(entry["last_inference"]) > 0
    # Every model the key may call, and the same counts over HTTP in Triton's JSON form.
    every = client.get_inference_statistics("", headers=auth, as_json=True)["model_stats"]
    assert {"batched", "rows"} <= {e["name"] for e in every}
    with httpclient.InferenceServerClient(served.appliance.url.removeprefix("http://")) as http:
        body = http.get_inference_statistics(
            "batched", "1", headers={"Authorization": auth["authorization"]}
        )
    (over_http,) = body["model_stats"]
    assert over_http["inference_count"] >= rows + 12
    assert over_http["inference_stats"]["success"]["count"] >= calls + 4
    with pytest.raises(InferenceServerException) as unknown:
        client.get_inference_statistics("absent", headers=auth)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
