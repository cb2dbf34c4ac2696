"""The control plane (``/v1``): models, versions, aliases, traffic split and config.

Handlers get their services by dependency injection (``api.dependencies``) and answer typed
structs (``api.schemas``). Errors are RFC 9457 problem details (rendered in ``inferbox.api.app``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import redis.asyncio as aioredis
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from inferbox.api.schemas import (
    AliasTarget,
    AliasView,
    CapacityView,
    ModelEntry,
    ModelList,
    ModelView,
    TrafficSplit,
    TrafficView,
    VersionView,
)
from inferbox.api.uploads import upload_chunks
from inferbox.errors import BadRequest
from inferbox.frontend.auditing import actor, audited, operates, visible
from inferbox.keys import Keys
from inferbox.models.capacity import CapacityCard, propose
from inferbox.models.catalog import decode_status
from inferbox.registry.service import RegistryService
from inferbox.registry.store import ModelVersion
from inferbox.security.access import needs

_READ = needs(None, model="name")
_WRITE = needs("models:write", model="name")


async def _workers(redis: aioredis.Redis, keys: Keys, name: str) -> dict[int, dict[str, dict]]:
    """Per version, each worker's state (``ready``, ``loading``, ``failed``) as it reports it."""
    raw = await redis.hgetall(keys.status(name))
    result: dict[int, dict[str, dict]] = {}
    for field, value in raw.items():
        version, _, worker = field.decode().partition("/")
        status = decode_status(value)
        result.setdefault(int(version), {})[worker] = msgspec.structs.asdict(status)
    return result


async def _capacity(
    redis: aioredis.Redis, keys: Keys, registry: RegistryService, version: ModelVersion
) -> dict | None:
    """The stored card, or the one a worker just measured (then stored)."""
    if version.capacity is not None:
        return version.capacity
    raw = await redis.hget(keys.capacity, f"{version.model}/{version.version}")
    if raw is None:
        return None
    card = msgspec.json.decode(raw)
    await registry.store.set_capacity(version.model, version.version, card)
    return card


