"""nginx's own errors on the gRPC routes reach gRPC clients as gRPC statuses.

A gRPC client reads no JSON body: a body too large, the per-address limit, an upstream that is
down or silent must end the call with the ``grpc-status`` the API would give for the same
condition (``inferbox.protocol.grpc_messages``), not an HTTP status the client has to guess
from. nginx here fronts an API that accepts connections but never answers and a gRPC server
that is not there, so every answer below is nginx's own.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.gateway import Gateway, running_gateway
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

KEY = [("authorization", "Bearer ibx_anything.at-all")]


@pytest.fixture(scope="module")
def silent_api() -> Iterator[str]:
    """An address that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def edge(silent_api, tmp_path_factory, gateway_certs) -> Iterator[Gateway]:
    with running_gateway(
        silent_api,
        tmp_path_factory.mktemp("grpc-errors"),
        gateway_certs,
        grpc_upstream=f"127.0.0.1:{free_port()}",
        max_body_size="4k",
        rate="1r/m",
        burst="1",
        proxy_timeout="1s",
    ) as running:
        yield running


@pytest.fixture
def stub(edge) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    credentials = grpc.ssl_channel_credentials(edge.ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{edge.https_port}", credentials) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _request(rows: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(np.ones((rows, 16), np.float32).tobytes())
    return request


def _refused(rpc, request, metadata=KEY) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        rpc(request, metadata=metadata, timeout=30)
    return refused.value


def test_a_body_too_large_is_resource_exhausted(stub):
    error = _refused(stub.ModelInfer, _request(rows=256))  # 16 KiB over a 4 KiB limit
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "request body too large"
    assert dict(error.trailing_metadata())["x-request-id"]  # a trailers-only answer


def test_an_api_that_does_not_answer_is_deadline_exceeded(stub):
    error = _refused(stub.ModelInfer, _request(rows=1))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "the inference service did not answer in time"


def test_a_grpc_server_that_is_down_is_unavailable(stub):
    error = _refused(stub.ServerLive, service_pb2.ServerLiveRequest())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the inference service is unreachable"


def test_the_per_address_limit_is_resource_exhausted(stub):
    # Calls without a key are limited per address (1 a minute and a burst of 1 here).
    errors = [_refused(stub.ServerLive, service_pb2.ServerLiveRequest(), []) for _ in range(3)]
    assert errors[0].code() == grpc.StatusCode.UNAVAILABLE
    assert errors[-1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors[-1].details() == "too many requests from this address"
