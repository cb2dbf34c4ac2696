"""Triton's statistics extension over HTTP: ``GET /v2/models/stats`` (every model the key may
see), ``/v2/models/{m}/stats`` and ``/v2/models/{m}/versions/{v}/stats``."""

from __future__ import annotations

import functools

import redis.asyncio as aioredis
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from inferbox.api.responses import json_response
from inferbox.frontend.auditing import visible
from inferbox.frontend.statistics import model_statistics
from inferbox.inference.directory import ModelDirectory
from inferbox.keys import Keys
from inferbox.security.access import needs


class StatisticsController(Controller):
    """Inference statistics per model version, added up across the workers serving it."""

    path = "/v2/models"
    tags = ["v2"]

    @get("/stats", opt=needs("infer"))
    async def every_model(
        self,
        request: Request,
        redis: NamedDependency[aioredis.Redis],
        redis_keys: NamedDependency[Keys],
        directory: NamedDependency[ModelDirectory],
    ) -> Response:
        """Every version of every model this key may call."""
        shown = functools.partial(visible, request)
        return json_response(
            await model_statistics(redis, redis_keys, directory, None, None, shown)
        )

    @get(
        ["/{name:str}/stats", "/{name:str}/versions/{version:str}/stats"],
        opt=needs("infer", model="name"),
    )
    async def one_model(
        self,
        redis: NamedDependency[aioredis.Redis],
        redis_keys: NamedDependency[Keys],
        directory: NamedDependency[ModelDirectory],
        name: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> Response:
        """Every version of the model, or the one named (a number or an alias)."""
        return json_response(
            await model_statistics(redis, redis_keys, directory, name, version, lambda _: True)
        )
