"""``POST /v2/models/{name}[/versions/{version}]/infer``: the hot path, in front of Litestar.

Every synchronous inference crosses this code, so it is a plain ASGI app wrapped around the
Litestar application rather than a Litestar route: it skips routing, the signature model,
kwargs and response objects, and reads the body, validates, queues, waits and writes the
answer itself. Everything else goes to Litestar unchanged. Errors are ``InferboxError``s
rendered in the same ``{"error": ...}`` shape as the V2 routes.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import msgspec
import structlog
from litestar import Litestar
from litestar.types import Receive, Scope, Send

from inferbox.api.validation import check_request
from inferbox.errors import BadRequest, InferboxError, PayloadTooLarge, Unavailable
from inferbox.lanes.client import ClientGone
from inferbox.lanes.wire import CallHeader
from inferbox.protocol.codec import OutputTensor, decode_infer_request, encode_infer_response

# Triton's priority: 0 means "the default", 1 is the highest; larger numbers are lower.
HIGH_PRIORITY_MAX = 1

log = structlog.get_logger(__name__)

INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


async def _read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferenceFastPath:
    """ASGI app: serves inference calls itself and passes every other request to Litestar."""

    def __init__(self, app: Litestar):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/infer"):
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._serve(scope, receive, send, match["name"], match["version"])
                return
        await self.app(scope, receive, send)

    async def _serve(self, scope, receive, send, name: str, version: str | None) -> None:
        try:
            if scope["method"] != "POST":
                error = InferboxError("use POST for inference")
                error.status = 405
                raise error
            await infer(self.app.state, scope, receive, send, name, version)
        except InferboxError as exc:
            await send_error(send, exc)
        except Exception:
            log.exception("unhandled error", path=scope["path"])
            await send_error(send, InferboxError("internal error"))


async def send_error(send: Send, exc: InferboxError) -> None:
    """Answer ``{"error": ...}`` with the error's status (and ``Retry-After`` where set)."""
    body = msgspec.json.encode({"error": exc.message})
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def infer(state, scope: Scope, receive: Receive, send: Send, name: str, version: str | None):
    """Run a model on JSON or binary tensors; answer JSON or binary outputs."""
    headers = dict(scope["headers"])
    spec = await state.directory.resolve(name, version)
    available = await state.directory.availability(spec)
    if not available.ready:
        raise Unavailable(f"model {name!r} version {spec.version} is not ready: {available.reason}")
    try:
        body = await _read_body(
            receive, state.settings.max_request_bytes, headers.get(b"content-length")
        )
    except ClientGone:
        return
    header_length = headers.get(b"inference-header-content-length")
    if header_length is not None:
        if not header_length.isdigit():
            raise BadRequest("Inference-Header-Content-Length must be an integer")
        header_length = int(header_length)
    decoded = decode_infer_request(body, header_length, state.limits)
    metas, raws, outputs = check_request(decoded, spec)

    if decoded.timeout_us:
        timeout_s = decoded.timeout_us / 1e6
    else:
        timeout_s = (spec.config.timeout_ms or state.settings.default_timeout_ms) / 1000
    lane = "hi" if (decoded.priority or 0) <= HIGH_PRIORITY_MAX else "lo"
    request_id = headers.get(b"x-request-id")
    request_id = request_id.decode("latin-1") if request_id else uuid.uuid4().hex
    call = CallHeader(
        channel="",
        token="",
        deadline=time.time() + timeout_s,
        inputs=metas,
        outputs=outputs,
        request_id=request_id,
    )
    # After the body, the next ASGI message can only be the client leaving.
    disconnected = asyncio.ensure_future(receive())
    try:
        reply, out_raws = await state.lane.call(
            state.redis_keys.stream(spec.name, spec.version, lane),
            call,
            raws,
            max_queue=spec.config.max_queue_size,
            timeout_s=timeout_s,
            disconnected=disconnected,
        )
    except ClientGone:
        return
    finally:
        disconnected.cancel()
    tensors = [
        OutputTensor(meta.name, meta.datatype, tuple(meta.shape), raw)
        for meta, raw in zip(reply.outputs, out_raws, strict=True)
    ]
    payload, json_length = encode_infer_response(
        model_name=spec.name,
        model_version=str(spec.version),
        request_id=decoded.id,
        outputs=tensors,
        requested=decoded.outputs,
        binary_default=decoded.binary_output_default,
    )
    response_headers = [
        (b"content-type", _JSON if json_length is None else _BINARY),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", request_id.encode("latin-1")),
    ]
    if json_length is not None:
        response_headers.append((b"inference-header-content-length", str(json_length).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": response_headers})
    await send({"type": "http.response.body", "body": payload})
