"""The model manager: uploads, versions, aliases and config, kept consistent in three places.

PostgreSQL is the source of truth, the object store holds the files (by sha256), and the Redis
catalog is the projection the data plane reads on every call. Every change here ends with
``publish(name)``, which rewrites the model's catalog entry and tells the workers (pub/sub).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from inferbox.cache.generations import Generations
from inferbox.errors import BadRequest, InferboxError, NotFound
from inferbox.keys import Keys
from inferbox.models import triton_config as triton
from inferbox.models.catalog import CatalogEntry, encode
from inferbox.models.repository import list_repository
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec, default_config, file_sha256
from inferbox.registry.objects import ObjectStore, object_key
from inferbox.registry.store import (
    DELETED,
    FAILED,
    Model,
    ModelVersion,
    RegistryStore,
    check_config,
    check_name,
    merge_config,
)
from inferbox.registry.upload import Spooled, spool
from inferbox.registry.validate import ValidationLimits, validate_model

log = structlog.get_logger(__name__)


def to_spec(version: ModelVersion) -> ModelSpec:
    """The catalog's view of a registry version."""
    return ModelSpec(
        name=version.model,
        version=version.version,
        path="",
        sha256=version.sha256,
        size=version.size,
        inputs=version.inputs,
        outputs=version.outputs,
        config=version.config,
        error=version.reason if version.state == FAILED else None,
        object_key=object_key(version.sha256),
        loaded=version.loaded,
    )


def _parse_triton_config(text: str | None):
    """The ``ModelConfig`` message of a config.pbtxt's text (None without one); ``BadRequest``
    for a file that does not parse or is not for an ONNX model."""
    if text is None:
        return None
    try:
        proto = triton.parse(text)
        triton.check_platform(proto)
    except triton.TritonConfigError as exc:
        raise BadRequest(str(exc)) from None
    return proto


def _apply_triton_config(
    proto,
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    model_config: ModelConfig,
) -> tuple[list[TensorSpec], list[TensorSpec], ModelConfig]:
    """The tensors and config once config.pbtxt's settings are applied to the graph's; the
    fields it sets that inferbox does not honour are logged."""
    try:
        serving = triton.serving_from_triton(
            proto,
            name,
            inputs,
            outputs,
            default_max_batch_size=model_config.max_batch_size,
        )
    except triton.TritonConfigError as exc:
        raise BadRequest(str(exc)) from None
    merged = merge_config(model_config, serving.config)
    if serving.not_honoured:
        log.warning(
            "config.pbtxt fields not honoured",
            model=name,
            fields=serving.not_honoured,
        )
    return serving.inputs, serving.outputs, merged


