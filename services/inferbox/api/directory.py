"""An API process's view of the catalog and of which versions are ready, briefly cached.

Every call needs its model's spec and readiness; both are read from Redis in one round trip
and trusted for ``Settings.status_cache_s`` so the hot path usually makes no trip at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inferbox.errors import NotFound, Unavailable
from inferbox.keys import Keys
from inferbox.models.catalog import (
    CatalogEntry,
    ModelAvailability,
    decode_entry,
    live_workers,
    summarize,
)
from inferbox.models.spec import ModelSpec


@dataclass(slots=True)
class _Cached:
    fetched: float
    entry: CatalogEntry | None
    statuses: dict[bytes, bytes]
    # Availability per version, computed at most once per fetch (it decodes JSON).
    available: dict[int, ModelAvailability] = field(default_factory=dict)

    def availability(self, version: int) -> ModelAvailability:
        result = self.available.get(version)
        if result is None:
            result = self.available[version] = summarize(self.statuses, version, time.time())
        return result


class ModelDirectory:
    """Resolves ``(name, version)`` to a spec and says whether a worker serves it."""

    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float):
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._cache: dict[str, _Cached] = {}

    async def _fetch(self, name: str) -> _Cached:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and now - cached.fetched < self.ttl_s:
            return cached
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self.keys.catalog, name)
            pipe.hgetall(self.keys.status(name))
            raw, statuses = await pipe.execute()
        except RedisError as exc:
            raise Unavailable("the model catalog is unreachable") from exc
        cached = _Cached(now, decode_entry(raw) if raw else None, statuses)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = cached
        return cached

    async def resolve(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec for a version number, or for the newest ready version when none is given."""
        cached = await self._fetch(name)
        if cached.entry is None or not cached.entry.versions:
            raise NotFound(f"unknown model {name!r}")
        if version is None:
            for spec in reversed(cached.entry.versions):
                if cached.availability(spec.version).ready:
                    return spec
            return cached.entry.versions[-1]
        if not version.isdigit():
            raise NotFound(f"unknown version {version!r} of model {name!r}")
        spec = cached.entry.get(int(version))
        if spec is None:
            raise NotFound(f"unknown version {version!r} of model {name!r}")
        return spec

    async def versions(self, name: str) -> list[ModelSpec]:
        """Every version of a model, oldest first."""
        cached = await self._fetch(name)
        if cached.entry is None:
            raise NotFound(f"unknown model {name!r}")
        return cached.entry.versions

    async def availability(self, spec: ModelSpec) -> ModelAvailability:
        """Whether a live worker has this version ready, and if not, why."""
        if spec.error:
            return ModelAvailability(ready=False, reason=spec.error)
        cached = await self._fetch(spec.name)
        return cached.availability(spec.version)

    async def workers_alive(self) -> int:
        """How many workers heartbeat now (uncached: used by readiness probes only)."""
        return len(live_workers(await self.client.hgetall(self.keys.workers)))
