"""``ModelInfer`` relayed by nginx to the API's fast path: hostile and malformed calls.

The relay reads a gRPC message out of an HTTP/1.1 body and answers the call's status in headers
that nginx turns into trailers: what a client that is not ``tritonclient`` can send it is
tried here, straight to the API (as nginx would pass it) and through nginx with grpcio.
"""

from __future__ import annotations

import http.client

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferbox.client import InferboxClient
from inferbox.protocol.grpc_messages import frame
from tests.support.path_variants import variants

pytestmark = pytest.mark.integration

PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC = {"content-type": "application/grpc", "te": "trailers"}


@pytest.fixture(scope="module")
def served(triton_appliance):
    return triton_appliance


@pytest.fixture(scope="module")
def auth(served):
    return {"authorization": f"Bearer {served.appliance.api_key}"}


def _request(model: str = "batched", rows: int = 1) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id="relay")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(np.ones((rows, 16), np.float32).tobytes())
    return request


def _post(served, body: bytes, **headers: str) -> httpx.Response:
    """A call as nginx passes it to the API: HTTP/1.1, the gRPC message as the body."""
    return httpx.post(
        f"{served.appliance.url}{PATH}", content=body, headers={**GRPC, **headers}, timeout=30
    )


def _status(response: httpx.Response) -> tuple[int, str]:
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc"
    return int(response.headers["x-grpc-status"]), response.headers.get("x-grpc-message", "")


def test_a_call_as_nginx_passes_it(served, auth):
    response = _post(served, frame(_request().SerializeToString()), **auth)
    assert _status(response) == (0, "")
    answer = service_pb2.ModelInferResponse.FromString(response.content[5:])
    assert answer.id == "relay" and answer.model_name == "batched"
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).shape == (4,)


def test_no_key_is_refused_before_the_message_is_read(served):
    # Not a message at all: an anonymous caller learns nothing of how it would be parsed.
    code, message = _status(_post(served, b"\x00\x00\x00\x00\x09garbage"))
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "API key is required" in message
    bad_key = {"authorization": "Bearer ibx_nope.nope"}
    code, _ = _status(_post(served, frame(_request().SerializeToString()), **bad_key))
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "shorter than its 5-byte prefix"),
        (b"\x00\x00\x00\x01\x00" + b"x" * 10, "says 256 bytes but 10 arrived"),
        (frame(b"\xff\xff\xff\xff"), "is not a ModelInferRequest"),
    ],
)
def test_a_malformed_message_is_invalid_argument(served, auth, body, message):
    code, text = _status(_post(served, body, **auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message in text


def test_a_compressed_message_is_unimplemented(served, auth):
    body = b"\x01" + frame(b"gzip")[1:]
    code, text = _status(_post(served, body, **auth))
    assert code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "uncompressed" in text


def test_get_is_refused(served, auth):
    response = httpx.get(f"{served.appliance.url}{PATH}", headers={**GRPC, **auth})
    assert _status(response)[0] == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_a_malformed_deadline_is_invalid_argument(served, auth):
    body = frame(_request().SerializeToString())
    code, text = _status(_post(served, body, **auth, **{"grpc-timeout": "soon"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "is not a gRPC timeout" in text


def test_the_client_deadline_bounds_the_call(served, auth):
    body = frame(_request(rows=8).SerializeToString())
    code, text = _status(_post(served, body, **auth, **{"grpc-timeout": "1n"}))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], text


def test_messages_are_percent_encoded(served, auth):
    request = _request()
    request.inputs[0].name = "é%\nx"
    code, text = _status(_post(served, frame(request.SerializeToString()), **auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(32 <= ord(c) < 127 for c in text) and "%25" in text


def _gateway_channel(gateway, **options) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(gateway.ca.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{gateway.https_port}", credentials, **options)


def test_a_key_for_another_model_through_nginx(served, triton_gateway):
    with InferboxClient(served.appliance.url, api_key=served.appliance.api_key) as admin:
        key = admin.create_key("relay", ["infer"], allowed_models=["rows"])["key"]
    with grpcclient.InferenceServerClient(
        f"127.0.0.1:{triton_gateway.https_port}", ssl=True, root_certificates=str(triton_gateway.ca)
    ) as client:
        item = grpcclient.InferInput("x", [1, 16], "FP32")
        item.set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("batched", [item], headers={"authorization": f"Bearer {key}"})
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "batched" in refused.value.message()
        rows = client.infer("rows", [item], headers={"authorization": f"Bearer {key}"})
        assert rows.as_numpy("y") is not None


def test_a_compressed_call_through_nginx_is_unimplemented(auth, triton_gateway):
    with _gateway_channel(triton_gateway, compression=grpc.Compression.Gzip) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(_request(), metadata=list(auth.items()))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "uncompressed" in refused.value.details()


def test_an_error_keeps_its_request_id_and_the_next_call_works(auth, triton_gateway):
    """An error ends its call only: the same HTTP/2 connection serves the next one."""
    with _gateway_channel(triton_gateway) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        bad = _request()
        bad.inputs[0].shape[1] = 15
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(bad, metadata=list(auth.items()))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shape [1, 15] needs 60" in refused.value.details()
        assert dict(refused.value.initial_metadata())["x-request-id"]
        answer = stub.ModelInfer(_request(), metadata=list(auth.items()))
        assert answer.id == "relay"


def _limited_key(served) -> str:
    """A key with the ``infer`` scope for the model ``rows`` only."""
    with InferboxClient(served.appliance.url, api_key=served.appliance.api_key) as admin:
        return admin.create_key("relay-variants", ["infer"], allowed_models=["rows"])["key"]


def test_a_path_variant_never_reaches_the_relay_with_another_decision(served, triton_gateway):
    """Spellings of the relay's path, with a key for another model: straight at the API each is
    refused (400 not canonical, a routing 404/405) or gets the canonical path's
    ``PERMISSION_DENIED``; through nginx (HTTP/2, gRPC) none answers the call."""
    key = _limited_key(served)
    body = frame(_request().SerializeToString())
    host, port = served.appliance.url.removeprefix("http://").split(":")
    for path in [PATH, *variants(PATH)]:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(
                "POST", path, body=body, headers={**GRPC, "authorization": f"Bearer {key}"}
            )
            response = conn.getresponse()
            response.read()
            status, grpc_status = response.status, response.getheader("x-grpc-status")
        finally:
            conn.close()
        if status == 200:
            assert grpc_status == str(grpc.StatusCode.PERMISSION_DENIED.value[0]), path
        else:
            assert status in (400, 404, 405), (path, status)
    with _gateway_channel(triton_gateway) as channel:
        for path in [PATH, *variants(PATH)]:
            if "?" in path or "\\" in path:
                continue  # not a gRPC method name a client can send
            call = channel.unary_unary(
                path,
                request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                response_deserializer=service_pb2.ModelInferResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                call(_request(), metadata=[("authorization", f"Bearer {key}")], timeout=30)
            assert refused.value.code() != grpc.StatusCode.OK, path
            if path == PATH:
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
