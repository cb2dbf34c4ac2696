"""The KServe V2 / Open Inference Protocol routes (``/v2``)."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from redis.exceptions import RedisError

import inferbox
from inferbox.api.responses import json_response as _json
from inferbox.api.schemas import Empty, Liveness, ModelReadiness, Readiness, ServerMetadata
from inferbox.errors import Unavailable
from inferbox.frontend.auditing import audited, visible
from inferbox.frontend.documents import (
    EXTENSIONS,
    model_metadata,
    repository_index,
    triton_config,
)
from inferbox.frontend.health import Dependencies
from inferbox.inference.directory import ModelDirectory
from inferbox.registry.service import RegistryService
from inferbox.security.access import OPEN, needs

_INFER = needs("infer", model="name")
_WRITE = needs("models:write", model="name")
_RETRY = {"Retry-After": "1"}


def _not_ready(error: str) -> Response[Readiness]:
    return Response(Readiness(ready=False, error=error), status_code=503, headers=_RETRY)


class V2Controller(Controller):
    """Health, server and model metadata, model config, and inference.

    The model metadata and config are protocol documents whose shape follows the model: they
    are built in ``inferbox.frontend.documents`` (shared with gRPC) and answered as they are.
    """

    path = "/v2"
    tags = ["v2"]

    @get("", sync_to_thread=False, opt=OPEN)
    def server_metadata(self) -> ServerMetadata:
        """Server name, version and the protocol extensions implemented."""
        return ServerMetadata(name="inferbox", version=inferbox.__version__, extensions=EXTENSIONS)

    @get("/health/live", sync_to_thread=False, opt=OPEN)
    def live(self) -> Liveness:
        """The process answers: ``{"live": true}``."""
        return Liveness(live=True)

    @get("/health/ready", opt=OPEN)
    async def ready(
        self,
        directory: NamedDependency[ModelDirectory],
        readiness: NamedDependency[Dependencies | None],
    ) -> Response[Readiness]:
        """Ready when Redis, PostgreSQL and the S3 store answer and a worker heartbeats."""
        try:
            workers = await directory.workers_alive()
        except RedisError:
            return _not_ready("redis is unreachable")
        if workers == 0:
            return _not_ready("no worker is running")
        problem = await readiness.problem() if readiness else None
        if problem is not None:
            return _not_ready(problem)
        return Response(Readiness(ready=True))

    @get(["/models/{name:str}", "/models/{name:str}/versions/{version:str}"], opt=_INFER)
    async def model_metadata(
        self,
        directory: NamedDependency[ModelDirectory],
        name: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> Response:
        """Name, versions, platform, inputs and outputs (``-1`` marks a dynamic dimension)."""
        spec = await directory.resolve(name, version)
        if spec.error:
            raise Unavailable(f"model {name!r} version {spec.version} is not usable: {spec.error}")
        return _json(model_metadata(spec, await directory.versions(name)))

    @get(
        ["/models/{name:str}/ready", "/models/{name:str}/versions/{version:str}/ready"],
        opt=_INFER,
    )
    async def model_ready(
        self,
        directory: NamedDependency[ModelDirectory],
        name: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> Response[ModelReadiness]:
        """200 ``{"ready": true}`` when a worker serves it, else 503 with the reason."""
        spec = await directory.resolve(name, version)
        available = await directory.availability(spec)
        if available.ready:
            return Response(ModelReadiness(name=name, version=str(spec.version), ready=True))
        return Response(
            ModelReadiness(
                name=name, version=str(spec.version), ready=False, error=available.reason
            ),
            status_code=503,
            headers=_RETRY,
        )

    @get(
        ["/models/{name:str}/config", "/models/{name:str}/versions/{version:str}/config"],
        opt=_INFER,
    )
    async def model_config(
        self,
        directory: NamedDependency[ModelDirectory],
        name: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> Response:
        """The serving config in Triton's JSON form."""
        spec = await directory.resolve(name, version)
        if spec.error:
            raise Unavailable(f"model {name!r} version {spec.version} is not usable: {spec.error}")
        return _json(triton_config(spec))

    @post(
        ["/models/{name:str}/infer", "/models/{name:str}/versions/{version:str}/infer"],
        status_code=200,
        opt=_INFER,
    )
    async def infer(self, name: FromPath[str], version: FromPath[str | None] = None) -> Response:
        """Run the model on a V2 inference request (JSON, or binary tensors after an
        ``Inference-Header-Content-Length`` JSON header).

        Served by the fast path in front of Litestar (``inferbox.api.infer``), which takes this
        route's declared access; Litestar itself never sees a canonical ``/infer`` path.
        """
        raise Unavailable("inference is served by the API's fast path, which is not running")


class RepositoryController(Controller):
    """Triton's model repository extension: index, load and unload."""

    path = "/v2/repository"
    tags = ["v2"]

    @post("/index", status_code=200, opt=needs("infer"))
    async def index(self, request: Request, state: State) -> Response:
        """Every version with its state: READY, LOADING, UNLOADED or UNAVAILABLE (with reason);
        a key limited to some models sees those only."""
        # The index reads the catalog and the directory from the state, as gRPC's does.
        return _json(await repository_index(state, lambda name: visible(request, name)))

    @post("/models/{name:str}/load", status_code=200, opt=_WRITE)
    async def load(
        self, request: Request, registry: NamedDependency[RegistryService], name: FromPath[str]
    ) -> Empty:
        """Mark every version of the model loaded; workers load it within a second."""
        async with audited(request, "model.load", name):
            await registry.set_loaded(name, True)
        return Empty()

    @post("/models/{name:str}/unload", status_code=200, opt=_WRITE)
    async def unload(
        self, request: Request, registry: NamedDependency[RegistryService], name: FromPath[str]
    ) -> Empty:
        """Mark every version of the model unloaded; workers drop it within a second."""
        async with audited(request, "model.unload", name):
            await registry.set_loaded(name, False)
        return Empty()