class RegistryService:
    """Everything the control plane does to models."""

    def __init__(
        self,
        store: RegistryStore,
        objects: ObjectStore,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        upload_dir: Path,
        max_model_bytes: int,
        limits: ValidationLimits | None = None,
        default_max_batch_size: int = 64,
        default_max_queue_size: int = 2048,
        generations: Generations | None = None,
    ):
        """``generations`` (the response cache's tokens, when there is a cache) retires the
        stored answers of every version a change touches."""
        self.store = store
        self.objects = objects
        self.redis = redis
        self.keys = keys
        self.upload_dir = upload_dir
        self.max_model_bytes = max_model_bytes
        self.limits = limits or ValidationLimits(max_bytes=max_model_bytes)
        self.default_max_batch_size = default_max_batch_size
        self.default_max_queue_size = default_max_queue_size
        self.generations = generations

    async def push(
        self,
        name: str,
        chunks: AsyncIterator[bytes],
        *,
        alias: str | None = None,
        created_by: str | None = None,
        config: dict | None = None,
        triton_config: str | None = None,
        apply_version_policy: bool = True,
    ) -> ModelVersion:
        """Receive, validate and store a new version; nothing is written unless it is valid.

        The file is streamed to disk (never held in memory), checked in a resource-limited
        child process, uploaded by content, and only then recorded. ``triton_config`` (the
        text of a config.pbtxt) is applied first, then ``config``; a ``version_policy`` set in
        it decides which of the model's versions stay loaded.
        """
        check_name(name)
        proto = _parse_triton_config(triton_config)
        spooled = await spool(chunks, self.upload_dir, self.max_model_bytes)
        try:
            checked = await asyncio.to_thread(validate_model, spooled.path, self.limits)
            inputs, outputs, model_config = self._serving_config(
                name, checked.inputs, checked.outputs, proto, config
            )
            version = await self._store_version(
                name, spooled, inputs, outputs, model_config, created_by
            )
        finally:
            spooled.path.unlink(missing_ok=True)
        if alias:
            await self.store.set_alias(name, alias, version.version)
        # A number is never given twice, but a restored registry may give it to other bytes.
        touched = [version.version]
        if apply_version_policy and proto is not None and proto.HasField("version_policy"):
            touched = await self._apply_version_policy(name, proto)
        await self.publish(name)
        await self._retire(name, touched)
        log.info(
            "model version pushed", model=name, version=version.version, size_bytes=version.size
        )
        return version

    def _serving_config(
        self,
        name: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        proto,
        config: dict | None,
    ) -> tuple[list[TensorSpec], list[TensorSpec], ModelConfig]:
        """The tensors a new version serves and its config: the defaults for its graph, then
        config.pbtxt's settings (``proto``), then ``config``; ``BadRequest`` where they do not
        fit the graph."""
        model_config = default_config(
            inputs,
            outputs,
            max_batch_size=self.default_max_batch_size,
            max_queue_size=self.default_max_queue_size,
        )
        if proto is not None:
            inputs, outputs, model_config = _apply_triton_config(
                proto, name, inputs, outputs, model_config
            )
        if config:
            model_config = merge_config(model_config, config)
        check_config(model_config, inputs, outputs)
        return inputs, outputs, model_config

    async def _store_version(
        self,
        name: str,
        spooled: Spooled,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        model_config: ModelConfig,
        created_by: str | None,
    ) -> ModelVersion:
        """Upload the spooled file by content, then record the version that serves it."""
        key = await asyncio.to_thread(
            self.objects.put_file, spooled.path, spooled.sha256, spooled.size
        )
        try:
            return await self.store.create_version(
                name,
                sha256=spooled.sha256,
                size=spooled.size,
                inputs=inputs,
                outputs=outputs,
                config=model_config,
                created_by=created_by,
            )
        except BaseException:
            # Leave no orphan file behind a row that was never written.
            if not await self.store.sha256_in_use(spooled.sha256):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.objects.delete, key)
            raise

    async def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """Mark a version deleted (refused while aliased unless forced); drop its file if unused."""
        deleted = await self.store.delete_version(name, version, force=force)
        await self.publish(name)
        await self._retire(name, [version])
        if not await self.store.sha256_in_use(deleted.sha256):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.objects.delete, object_key(deleted.sha256))

    async def set_alias(self, name: str, alias: str, version: int):
        """Point an alias at a ready version; serving follows within a second."""
        result = await self.store.set_alias(name, alias, version)
        await self.publish(name)
        return result

    async def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        await self.store.delete_alias(name, alias)
        await self.publish(name)

    async def set_traffic(self, name: str, weights: dict[int, int]):
        """Split unversioned calls between versions by weight (empty: no split)."""
        result = await self.store.set_traffic(name, weights)
        await self.publish(name)
        return result

    async def update_config(self, name: str, version: int, overrides: dict) -> ModelVersion:
        """Change a version's serving config; workers reload it with the new settings."""
        current = await self.store.get_version(name, version)
        config = merge_config(current.config, overrides)
        check_config(config, current.inputs, current.outputs)
        result = await self.store.update_config(name, version, config)
        await self.publish(name)
        await self._retire(name, [version])
        return result

    async def set_loaded(self, name: str, loaded: bool, version: int | None = None) -> None:
        """Triton's load/unload: the desired state of one version, or of every version."""
        model = await self.store.get_model(name)
        touched = []
        for entry in model.versions:
            if version is None or entry.version == version:
                await self.store.set_loaded(name, entry.version, loaded)
                touched.append(entry.version)
        await self.publish(name)
        await self._retire(name, touched)

    async def _apply_version_policy(self, name: str, proto) -> list[int]:
        """Load the versions config.pbtxt's ``version_policy`` serves; unload the others.
        Returns the versions it set (every live one)."""
        model = await self.store.get_model(name)
        live = [v.version for v in model.versions if v.state != DELETED]
        keep = triton.selected_versions(proto, live)
        for number in live:
            await self.store.set_loaded(name, number, number in keep)
        return live

    async def _retire(self, name: str, versions: list[int]) -> None:
        """The response cache never serves these versions' answers stored until now (after the
        catalog says what changed, so a call that misses meanwhile stores under the new token
        an answer of the version as it is now)."""
        if self.generations is not None:
            await self.generations.renew(name, versions)

    async def _catalog_entry(self, name: str) -> bytes | None:
        """The model's encoded catalog entry from PostgreSQL (None: no live version)."""
        try:
            model: Model | None = await self.store.get_model(name)
        except NotFound:
            model = None
        live = [v for v in model.versions if v.state != DELETED] if model else []
        if not live:
            return None
        entry = CatalogEntry(
            versions=[to_spec(v) for v in live],
            aliases={a.name: a.version for a in model.aliases},
            split={t.version: t.weight for t in model.traffic},
        )
        return encode(entry)

    async def publish(self, name: str) -> None:
        """Rewrite the model's catalog entry from PostgreSQL and tell the workers."""
        entry = await self._catalog_entry(name)
        if entry is None:
            await self.redis.hdel(self.keys.catalog, name)
        else:
            await self.redis.hset(self.keys.catalog, name, entry)
        await self.redis.publish(self.keys.events, b"catalog")

    async def publish_all(self) -> int:
        """Rebuild the whole catalog from PostgreSQL (at start, or after Redis lost it).

        Every entry is written in one command: a catalog rebuilt after a Redis restart never
        shows some models while others are still missing (they would answer 404).
        """
        names = [m.name for m in await self.store.list_models()]
        entries = {name: await self._catalog_entry(name) for name in names}
        live = {name: entry for name, entry in entries.items() if entry is not None}
        known = {n.decode() for n in await self.redis.hkeys(self.keys.catalog)}
        if live:
            await self.redis.hset(self.keys.catalog, mapping=live)
        for stale in known - set(live):
            await self.redis.hdel(self.keys.catalog, stale)
        await self.redis.publish(self.keys.events, b"catalog")
        return len(names)

    async def import_repository(self, root: Path, *, created_by: str = "import") -> list[str]:
        """Seed from a Triton model repository: each ``<name>/<version>/model.onnx`` not yet
        present (by sha256) becomes a new version, with ``<name>/config.pbtxt`` then
        ``<name>/inferbox.json`` as its config. Versions outside config.pbtxt's
        ``version_policy`` (Triton's default: the latest) are imported unloaded.

        Returns one line per file: what happened to it, with the config.pbtxt fields it does
        not honour named.
        """
        report = []
        seen: dict[str, set[str]] = {}
        for entry in await asyncio.to_thread(list_repository, root):
            label = f"{entry.name}/{entry.version}" if entry.version else entry.name
            if entry.problem or entry.path is None:
                report.append(f"{label}: skipped ({entry.problem})")
                continue
            if entry.name not in seen:
                try:
                    model = await self.store.get_model(entry.name)
                    seen[entry.name] = {v.sha256 for v in model.versions if v.state != DELETED}
                except NotFound:
                    seen[entry.name] = set()
            sha256, _ = await asyncio.to_thread(file_sha256, entry.path)
            if sha256 in seen[entry.name]:
                report.append(f"{label}: already present")
                continue
            try:
                version = await self.push(
                    entry.name,
                    _file_chunks(entry.path),
                    created_by=created_by,
                    config=entry.config,
                    triton_config=entry.triton_config,
                    apply_version_policy=False,
                )
            except InferboxError as exc:
                report.append(f"{label}: rejected: {exc.message}")
                continue
            seen[entry.name].add(sha256)
            line = f"{label}: imported as version {version.version}"
            if not entry.selected:
                await self.set_loaded(entry.name, False, version.version)
                line += " (unloaded: outside config.pbtxt's version_policy)"
            if version.config.not_honoured:
                line += "; config.pbtxt fields not honoured: " + ", ".join(
                    version.config.not_honoured
                )
            report.append(line)
        return report


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, 1 << 20):
            yield chunk
