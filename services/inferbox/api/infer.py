"""``POST /v2/models/{name}[/versions/{version}]/infer``: the hot path, in front of Litestar.

Every synchronous inference crosses this code, so it is a plain ASGI app wrapped around the
Litestar application rather than a Litestar route: it skips routing, the signature model,
kwargs and response objects, and reads the body, validates, queues, waits and writes the
answer itself. Everything else goes to Litestar unchanged. Errors are ``InferboxError``s
rendered in the same ``{"error": ...}`` shape as the V2 routes.

A path that is not canonical (``inferbox.security.access``) is refused with 400 here, before
anything else. Inference calls pass the API key ``Gate`` with the access the Litestar ``infer``
route declares (one declaration for both ways in); Litestar's routes pass it after routing
(``inferbox.api.gate``). On the hot path that is a dictionary lookup of the key (cached for a
second) and, for keys with limits, one Redis script call.

Observability on the hot path costs one counter increment, one histogram observation and an
integer in-flight count per request. Log lines (with ``request_id`` bound in structlog's
context) are written only for failures and requests slower than ``slow_request_ms``.
``/metrics`` (all API processes merged) is answered here too, never by Litestar.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time

import msgspec
import structlog
from litestar import Litestar
from litestar.types import Receive, Scope, Send

from inferbox.api import grpc_infer
from inferbox.cache.client import HIT, MISS
from inferbox.errors import (
    PROBLEM_JSON,
    BadRequest,
    InferboxError,
    PayloadTooLarge,
    error_headers,
    problem_body,
)
from inferbox.frontend.calls import log_failed_call, new_request_id
from inferbox.inference.validation import check_declared, check_request
from inferbox.lanes.client import ClientGone
from inferbox.observability import api_metrics
from inferbox.observability.exposition import render
from inferbox.protocol.codec import (
    decode_infer_request,
    encode_infer_response,
    peek_inputs,
)
from inferbox.security.access import NON_CANONICAL_MESSAGE, Access, access_of, canonical
from inferbox.security.keystore import KeyRecord

log = structlog.get_logger(__name__)

INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
INFER_ROUTE = "/v2/models/{name:str}/infer"
"""The Litestar route that declares the ``infer`` routes' access (and documents them)."""
_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_PROBLEM = PROBLEM_JSON.encode()


