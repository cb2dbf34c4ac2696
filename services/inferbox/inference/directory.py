"""An API process's view of the catalog and of which versions are ready, briefly cached.

Every call needs its model's spec and readiness; both are read from Redis in one round trip
and trusted for ``Settings.status_cache_s`` so the hot path usually makes no trip at all.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
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

log = structlog.get_logger(__name__)

PRODUCTION = "production"


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
        self._fetching: dict[str, asyncio.Future[_Cached]] = {}
        self._asked: dict[tuple[str, int], float] = {}
        self._workers = 0
        self._workers_checked = -1e9
        self.expect_catalog = True
        """Whether the registry has models (so a missing catalog means Redis lost it)."""

    async def _fetch(self, name: str) -> _Cached:
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached.fetched < self.ttl_s:
            return cached
        # One read per model at a time: when the copy expires under load, every call in
        # flight would otherwise read the same keys at once.
        pending = self._fetching.get(name)
        if pending is None:
            pending = self._fetching[name] = asyncio.ensure_future(self._read(name))
            pending.add_done_callback(lambda done: self._fetched(name, done))
        return await asyncio.shield(pending)

    def _fetched(self, name: str, done: asyncio.Future) -> None:
        self._fetching.pop(name, None)
        if not done.cancelled():
            # Marks the error as seen even when every caller that waited for it has left.
            done.exception()

    async def _read(self, name: str) -> _Cached:
        now = time.monotonic()
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(self.keys.catalog)
            pipe.hget(self.keys.catalog, name)
            pipe.hgetall(self.keys.status(name))
            catalog_exists, raw, statuses = await pipe.execute()
        except RedisError as exc:
            log.warning("reading the catalog failed", model=name[:128], error=repr(exc)[:300])
            raise Unavailable("the model catalog is unreachable") from exc
        if not catalog_exists and self.expect_catalog:
            # No catalog at all (not just no such model) though the registry has models:
            # Redis came back empty and the API is rebuilding it from PostgreSQL
            # (``keep_catalog``); a 404 now would be wrong. Not cached.
            raise Unavailable("the model catalog is being rebuilt")
        cached = _Cached(now, decode_entry(raw) if raw else None, statuses)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = cached
        return cached

    async def resolve(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec a call is for.

        ``version`` may be a number or an alias. Without one: the traffic split when set (a
        weighted draw), else the ``production`` alias, else the newest version a worker has
        ready (else the newest).
        """
        cached = await self._fetch(name)
        entry = cached.entry
        if entry is None or not entry.versions:
            raise NotFound(f"unknown model {name!r}")
        if version is None:
            number = self._unversioned(entry, cached)
        elif version.isdigit():
            number = int(version)
        else:
            number = entry.aliases.get(version)
            if number is None:
                raise NotFound(f"unknown version or alias {version!r} of model {name!r}")
        spec = entry.get(number)
        if spec is None:
            raise NotFound(f"unknown version {number} of model {name!r}")
        return spec

    @staticmethod
    def _unversioned(entry: CatalogEntry, cached: _Cached) -> int:
        if entry.split:
            versions = list(entry.split)
            return random.choices(versions, weights=[entry.split[v] for v in versions])[0]
        production = entry.aliases.get(PRODUCTION)
        if production is not None:
            return production
        for spec in reversed(entry.versions):
            if cached.availability(spec.version).ready:
                return spec.version
        return entry.versions[-1].version

    async def admit(self, spec: ModelSpec) -> None:
        """Raise ``Unavailable`` unless calls to ``spec`` can be queued now.

        A version no worker holds (never loaded, or evicted to make room) is asked for: the
        workers load it, and the call waits in the queue meanwhile instead of failing.
        """
        label = f"model {spec.name!r} version {spec.version}"
        if spec.error:
            raise Unavailable(f"{label} is not usable: {spec.error}")
        if not spec.loaded:
            raise Unavailable(f"{label} is unloaded (POST /v2/repository/models/{spec.name}/load)")
        cached = await self._fetch(spec.name)
        available = cached.availability(spec.version)
        if available.ready:
            return
        if available.reason and available.reason.startswith("failed"):
            raise Unavailable(f"{label} is not ready: {available.reason}")
        now = time.monotonic()
        try:
            if now - self._workers_checked > self.ttl_s:
                self._workers = await self.workers_alive()
                self._workers_checked = now
            if self._workers == 0:
                raise Unavailable("no worker is running")
            key = (spec.name, spec.version)
            if now - self._asked.get(key, 0.0) > 1.0:
                self._asked[key] = now
                await self.client.publish(self.keys.events, f"want:{spec.name}:{spec.version}")
        except RedisError as exc:
            log.warning("checking workers failed", model=spec.name, error=repr(exc)[:300])
            raise Unavailable("the model catalog is unreachable") from exc

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
        if not spec.loaded:
            return ModelAvailability(ready=False, reason="unloaded")
        cached = await self._fetch(spec.name)
        return cached.availability(spec.version)

    async def workers_alive(self) -> int:
        """How many workers heartbeat now (uncached: used by readiness probes only)."""
        return len(live_workers(await self.client.hgetall(self.keys.workers)))
