"""``inference.GRPCInferenceService`` on ``grpc.aio``: the Open Inference Protocol over gRPC.

The servicer subclasses the base class ``tritonclient.grpc.service_pb2_grpc`` generates from
Triton's own ``grpc_service.proto``, so every RPC and message is Triton's. It is backed by what
serves HTTP: the same key ``Gate`` (the key travels as ``authorization: Bearer ...`` metadata,
and each RPC needs what its HTTP route's handler declares, read from that handler with the
RPC's model name as the path parameter: ``security.access``), the same ``InferenceService``
(lanes, batching, deadlines, priorities, queue limits, the response cache), the same metrics and
logs. Errors are the HTTP errors with their messages,
mapped to the protocol's status codes (``protocol.grpc_messages.STATUS_CODE``).

It runs as its own process (``inferbox grpc``) on ``INFERBOX_GRPC_BIND``; nginx terminates TLS
and passes ``/inference.GRPCInferenceService/`` to it over HTTP/2 on the same port as HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import grpc
import structlog
from google.protobuf import json_format
from redis.exceptions import RedisError
from tritonclient.grpc import service_pb2, service_pb2_grpc

import inferbox
from inferbox.config import Settings
from inferbox.errors import InferboxError, Unavailable, error_headers
from inferbox.frontend.auditing import SCOPE_KEY, audited, visible
from inferbox.frontend.calls import log_failed_call, new_request_id
from inferbox.frontend.documents import (
    EXTENSIONS,
    model_metadata,
    repository_index,
    triton_config,
)
from inferbox.frontend.statistics import model_statistics
from inferbox.frontend.wiring import open_serving
from inferbox.inference.directory import ModelDirectory
from inferbox.models.triton_config import from_json as config_message
from inferbox.observability import api_metrics
from inferbox.protocol.grpc_messages import decode_request, encode_response, status_code
from inferbox.security.access import access_of

log = structlog.get_logger(__name__)

SERVICE = "inference.GRPCInferenceService"

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _model_route(version: str, tail: str, method: str) -> tuple[str, str]:
    """The HTTP route (path template, method) a model RPC stands for."""
    versioned = "/versions/{version:str}" if version else ""
    return f"/v2/models/{{name:str}}{versioned}{tail}", method


def _concrete(template: str, name: str, version: str = "") -> str:
    """The path a route template stands for with model ``name`` and ``version`` (for logs and
    the audit log; access is decided from the template's handler, never by parsing this)."""
    return template.replace("{name:str}", name).replace("{version:str}", version)


def grpc_status(http_status: int) -> grpc.StatusCode:
    """The gRPC status code answering what HTTP answers with ``http_status``."""
    return _CODES[status_code(http_status)]


class _Call:
    """What the key gate and the audit log read of a request: an ASGI-like scope."""

    def __init__(self, context: grpc.aio.ServicerContext, path: str, state) -> None:
        metadata = context.invocation_metadata() or ()
        self.headers = {
            key.encode("latin-1"): value.encode("latin-1")
            for key, value in metadata
            if isinstance(value, str)
        }
        peer = context.peer() or ""
        host = None
        if peer.startswith(("ipv4:", "ipv6:")):
            host = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
        self.scope = {
            "path": path,
            "client": (host, 0) if host else None,
            "headers": list(self.headers.items()),
        }
        self.app = SimpleNamespace(state=state)
        raw_id = self.headers.get(b"x-request-id")
        self.request_id = raw_id.decode("latin-1") if raw_id else new_request_id()


class _Aborted(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


class _StreamContext:
    """The stream's context for one of its requests: an error ends that request only."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context

    def invocation_metadata(self):
        return self.context.invocation_metadata()

    def peer(self):
        return self.context.peer()

    def time_remaining(self):
        return self.context.time_remaining()

    def set_trailing_metadata(self, metadata) -> None:
        pass

    async def send_initial_metadata(self, metadata) -> None:
        pass  # a stream's responses share the stream's headers

    async def abort(self, code: grpc.StatusCode, details: str):
        raise _Aborted(details)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Every RPC of the service that the HTTP side serves, and streaming inference (each
    request answered in order; decoupled models do not exist here)."""

    def __init__(self, state) -> None:
        self.state = state
        self.metrics = api_metrics.InferMetrics()

    # --- plumbing ---------------------------------------------------------------------------

    async def _admit(self, call: _Call, route: tuple[str, str], params: dict[str, str]):
        """The key and concurrency slot for one request of the HTTP route ``route`` (its path
        template and method) with path parameters ``params``: what that route's handler declares
        (None, None when the route is open or keys are off)."""
        gate = self.state.gate
        if gate is None:
            return None, None
        template, method = route
        need = access_of(self.state.route_handlers[template][method]).need(params)
        if need is None:
            return None, None
        try:
            key, slot = await gate.admit(call.headers.get(b"authorization"), need)
        except InferboxError as exc:
            await gate.audit_refusal(exc, call.scope, call.headers, call.request_id)
            raise
        call.scope[SCOPE_KEY] = key
        return key, slot

    async def _release(self, key, slot) -> None:
        if slot is not None:
            await self.state.gate.release(key, slot)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: InferboxError, request_id: str):
        trailers = [("x-request-id", request_id)]
        trailers += [(k.lower(), v) for k, v in error_headers(exc)]
        context.set_trailing_metadata(tuple(trailers))
        await context.abort(grpc_status(exc.status), exc.message)

    async def _serve(
        self, context, http: tuple[str, str], name: str, answer, route: str, version: str = ""
    ):
        """Admit (as the HTTP route ``http``, a path template and method, for model ``name``),
        answer, count and map errors, for every RPC but inference."""
        started = time.perf_counter()
        call = _Call(context, _concrete(http[0], name, version), self.state)
        status = 500
        key = slot = None
        try:
            key, slot = await self._admit(call, http, {"name": name})
            result = await answer(call)
            status = 200
            return result
        except InferboxError as exc:
            status = exc.status
            await self._abort(context, exc, call.request_id)
        except (RedisError, OSError) as exc:
            log.warning("dependency unavailable", rpc=route, error=str(exc)[:300])
            status = 503
            await self._abort(context, Unavailable("a dependency is unreachable"), call.request_id)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error", rpc=route)
            await self._abort(context, InferboxError("internal error"), call.request_id)
        finally:
            await self._release(key, slot)
            api_metrics.record_route(f"grpc:{route}", status, time.perf_counter() - started)

    async def _serve_model(self, context, request, tail: str, answer, rpc: str):
        """``_serve`` for a model RPC (``name``, ``version``): as the HTTP GET route of the
        model (or its version) followed by ``tail``."""
        route = _model_route(request.version, tail, "GET")
        return await self._serve(context, route, request.name, answer, rpc, request.version)

    # --- server -----------------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        directory: ModelDirectory = self.state.directory
        try:
            workers = await directory.workers_alive()
        except RedisError:
            return service_pb2.ServerReadyResponse(ready=False)
        if workers == 0:
            return service_pb2.ServerReadyResponse(ready=False)
        problem = await self.state.dependencies.problem()
        return service_pb2.ServerReadyResponse(ready=problem is None)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(
            name="inferbox", version=inferbox.__version__, extensions=EXTENSIONS
        )

    # --- models -----------------------------------------------------------------------------

    async def ModelReady(self, request, context):
        async def answer(call):
            directory = self.state.directory
            spec = await directory.resolve(request.name, request.version or None)
            available = await directory.availability(spec)
            return service_pb2.ModelReadyResponse(ready=available.ready)

        return await self._serve_model(context, request, "/ready", answer, "ModelReady")

    async def ModelMetadata(self, request, context):
        async def answer(call):
            directory = self.state.directory
            spec = await directory.resolve(request.name, request.version or None)
            if spec.error:
                raise Unavailable(
                    f"model {request.name!r} version {spec.version} is not usable: {spec.error}"
                )
            body = model_metadata(spec, await directory.versions(request.name))
            return service_pb2.ModelMetadataResponse(
                name=body["name"],
                versions=body["versions"],
                platform=body["platform"],
                inputs=[
                    service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in body["inputs"]
                ],
                outputs=[
                    service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in body["outputs"]
                ],
            )

        return await self._serve_model(context, request, "", answer, "ModelMetadata")

    async def ModelConfig(self, request, context):
        async def answer(call):
            spec = await self.state.directory.resolve(request.name, request.version or None)
            if spec.error:
                raise Unavailable(
                    f"model {request.name!r} version {spec.version} is not usable: {spec.error}"
                )
            config = config_message(triton_config(spec))
            return service_pb2.ModelConfigResponse(config=config)

        return await self._serve_model(context, request, "/config", answer, "ModelConfig")

    async def ModelStatistics(self, request, context):
        state = self.state

        async def answer(call):
            name = request.name or None
            shown = functools.partial(visible, call)
            document = await model_statistics(
                state.redis, state.redis_keys, state.directory, name, request.version or None, shown
            )
            return json_format.ParseDict(document, service_pb2.ModelStatisticsResponse())

        if not request.name:
            route = ("/v2/models/stats", "GET")
            return await self._serve(context, route, "", answer, "ModelStatistics")
        return await self._serve_model(context, request, "/stats", answer, "ModelStatistics")

    # --- repository -------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        async def answer(call):
            entries = await repository_index(self.state, lambda name: visible(call, name))
            if request.ready:
                entries = [e for e in entries if e["state"] == "READY"]
            return service_pb2.RepositoryIndexResponse(
                models=[service_pb2.RepositoryIndexResponse.ModelIndex(**e) for e in entries]
            )

        route = ("/v2/repository/index", "POST")
        return await self._serve(context, route, "", answer, "RepositoryIndex")

    async def _load(self, request, context, loaded: bool):
        action = "load" if loaded else "unload"

        async def answer(call):
            async with audited(call, f"model.{action}", request.model_name):
                await self.state.registry.set_loaded(request.model_name, loaded)
            if loaded:
                return service_pb2.RepositoryModelLoadResponse()
            return service_pb2.RepositoryModelUnloadResponse()

        route = (f"/v2/repository/models/{{name:str}}/{action}", "POST")
        rpc = "RepositoryModelLoad" if loaded else "RepositoryModelUnload"
        return await self._serve(context, route, request.model_name, answer, rpc)

    async def RepositoryModelLoad(self, request, context):
        return await self._load(request, context, True)

    async def RepositoryModelUnload(self, request, context):
        return await self._load(request, context, False)

    # --- inference --------------------------------------------------------------------------

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request of the stream answered in order, as ``ModelInfer`` would answer it; a
        failed one answers ``error_message`` and the stream goes on (Triton's behaviour)."""
        async for request in request_iterator:
            stream = _StreamContext(context)
            try:
                response = await self.ModelInfer(request, stream)
            except _Aborted as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=exc.message)
            else:
                yield service_pb2.ModelStreamInferResponse(infer_response=response)

    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        name = request.model_name
        route = _model_route(request.model_version, "/infer", "POST")
        call = _Call(context, _concrete(route[0], name, request.model_version), self.state)
        state = self.state
        spec = key = slot = None
        status = 500
        try:
            key, slot = await self._admit(call, route, {"name": name})
            spec = await state.directory.resolve(name, request.model_version or None)
            await state.directory.admit(spec)
            decoded = decode_request(request, state.limits)
            remaining = context.time_remaining()
            if remaining is not None and (
                decoded.timeout_us is None or decoded.timeout_us > remaining * 1e6
            ):
                # The client's own gRPC deadline bounds the call's deadline.
                decoded.timeout_us = max(int(remaining * 1e6), 1)
            answer = await state.inference.infer(spec, decoded, call.request_id, key)
            if answer.cache is not None:
                await context.send_initial_metadata((("x-inferbox-cache", answer.cache),))
            response = encode_response(spec.name, str(spec.version), request.id, answer.outputs)
            status = 200
            return response
        except InferboxError as exc:
            status = exc.status
            key_id = key.id if key is not None else getattr(exc, "key_id", None)
            log_failed_call(exc, spec, name, call.request_id, time.perf_counter() - started, key_id)
            await self._abort(context, exc, call.request_id)
        except asyncio.CancelledError:
            status = 499
            raise
        except (grpc.aio.AbortError, _Aborted):
            raise
        except Exception:
            with structlog.contextvars.bound_contextvars(request_id=call.request_id):
                log.exception("unhandled error", rpc="ModelInfer")
            await self._abort(context, InferboxError("internal error"), call.request_id)
        finally:
            await self._release(key, slot)
            elapsed = time.perf_counter() - started
            if spec is None:
                self.metrics.record("", "", status, elapsed)
            else:
                self.metrics.record(spec.name, str(spec.version), status, elapsed)


@contextlib.asynccontextmanager
async def serving_state(settings: Settings) -> AsyncIterator[SimpleNamespace]:
    """What the servicer reads: what the HTTP API serves with (``open_serving``), and the
    HTTP routes, whose handlers declare the access each RPC needs (``security.access``)."""
    from inferbox.api.app import create_app

    async with open_serving(settings) as serving:
        yield SimpleNamespace(
            **vars(serving), route_handlers=create_app(settings).route_handler_method_map
        )


def create_server(
    state, bind: str, max_message_bytes: int, *, reuse_port: bool = False
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the servicer on ``bind`` (plaintext: nginx holds TLS);
    ``reuse_port`` lets several server processes listen on the same port."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    if server.add_insecure_port(bind) == 0:
        raise OSError(f"cannot listen on {bind}")
    return server


async def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    """Run the gRPC server until SIGTERM or SIGINT, then stop within a grace period."""
    import signal

    async with serving_state(settings) as state:
        server = create_server(
            state, settings.grpc_bind, settings.max_request_bytes, reuse_port=reuse_port
        )
        await server.start()
        log.info("grpc server listening", bind=settings.grpc_bind)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(grace=5)