class SlotReleasingSend:
    """A ``send`` that gives a concurrency slot back just before the answer's last byte, so the
    client never sees its answer while its slot is still taken; ``release`` is idempotent."""

    __slots__ = ("_release", "_send")

    def __init__(self, send: Send, release) -> None:
        self._send = send
        self._release = release

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await self.release()
        await self._send(message)

    async def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()


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

    def __init__(self, app: Litestar, slow_request_ms: float = 0.0):
        self.app = app
        self.slow_s = slow_request_ms / 1000 if slow_request_ms > 0 else float("inf")
        self.in_flight = 0
        self.metrics = api_metrics.InferMetrics()
        self.sampler = api_metrics.InflightSampler(lambda: self.in_flight)
        app.on_startup.append(self.sampler.start)
        app.on_shutdown.append(self.sampler.stop)
        self.infer_access: Access = access_of(app.route_handler_method_map[INFER_ROUTE]["POST"])
        """The access the ``infer`` route declares (one declaration for both ways in)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if not canonical(scope.get("raw_path") or path.encode()):
                await self._not_canonical(scope, send)
                return
            if path.endswith("/infer"):
                match = INFER_PATH.fullmatch(path)
                if match is not None:
                    await self._serve(scope, receive, send, HTTP, match["name"], match["version"])
                    return
            elif path == grpc_infer.PATH:
                await self._serve(scope, receive, send, grpc_infer.GRPC)
                return
            elif path == "/metrics":
                await _send_metrics(send)
                return
            await self._other(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Litestar's routes (their keys are checked after routing, ``inferbox.api.gate``),
        counted by path template."""
        started = time.perf_counter()
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("path_template") or "unmatched"
            api_metrics.record_route(route, status, time.perf_counter() - started)

    @staticmethod
    async def _not_canonical(scope: Scope, send: Send) -> None:
        """400 for a path that is not in canonical form, before any routing or key check."""
        path = scope["path"]
        raw_id = dict(scope["headers"]).get(b"x-request-id")
        request_id = raw_id.decode("latin-1") if raw_id else new_request_id()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            log.info("non-canonical path refused", path=path[:200])
        api_metrics.REJECTIONS.labels("bad_request").inc()
        api_metrics.record_route("unmatched", 400, 0.0)
        problem_path = path if path.startswith("/v1") else None
        await send_error(send, BadRequest(NON_CANONICAL_MESSAGE), request_id, problem_path)

    async def _serve(self, scope, receive, send, protocol, name: str = "", version=None) -> None:
        """One inference call in ``protocol`` (``HTTP`` or ``GRPC``): admitted, run, answered,
        counted and logged the same way whichever protocol carried it."""
        started = time.perf_counter()
        self.in_flight += 1
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id")
        request_id = request_id.decode("latin-1") if request_id else new_request_id()
        call = Call(self, headers, send, name)
        status = 500
        try:
            if scope["method"] != "POST":
                error = InferboxError("use POST for inference")
                error.status = 405
                raise error
            status = await protocol.run(call, request_id, receive, version)
        except InferboxError as exc:
            status = exc.status
            key_id = call.key.id if call.key is not None else getattr(exc, "key_id", None)
            log_failed_call(
                exc, call.spec, call.name, request_id, time.perf_counter() - started, key_id
            )
            gate = self.app.state.gate
            if gate is not None and status in (401, 403):
                await gate.audit_refusal(exc, scope, headers, request_id)
            await protocol.send_error(call.send, exc, request_id)
        except Exception:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                log.exception("unhandled error", path=scope["path"])
            await protocol.send_error(call.send, InferboxError("internal error"), request_id)
        finally:
            if call.slot is not None:
                await call.send.release()
            self.in_flight -= 1
            elapsed = time.perf_counter() - started
            spec = call.spec
            if spec is None:
                self.metrics.record("", "", status, elapsed)
            else:
                self.metrics.record(spec.name, str(spec.version), status, elapsed)
        if elapsed > self.slow_s and spec is not None and status < 400:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                log.info(
                    "slow request",
                    model=spec.name,
                    version=spec.version,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    api_key_id=call.key.id if call.key is not None else None,
                )


class Call:
    """One inference call on the fast path: what is known of it so far (its model's name and
    spec, its key and concurrency slot) and the ``send`` its answer goes to."""

    __slots__ = ("fast_path", "headers", "key", "name", "send", "slot", "spec")

    def __init__(self, fast_path: InferenceFastPath, headers: dict[bytes, bytes], send, name: str):
        self.fast_path = fast_path
        self.headers = headers
        self.send = send
        self.name = name
        self.spec = self.key = self.slot = None

    @property
    def state(self):
        """The Litestar app's state: settings, limits, the directory, the inference service."""
        return self.fast_path.app.state

    async def admit(self, known: KeyRecord | None = None) -> None:
        """The key gate for the model ``name``, as the ``infer`` route declares (``known``: the
        key this call already authenticated); a slot taken is given back before the answer's
        last byte."""
        gate = self.state.gate
        if gate is None:
            return
        need = self.fast_path.infer_access.need({"name": self.name})
        self.key, self.slot = await gate.admit(self.headers.get(b"authorization"), need, known)
        if self.slot is not None:
            key, slot = self.key, self.slot
            self.send = SlotReleasingSend(self.send, lambda: gate.release(key, slot))

    async def resolve(self, version: str | None):
        """The model version the call runs on (``version``: a number, an alias, or None for
        the latest)."""
        self.spec = await self.state.directory.resolve(self.name, version)
        return self.spec

    async def read_body(self, receive: Receive) -> bytes:
        """The request body, at most ``max_request_bytes`` (413 past it)."""
        limit = self.state.settings.max_request_bytes
        return await _read_body(receive, limit, self.headers.get(b"content-length"))