class ModelsController(Controller):
    """Models and their versions, aliases, traffic split and config."""

    path = "/v1/models"
    tags = ["models"]

    @get("", opt=needs(None))
    async def list_models(
        self, request: Request, registry: NamedDependency[RegistryService]
    ) -> ModelList:
        """Every model: versions, aliases and the newest ready version (a key limited to some
        models sees those only)."""
        models = []
        for summary in await registry.store.list_models():
            if not visible(request, summary.name):
                continue
            model = await registry.store.get_model(summary.name)
            models.append(
                ModelEntry(
                    name=summary.name,
                    versions=[v.version for v in model.versions if v.state != "deleted"],
                    latest_ready=summary.latest_ready,
                    aliases=summary.aliases,
                    created_at=summary.created_at.isoformat(),
                )
            )
        return ModelList(models=models)

    @get("/{name:str}", opt=_READ)
    async def show_model(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        redis: NamedDependency[aioredis.Redis],
        redis_keys: NamedDependency[Keys],
        name: FromPath[str],
    ) -> ModelView:
        """A model with every version, its state on each worker, aliases and traffic split."""
        model = await registry.store.get_model(name)
        operator = operates(request, name)
        workers = await _workers(redis, redis_keys, name) if operator else {}
        return ModelView(
            name=model.name,
            created_at=model.created_at.isoformat(),
            aliases={a.name: a.version for a in model.aliases},
            traffic={t.version: t.weight for t in model.traffic},
            versions=[
                VersionView.of(v, workers, v.capacity, operator=operator)
                for v in model.versions
                if v.state != "deleted"
            ],
        )

    # No body limit here: the upload is streamed to disk and spool() enforces max_model_bytes.
    @post("/{name:str}/versions", status_code=201, request_max_body_size=None, opt=_WRITE)
    async def push(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        alias: FromQuery[str | None] = None,
        config: Annotated[
            str | None, QueryParameter(description="JSON object of serving config fields")
        ] = None,
        triton_config: Annotated[
            str | None,
            QueryParameter(
                description="text of the model's Triton config.pbtxt, applied before config"
            ),
        ] = None,
    ) -> Response[VersionView]:
        """Upload a new version (raw body, or multipart with a ``file`` part); 201 when stored."""
        overrides = None
        if config:
            try:
                overrides = msgspec.json.decode(config)
            except msgspec.DecodeError as exc:
                raise BadRequest(f"config is not JSON: {exc}") from None
            if not isinstance(overrides, dict):
                raise BadRequest("config must be a JSON object")
        async with audited(request, "model.upload", name, alias=alias) as change:
            version = await registry.push(
                name,
                upload_chunks(request),
                alias=alias,
                config=overrides,
                triton_config=triton_config,
                created_by=actor(request),
            )
            change.details.update(version=version.version, sha256=version.sha256, size=version.size)
        return Response(
            VersionView.of(version, {}, None, operator=operates(request, name)),
            status_code=201,
            headers={"Location": f"/v1/models/{name}/versions/{version.version}"},
        )

    @get("/{name:str}/versions/{version:int}", opt=_READ)
    async def show_version(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        redis: NamedDependency[aioredis.Redis],
        redis_keys: NamedDependency[Keys],
        name: FromPath[str],
        version: FromPath[int],
    ) -> VersionView:
        """One version with its state on each worker and its capacity card."""
        found = await registry.store.get_version(name, version)
        operator = operates(request, name)
        return VersionView.of(
            found,
            await _workers(redis, redis_keys, name) if operator else {},
            await _capacity(redis, redis_keys, registry, found),
            operator=operator,
        )

    @get("/{name:str}/versions/{version:int}/capacity", opt=_READ)
    async def capacity(
        self,
        registry: NamedDependency[RegistryService],
        redis: NamedDependency[aioredis.Redis],
        redis_keys: NamedDependency[Keys],
        name: FromPath[str],
        version: FromPath[int],
        latency_ms: Annotated[float | None, QueryParameter(gt=0, le=600_000)] = None,
    ) -> CapacityView:
        """The capacity card, and batching knobs proposed for ``latency_ms`` when given."""
        found = await registry.store.get_version(name, version)
        card = await _capacity(redis, redis_keys, registry, found)
        if card is None:
            return CapacityView(card=None, proposal=None)
        proposal = None
        if latency_ms is not None:
            proposal = msgspec.to_builtins(propose(msgspec.convert(card, CapacityCard), latency_ms))
        return CapacityView(card=card, proposal=proposal)

    @patch("/{name:str}/versions/{version:int}/config", opt=_WRITE)
    async def update_config(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        redis: NamedDependency[aioredis.Redis],
        redis_keys: NamedDependency[Keys],
        name: FromPath[str],
        version: FromPath[int],
        data: JSONBody[dict[str, object]],
    ) -> VersionView:
        """Change serving config fields; workers reload the version with them."""
        async with audited(request, "model.config", f"{name}/{version}", fields=sorted(data)):
            updated = await registry.update_config(name, version, data)
        workers = await _workers(redis, redis_keys, name)
        return VersionView.of(updated, workers, updated.capacity, operator=operates(request, name))

    @delete("/{name:str}/versions/{version:int}", status_code=204, opt=_WRITE)
    async def delete_version(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        version: FromPath[int],
        force: FromQuery[bool] = False,
    ) -> None:
        """Delete a version; refused (409) while an alias or the split uses it, unless forced."""
        async with audited(request, "model.delete", f"{name}/{version}", force=force):
            await registry.delete_version(name, version, force=force)

    @put("/{name:str}/aliases/{alias:str}", opt=_WRITE)
    async def set_alias(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[AliasTarget],
    ) -> AliasView:
        """Create or move an alias to a ready version."""
        async with audited(request, "alias.set", f"{name}:{alias}", version=data.version):
            result = await registry.set_alias(name, alias, data.version)
        return AliasView(name=name, alias=result.name, version=result.version)

    @delete("/{name:str}/aliases/{alias:str}", status_code=204, opt=_WRITE)
    async def delete_alias(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        alias: FromPath[str],
    ) -> None:
        """Remove an alias."""
        async with audited(request, "alias.delete", f"{name}:{alias}"):
            await registry.delete_alias(name, alias)

    @put("/{name:str}/traffic", opt=_WRITE)
    async def set_traffic(
        self,
        request: Request,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        data: JSONBody[TrafficSplit],
    ) -> TrafficView:
        """Share unversioned calls between versions by weight (a canary); ``{}`` clears it."""
        async with audited(request, "model.traffic", name, weights=data.weights):
            shares = await registry.set_traffic(name, data.weights)
        return TrafficView(name=name, weights={s.version: s.weight for s in shares})
