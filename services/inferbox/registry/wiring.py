"""Building the registry's parts from ``Settings`` (shared by the API and the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager

import psycopg
import redis.asyncio as aioredis

from inferbox.cache.generations import Generations
from inferbox.config import Settings
from inferbox.keys import Keys
from inferbox.registry.objects import ObjectStore
from inferbox.registry.service import RegistryService
from inferbox.registry.store import RegistryStore, create_pool
from inferbox.registry.validate import ValidationLimits


def object_store(settings: Settings) -> ObjectStore:
    """The S3 store of model files."""
    return ObjectStore(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_bucket,
        secure=settings.s3_secure,
        region=settings.s3_region,
        timeout_s=settings.s3_timeout_s,
    )


@asynccontextmanager
async def registry_service(settings: Settings, redis: aioredis.Redis, objects: ObjectStore):
    """A ``RegistryService`` with its own PostgreSQL pool (and, with a response cache, its
    generation tokens' client), open for the block's duration."""
    generations = (
        Generations(settings.cache_url, Keys(settings.key_prefix)) if settings.cache_url else None
    )
    async with (
        create_pool(
            settings.database_url, max_size=8, timeout_s=settings.database_timeout_s
        ) as pool,
        contextlib.aclosing(generations) if generations else contextlib.nullcontext(),
    ):
        yield RegistryService(
            RegistryStore(pool),
            objects,
            redis,
            Keys(settings.key_prefix),
            upload_dir=settings.upload_dir,
            max_model_bytes=settings.max_model_bytes,
            limits=ValidationLimits(
                max_bytes=settings.max_model_bytes,
                memory_bytes=settings.validation_memory_bytes,
                timeout_s=settings.validation_timeout_s,
            ),
            default_max_batch_size=settings.default_max_batch_size,
            default_max_queue_size=settings.default_max_queue_size,
            generations=generations,
        )


def create_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` if it does not exist; True if created."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.get("dbname")
    try:
        psycopg.connect(database_url).close()
        return False
    except psycopg.OperationalError as exc:
        if not name or "does not exist" not in str(exc):
            raise
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return True


async def with_registry(settings: Settings, action):
    """Run ``action(registry)`` with a registry service opened from ``settings`` (its bucket
    made if missing), then close it; what ``action`` returns."""
    client = aioredis.Redis.from_url(settings.redis_url)
    objects = object_store(settings)
    await asyncio.to_thread(objects.ensure_bucket)
    try:
        async with registry_service(settings, client, objects) as registry:
            return await action(registry)
    finally:
        await client.aclose()