class HTTP:
    """``POST /v2/models/{name}[/versions/{version}]/infer``: JSON or binary tensors."""

    @staticmethod
    async def run(call: Call, request_id: str, receive: Receive, version: str | None) -> int:
        """Admit, resolve and run the call; the status answered."""
        await call.admit()
        spec = await call.resolve(version)
        return await infer(call.state, spec, call.headers, request_id, receive, call.send, call.key)

    @staticmethod
    async def send_error(send: Send, exc: InferboxError, request_id: str) -> None:
        """``{"error": ...}`` with the error's status."""
        await send_error(send, exc, request_id)


async def _send_metrics(send: Send) -> None:
    body, content_type = await asyncio.to_thread(render)
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, exc: InferboxError, request_id: str | None = None, problem_path: str | None = None
) -> None:
    """Answer ``{"error": ...}`` with the error's status (and ``Retry-After`` where set), or
    RFC 9457 problem details for ``problem_path`` (a ``/v1`` path) when given."""
    if problem_path is None:
        body, content_type = msgspec.json.encode({"error": exc.message}), _JSON
    else:
        body, content_type = msgspec.json.encode(problem_body(exc, problem_path)), _PROBLEM
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in error_headers(exc)]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


OFF_LOOP_BYTES = 256 * 1024
"""Bodies from this size up are checked against the model first and decoded in a thread."""


def _decode_checked(body: bytes, header_length: int | None, limits, spec):
    decoded = decode_infer_request(body, header_length, limits)
    return decoded, check_request(decoded, spec)


async def infer(
    state,
    spec,
    headers: dict[bytes, bytes],
    request_id: str,
    receive: Receive,
    send: Send,
    key: KeyRecord | None = None,
) -> int:
    """Run a model on JSON or binary tensors (``InferenceService.infer``); answer JSON or
    binary outputs. Returns the status answered: 200, or 499 when the client left before its answer.
    """
    await state.directory.admit(spec)
    try:
        body = await _read_body(
            receive, state.settings.max_request_bytes, headers.get(b"content-length")
        )
    except ClientGone:
        return 499
    header_length = headers.get(b"inference-header-content-length")
    if header_length is not None:
        if not header_length.isdigit():
            raise BadRequest("Inference-Header-Content-Length must be an integer")
        header_length = int(header_length)
    if len(body) < OFF_LOOP_BYTES:
        decoded = decode_infer_request(body, header_length, state.limits)
        checked = check_request(decoded, spec)
    else:
        # A large body: refuse what the model cannot take before decoding anything, then
        # decode in a thread (the event loop keeps serving), a bounded number at once.
        check_declared(peek_inputs(body, header_length), spec)
        async with state.decode_slots:
            decoded, checked = await asyncio.to_thread(
                _decode_checked, body, header_length, state.limits, spec
            )
    try:
        # After the body, the next ASGI message can only be the client leaving.
        answer = await state.inference.infer(spec, decoded, request_id, key, receive, checked)
    except ClientGone:
        return 499
    tensors = answer.outputs
    encode = functools.partial(
        encode_infer_response,
        model_name=spec.name,
        model_version=str(spec.version),
        request_id=decoded.id,
        outputs=tensors,
        requested=decoded.outputs,
        binary_default=decoded.binary_output_default,
    )
    if sum(len(tensor.raw) for tensor in tensors) < OFF_LOOP_BYTES:
        payload, json_length = encode()
    else:  # as with decoding: a large answer is encoded in a thread
        async with state.decode_slots:
            payload, json_length = await asyncio.to_thread(encode)
    response_headers = [
        (b"content-type", _JSON if json_length is None else _BINARY),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", request_id.encode("latin-1")),
    ]
    if json_length is not None:
        response_headers.append((b"inference-header-content-length", str(json_length).encode()))
    if answer.cache is not None:
        response_headers.append((b"x-inferbox-cache", _CACHE_HEADER[answer.cache]))
    await send({"type": "http.response.start", "status": 200, "headers": response_headers})
    await send({"type": "http.response.body", "body": payload})
    return 200


_CACHE_HEADER = {HIT: b"hit", MISS: b"miss"}
