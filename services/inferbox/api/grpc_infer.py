"""``ModelInfer`` of the Open Inference Protocol's gRPC binding, served on the API's fast path.

gRPC is HTTP/2, which the API's server (uvicorn) does not speak, but nginx does: it terminates
the client's HTTP/2 (TLS, one connection carrying many concurrent calls, as ``tritonclient.grpc``
uses it) and passes ``POST /inference.GRPCInferenceService/ModelInfer`` to the API as an
ordinary HTTP/1.1 request on its kept-alive connections. The body is the call's one
length-prefixed ``ModelInferRequest``; the answer's body is one ``ModelInferResponse``. gRPC ends
a call with trailers (``grpc-status``, ``grpc-message``), which HTTP/1.1 without chunking has no
place for: the API sends them as the headers ``X-Grpc-Status`` and ``X-Grpc-Message``, and nginx
moves them into the HTTP/2 trailers (``add_trailer``, ``nginx/nginx.conf.template``).

So an inference call over gRPC costs what an HTTP call with binary tensors costs: the same
process, the same ``InferenceService``, key gate, limits, metrics and logs, with protobuf in
place of the binary-tensor codec, and none of grpcio's per-call cost. ``inferbox grpc`` keeps
serving every other RPC, and ``ModelInfer`` too for clients that reach it without nginx.

The model's name is inside the message, so the key is authenticated before the body is read
(it must be valid and have the ``infer`` scope; an anonymous client cannot make the API parse
anything), and the same record is checked again, with its limits taken, once the message names
the model, as the ``infer`` route declares.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from litestar.types import Receive, Send
from tritonclient.grpc import service_pb2

from inferbox.errors import BadRequest, InferboxError, error_headers
from inferbox.lanes.client import ClientGone
from inferbox.protocol.grpc_messages import (
    decode_request,
    encode_response,
    frame,
    status_code,
    status_message,
    timeout_s,
    unframe,
)
from inferbox.security.auth import Need

PATH = "/inference.GRPCInferenceService/ModelInfer"
"""The path an HTTP/2 gRPC call of ``ModelInfer`` arrives on (``/{service}/{method}``)."""

_GRPC = b"application/grpc"


class GRPC:
    """``ModelInfer`` relayed by nginx: a ``ModelInferRequest`` in, a ``ModelInferResponse`` (or
    a gRPC status) out."""

    @staticmethod
    async def run(call, request_id: str, receive: Receive, version: str | None) -> int:
        """Read, admit, resolve and run the call; the status answered (as HTTP would)."""
        gate = call.state.gate
        key = None
        if gate is not None:  # a valid key with the scope, before anything is read
            scope = call.fast_path.infer_access.scope
            key = await gate.authenticate(call.headers.get(b"authorization"), Need(scope))
        try:
            body = await call.read_body(receive)
        except ClientGone:
            return 499
        request = _parse(body)
        call.name = request.model_name
        await call.admit(key)  # the same key, now checked for the model it names
        spec = await call.resolve(request.model_version or None)
        state = call.state
        await state.directory.admit(spec)
        decoded = decode_request(request, state.limits)
        deadline = call.headers.get(b"grpc-timeout")
        if deadline is not None:
            # The client's own gRPC deadline bounds the call's deadline.
            remaining_us = max(int(timeout_s(deadline) * 1e6), 1)
            if decoded.timeout_us is None or decoded.timeout_us > remaining_us:
                decoded.timeout_us = remaining_us
        try:
            answer = await state.inference.infer(spec, decoded, request_id, call.key, receive)
        except ClientGone:
            return 499
        response = encode_response(spec.name, str(spec.version), request.id, answer.outputs)
        payload = frame(response.SerializeToString())
        headers = [
            (b"content-type", _GRPC),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-grpc-status", b"0"),
        ]
        if answer.cache is not None:
            headers.append((b"x-inferbox-cache", answer.cache.encode()))
        await call.send({"type": "http.response.start", "status": 200, "headers": headers})
        await call.send({"type": "http.response.body", "body": payload})
        return 200

    @staticmethod
    async def send_error(send: Send, exc: InferboxError, request_id: str) -> None:
        """The error as gRPC's status and message (the HTTP answer's message), with no message:
        HTTP status 200, as gRPC answers every call that reached its server."""
        headers = [
            (b"content-type", _GRPC),
            (b"content-length", b"0"),
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-grpc-status", str(status_code(exc.status)).encode()),
            (b"x-grpc-message", status_message(exc.message)),
        ]
        headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in error_headers(exc)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _parse(body: bytes) -> service_pb2.ModelInferRequest:
    try:
        return service_pb2.ModelInferRequest.FromString(unframe(body))
    except DecodeError:
        raise BadRequest("the gRPC message is not a ModelInferRequest") from None
