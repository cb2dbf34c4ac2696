"""The model catalog and worker status, kept in Redis.

The catalog maps a model name to the specs of all its versions; workers publish, per version,
whether they have it loaded (``ready``), are loading it, or failed (with the reason). An entry
counts only while its ``expires`` time lies ahead: a worker that stops heartbeating stops
counting without anyone cleaning up after it.
"""

from __future__ import annotations

import time

import msgspec

from inferbox.keys import Keys
from inferbox.models.spec import ModelSpec

READY = "ready"
LOADING = "loading"
FAILED = "failed"


class CatalogEntry(msgspec.Struct):
    """Every known version of one model, its aliases and its traffic split."""

    versions: list[ModelSpec]
    aliases: dict[str, int] = msgspec.field(default_factory=dict)
    """Alias name -> version (``production``, ``canary``, any name)."""
    split: dict[int, int] = msgspec.field(default_factory=dict)
    """Version -> weight for unversioned calls; empty: ``production``, else the newest ready."""

    def get(self, version: int) -> ModelSpec | None:
        """The spec of ``version``, if present."""
        for spec in self.versions:
            if spec.version == version:
                return spec
        return None


class VersionStatus(msgspec.Struct):
    """One worker's state for one model version."""

    state: str
    expires: float
    reason: str | None = None
    providers: list[str] = msgspec.field(default_factory=list)


class WorkerInfo(msgspec.Struct):
    """A live worker as it announces itself."""

    pid: int
    host: str
    expires: float
    device: str = "cpu"
    """``cuda`` when a CUDA session really runs here, else ``cpu``."""


encode = msgspec.json.Encoder().encode
decode_entry = msgspec.json.Decoder(CatalogEntry).decode
decode_status = msgspec.json.Decoder(VersionStatus).decode
decode_worker = msgspec.json.Decoder(WorkerInfo).decode


class ModelAvailability(msgspec.Struct):
    """What the workers say about one version, reduced for the API."""

    ready: bool
    reason: str | None = None


def summarize(statuses: dict[bytes, bytes], version: int, now: float) -> ModelAvailability:
    """Ready if any live worker has ``version`` ready; otherwise the most telling reason."""
    prefix = f"{version}/".encode()
    reason = "no worker has loaded this version"
    for field, raw in statuses.items():
        if not field.startswith(prefix):
            continue
        status = decode_status(raw)
        if status.expires < now:
            continue
        if status.state == READY:
            return ModelAvailability(ready=True)
        if status.state == FAILED:
            reason = f"failed to load: {status.reason}"
        elif status.state == LOADING and not reason.startswith("failed"):
            reason = "loading"
    return ModelAvailability(ready=False, reason=reason)


def live_workers(
    raw_workers: dict[bytes, bytes], now: float | None = None
) -> dict[str, WorkerInfo]:
    """Workers whose heartbeat has not expired."""
    now = time.time() if now is None else now
    workers = {}
    for worker_id, raw in raw_workers.items():
        info = decode_worker(raw)
        if info.expires >= now:
            workers[worker_id.decode()] = info
    return workers


def put_specs(redis, keys: Keys, specs: list[ModelSpec]) -> None:
    """Add or replace versions in the catalog (sync client) and tell the workers."""
    by_name: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    for name, new in by_name.items():
        raw = redis.hget(keys.catalog, name)
        versions = {s.version: s for s in (decode_entry(raw).versions if raw else [])}
        versions.update({s.version: s for s in new})
        entry = CatalogEntry(versions=sorted(versions.values(), key=lambda s: s.version))
        redis.hset(keys.catalog, name, encode(entry))
    redis.publish(keys.events, b"catalog")


def read_catalog(redis, keys: Keys) -> dict[str, CatalogEntry]:
    """Every model in the catalog (sync client)."""
    return {name.decode(): decode_entry(raw) for name, raw in redis.hgetall(keys.catalog).items()}


def servable_versions(redis, keys: Keys) -> dict[tuple[str, int], ModelSpec]:
    """The versions a worker should hold: marked loaded and without a load error, by
    ``(name, version)`` (sync client)."""
    return {
        (name, spec.version): spec
        for name, entry in read_catalog(redis, keys).items()
        for spec in entry.versions
        if spec.loaded and not spec.error
    }
