"""``create_app(settings)``: the Litestar application, wired from one ``Settings`` object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import psycopg
import redis
import structlog
import urllib3
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin

import inferbox
from inferbox.api.admin import AuditController, KeysController
from inferbox.api.dependencies import DEPENDENCIES
from inferbox.api.gate import GateMiddleware
from inferbox.api.infer import InferenceFastPath
from inferbox.api.jobs import JobsController, JobSubmitController
from inferbox.api.responses import error_response
from inferbox.api.statistics import StatisticsController
from inferbox.api.v1 import ModelsController
from inferbox.api.v2 import RepositoryController, V2Controller
from inferbox.config import Settings
from inferbox.errors import (
    PROBLEM_JSON,
    BadRequest,
    InferboxError,
    Unavailable,
    error_headers,
    problem_body,
)
from inferbox.frontend.wiring import open_serving
from inferbox.jobs.service import JobService
from inferbox.jobs.store import JobStore
from inferbox.jobs.transport import JobTransport
from inferbox.observability import certificate
from inferbox.protocol.codec import TOO_DEEP
from inferbox.security.access import OPEN

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


def create_app(settings: Settings) -> Litestar:
    """The API application; Redis clients open and close with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_serving(settings) as serving:
            # Routes read the services from the state (``request.app.state``).
            app.state.update(vars(serving))
            app.state.jobs = JobService(
                settings,
                JobStore(serving.registry.store.pool),
                serving.objects,
                JobTransport(redis.Redis.from_url(settings.redis_url), serving.redis_keys),
                serving.limits,
            )
            watcher = None
            if settings.tls_cert_file is not None:
                watcher = asyncio.create_task(certificate.watch(settings.tls_cert_file))
            try:
                yield
            finally:
                if watcher is not None:
                    watcher.cancel()

    return Litestar(
        route_handlers=[
            V2Controller,
            RepositoryController,
            ModelsController,
            StatisticsController,
            KeysController,
            AuditController,
            JobSubmitController,
            JobsController,
        ],
        state=State({"gate": None, "key_cache": None, "dependencies": None}),
        lifespan=[lifespan],
        dependencies=DEPENDENCIES,
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
            lambda app: setattr(
                app.state, "decode_slots", asyncio.Semaphore(settings.max_concurrent_decodes)
            ),
        ],
    )


def create_asgi(settings: Settings) -> InferenceFastPath:
    """What the server runs: the inference fast path in front of the Litestar app."""
    return InferenceFastPath(create_app(settings), slow_request_ms=settings.slow_request_ms)
