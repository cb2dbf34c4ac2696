"""``create_app(settings)``: the Litestar application, wired from one ``Settings`` object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import psycopg
import redis
import redis.asyncio as aioredis
import structlog
import urllib3
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

import inferbox
from inferbox.api.admin import AuditController, KeysController
from inferbox.api.gate import GateMiddleware
from inferbox.api.health import Dependencies, keep_catalog
from inferbox.api.infer import InferenceFastPath
from inferbox.api.jobs import JobsController, JobSubmitController
from inferbox.api.responses import error_response
from inferbox.api.v1 import ModelsController
from inferbox.api.v2 import RepositoryController, V2Controller
from inferbox.cache.client import ResponseCache
from inferbox.config import Settings
from inferbox.errors import (
    PROBLEM_JSON,
    BadRequest,
    InferboxError,
    Unavailable,
    error_headers,
    problem_body,
)
from inferbox.inference.directory import ModelDirectory
from inferbox.inference.validation import tensor_limits
from inferbox.jobs.service import JobService
from inferbox.jobs.store import JobStore
from inferbox.jobs.transport import JobTransport
from inferbox.keys import Keys
from inferbox.lanes.client import InteractiveClient
from inferbox.observability import certificate
from inferbox.protocol.codec import TOO_DEEP
from inferbox.registry.wiring import object_store, registry_service
from inferbox.security.access import OPEN
from inferbox.security.audit import AuditLog
from inferbox.security.auth import Gate, trusted_networks
from inferbox.security.keystore import KeyCache, KeyStore
from inferbox.security.limits import Limiter

log = structlog.get_logger(__name__)


def _render(request: Request, exc: InferboxError) -> Response:
    # /v1 speaks RFC 9457 problem details; the V2 protocol its own {"error": ...} shape.
    if request.url.path.startswith("/v1"):
        return problem_response(exc, request.url.path)
    return error_response(exc)


def _http_error(request: Request, exc: HTTPException) -> Response:
    # Litestar's own errors (404 route, 405, 400 validation, 413 body too large).
    detail = str(exc.detail)
    extra = getattr(exc, "extra", None)
    if exc.status_code == 400 and extra:
        detail = f"{detail}: {extra}"
    error = InferboxError(detail)
    error.status = exc.status_code
    return _render(request, error)


def _inferbox_error(request: Request, exc: InferboxError) -> Response:
    return _render(request, exc)


def _dependency_down(request: Request, exc: Exception) -> Response:
    # PostgreSQL or the S3 store down (or not answering in time): a planned 503, not a 500.
    what = "the database" if isinstance(exc, psycopg.OperationalError) else "the object store"
    log.warning("dependency unavailable", path=request.url.path, error=str(exc)[:300])
    return _render(request, Unavailable(f"{what} is unreachable; retry later"))


def _unstorable_value(request: Request, exc: Exception) -> Response:
    # PostgreSQL refused a value the client sent (a NUL character, a number out of range):
    # the request is at fault, not the server.
    log.info("value refused by the database", path=request.url.path, error=str(exc)[:300])
    error = InferboxError("a value in the request cannot be stored or searched for")
    error.status = 400
    return _render(request, error)


def _too_deep(request: Request, exc: RecursionError) -> Response:
    # msgspec's decoders (request bodies, query parameters) stop at about 1,000 levels.
    log.info("JSON nested too deeply", path=request.url.path)
    return _render(request, BadRequest(TOO_DEEP))


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return _render(request, InferboxError("internal error"))


def problem_response(exc: InferboxError, instance: str) -> Response:
    """An RFC 9457 problem details answer for an error."""
    return Response(
        msgspec.json.encode(problem_body(exc, instance)),
        status_code=exc.status,
        media_type=PROBLEM_JSON,
        headers=dict(error_headers(exc)),
    )


async def _open_security(app: Litestar, settings: Settings, client, keys: Keys, pool) -> None:
    """Keys, limits and audit on ``app.state``; ``gate`` stays None with auth turned off."""
    app.state.trusted_proxies = trusted = trusted_networks(settings.trusted_proxies)
    app.state.keystore = KeyStore(pool)
    app.state.audit = AuditLog(pool, client, keys, settings.audit_failure_window_s)
    if settings.auth_enabled:
        cache = KeyCache(app.state.keystore, client, keys, ttl_s=settings.key_cache_s)
        await cache.start()
        app.state.key_cache = cache
        # Limits go over the lane's hot-path connection (two commands per limited call).
        limiter = Limiter(client, keys, settings.slot_ttl_s, connection=app.state.lane.commands)
        app.state.gate = Gate(cache, limiter, app.state.audit, trusted)
    else:
        log.warning("API keys are not required: INFERBOX_AUTH_ENABLED is false")


def redis_client(url: str) -> aioredis.Redis:
    """The API process's asyncio Redis client (everything but the inference hot path).

    A command that meets a dead connection is sent once more, at once, on a new one: after a
    Redis restart every pooled connection is dead, and redis-py's asyncio client would
    otherwise fail one request per pooled connection (a 503) long after Redis is back.
    """
    return aioredis.Redis.from_url(
        url,
        max_connections=256,
        retry=AsyncRetry(NoBackoff(), 1),
        retry_on_error=[redis.ConnectionError],
    )


def create_app(settings: Settings) -> Litestar:
    """The API application; Redis clients open and close with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = redis_client(settings.redis_url)
        keys = Keys(settings.key_prefix)
        lane = InteractiveClient.from_settings(settings, keys)
        await lane.start()
        cache = ResponseCache.from_settings(settings, keys, "infer")
        if cache is not None:
            await cache.start()
        app.state.cache = cache
        app.state.redis = client
        app.state.redis_keys = keys
        app.state.lane = lane
        app.state.directory = ModelDirectory(client, keys, settings.status_cache_s)
        objects = object_store(settings)
        await asyncio.to_thread(objects.ensure_bucket)
        async with registry_service(settings, client, objects) as registry:
            app.state.registry = registry
            await _open_security(app, settings, client, keys, registry.store.pool)
            app.state.jobs = JobService(
                settings,
                JobStore(registry.store.pool),
                objects,
                JobTransport(redis.Redis.from_url(settings.redis_url), keys),
                tensor_limits(settings),
            )
            # Redis may have lost the catalog (restart without data): rebuild it now, and
            # whenever it goes missing later.
            watcher = None
            if settings.tls_cert_file is not None:
                watcher = asyncio.create_task(certificate.watch(settings.tls_cert_file))
            keeper = asyncio.create_task(
                keep_catalog(registry, client, keys, app.state.directory), name="catalog"
            )
            app.state.dependencies = Dependencies(
                registry.store.pool, settings.s3_endpoint, s3_secure=settings.s3_secure
            )
            try:
                yield
            finally:
                keeper.cancel()
                if watcher is not None:
                    watcher.cancel()
                if app.state.key_cache is not None:
                    await app.state.key_cache.close()
                if cache is not None:
                    await cache.close()
                await lane.close()
                await client.aclose()

    return Litestar(
        route_handlers=[
            V2Controller,
            RepositoryController,
            ModelsController,
            KeysController,
            AuditController,
            JobSubmitController,
            JobsController,
        ],
        state=State({"gate": None, "key_cache": None, "dependencies": None, "cache": None}),
        lifespan=[lifespan],
        logging_config=None,
        exception_handlers={
            InferboxError: _inferbox_error,
            HTTPException: _http_error,
            psycopg.OperationalError: _dependency_down,
            psycopg.DataError: _unstorable_value,
            urllib3.exceptions.HTTPError: _dependency_down,
            RecursionError: _too_deep,
            Exception: _unexpected,
        },
        request_max_body_size=settings.max_request_bytes,
        middleware=[GateMiddleware],
        openapi_config=OpenAPIConfig(
            title="inferbox",
            version=inferbox.__version__,
            # The description only, as JSON (also at /docs/openapi.json) and YAML: no HTML
            # page that loads third-party scripts on the API's origin.
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()],
            openapi_router=Router(path="/docs", route_handlers=[], opt=OPEN),
        ),
        on_startup=[
            lambda app: setattr(app.state, "settings", settings),
            lambda app: setattr(app.state, "limits", tensor_limits(settings)),
            lambda app: setattr(
                app.state, "decode_slots", asyncio.Semaphore(settings.max_concurrent_decodes)
            ),
        ],
    )


def create_asgi(settings: Settings) -> InferenceFastPath:
    """What the server runs: the inference fast path in front of the Litestar app."""
    return InferenceFastPath(create_app(settings), slow_request_ms=settings.slow_request_ms)
