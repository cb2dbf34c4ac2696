"""``create_app(settings)``: the Litestar application, wired from one ``Settings`` object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

import inferbox
from inferbox.api.directory import ModelDirectory
from inferbox.api.infer import InferenceFastPath
from inferbox.api.v2 import V2Controller, error_response
from inferbox.config import Settings
from inferbox.errors import InferboxError
from inferbox.keys import Keys
from inferbox.lanes.client import InteractiveClient
from inferbox.logs import configure_logging
from inferbox.protocol.codec import TensorLimits

log = structlog.get_logger(__name__)


def _http_error(_: Request, exc: HTTPException) -> Response:
    # Litestar's own errors (404 route, 405, 413 body too large) in our shape.
    error = InferboxError(str(exc.detail))
    error.status = exc.status_code
    return error_response(error)


def _inferbox_error(_: Request, exc: InferboxError) -> Response:
    return error_response(exc)


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(InferboxError("internal error"))


def create_app(settings: Settings) -> Litestar:
    """The API application; Redis clients open and close with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url, max_connections=256)
        keys = Keys(settings.key_prefix)
        lane = InteractiveClient(settings.redis_url, keys)
        await lane.start()
        app.state.redis_keys = keys
        app.state.lane = lane
        app.state.directory = ModelDirectory(client, keys, settings.status_cache_s)
        try:
            yield
        finally:
            await lane.close()
            await client.aclose()

    return Litestar(
        route_handlers=[V2Controller],
        lifespan=[lifespan],
        logging_config=None,
        exception_handlers={
            InferboxError: _inferbox_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        request_max_body_size=settings.max_request_bytes,
        openapi_config=OpenAPIConfig(title="inferbox", version=inferbox.__version__, path="/docs"),
        on_startup=[
            lambda app: setattr(app.state, "settings", settings),
            lambda app: setattr(
                app.state,
                "limits",
                TensorLimits(
                    max_rank=settings.max_tensor_rank,
                    max_dim=settings.max_tensor_dim,
                    max_elements=settings.max_tensor_elements,
                ),
            ),
        ],
    )


def create_asgi(settings: Settings) -> InferenceFastPath:
    """What the server runs: the inference fast path in front of the Litestar app."""
    return InferenceFastPath(create_app(settings), slow_request_ms=settings.slow_request_ms)


def create_asgi_from_env() -> InferenceFastPath:
    """Entry point for ASGI servers: settings from the environment, JSON logs."""
    settings = Settings()
    configure_logging("api", settings.log_level, settings.log_format)
    return create_asgi(settings)
