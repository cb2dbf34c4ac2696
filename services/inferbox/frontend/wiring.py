"""``open_serving(settings)``: what a front end serves with, opened from one ``Settings``.

The HTTP API (its Litestar lifespan) and the gRPC server open the same things the same way:
the Redis client, the interactive lane, the response cache, the model directory, the
inference service, the registry with its PostgreSQL pool, API keys with their cache, limits and
audit, the readiness probes, and the task that rebuilds the catalog when Redis loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

import redis
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from inferbox.cache.client import ResponseCache
from inferbox.config import Settings
from inferbox.frontend.health import Dependencies, keep_catalog
from inferbox.inference.directory import ModelDirectory
from inferbox.inference.service import InferenceService
from inferbox.inference.validation import tensor_limits
from inferbox.keys import Keys
from inferbox.lanes.client import InteractiveClient
from inferbox.protocol.codec import TensorLimits
from inferbox.registry.objects import ObjectStore
from inferbox.registry.service import RegistryService
from inferbox.registry.wiring import object_store, registry_service
from inferbox.security.audit import AuditLog
from inferbox.security.auth import Gate, trusted_networks
from inferbox.security.keystore import KeyCache, KeyStore
from inferbox.security.limits import Limiter

log = structlog.get_logger(__name__)


def redis_client(url: str) -> aioredis.Redis:
    """A front end's asyncio Redis client (everything but the inference hot path).

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


@dataclass
class Serving:
    """The services a front end calls, open for as long as ``open_serving``'s block runs."""

    settings: Settings
    limits: TensorLimits
    """Request tensor bounds (``TensorLimits``) every decoder checks."""
    redis: aioredis.Redis
    redis_keys: Keys
    lane: InteractiveClient
    directory: ModelDirectory
    inference: InferenceService
    objects: ObjectStore
    registry: RegistryService
    keystore: KeyStore
    audit: AuditLog
    trusted_proxies: list[IPv4Network | IPv6Network]
    dependencies: Dependencies
    """PostgreSQL and S3 probes for readiness."""
    key_cache: KeyCache | None = None
    gate: Gate | None = None
    """The API key gate; None when ``auth_enabled`` is off."""


@contextlib.asynccontextmanager
async def open_serving(settings: Settings) -> AsyncIterator[Serving]:
    """Open everything a front end serves with; close it when the block ends."""
    client = redis_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    lane = InteractiveClient.from_settings(settings, keys)
    cache = ResponseCache.from_settings(settings, keys, "infer")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        await lane.start()
        stack.push_async_callback(lane.close)
        if cache is not None:
            await cache.start()
            stack.push_async_callback(cache.close)
        directory = ModelDirectory(client, keys, settings.status_cache_s)
        objects = object_store(settings)
        await asyncio.to_thread(objects.ensure_bucket)
        registry = await stack.enter_async_context(registry_service(settings, client, objects))
        pool = registry.store.pool
        serving = Serving(
            settings=settings,
            limits=tensor_limits(settings),
            redis=client,
            redis_keys=keys,
            lane=lane,
            directory=directory,
            inference=InferenceService.from_settings(settings, lane, directory, keys, cache),
            objects=objects,
            registry=registry,
            keystore=KeyStore(pool),
            audit=AuditLog(pool, client, keys, settings.audit_failure_window_s),
            trusted_proxies=trusted_networks(settings.trusted_proxies),
            dependencies=Dependencies(pool, settings.s3_endpoint, s3_secure=settings.s3_secure),
        )
        if settings.auth_enabled:
            key_cache = KeyCache(serving.keystore, client, keys, ttl_s=settings.key_cache_s)
            await key_cache.start()
            stack.push_async_callback(key_cache.close)
            # Limits go over the lane's hot-path connection (two commands per limited call).
            limiter = Limiter(client, keys, settings.slot_ttl_s, connection=lane.commands)
            serving.key_cache = key_cache
            serving.gate = Gate(key_cache, limiter, serving.audit, serving.trusted_proxies)
        else:
            log.warning("API keys are not required: INFERBOX_AUTH_ENABLED is false")
        # Redis may have lost the catalog (restart without data): rebuild it now, and whenever
        # it goes missing later.
        keeper = asyncio.create_task(
            keep_catalog(registry, client, keys, directory), name="catalog"
        )
        stack.callback(keeper.cancel)
        yield serving
