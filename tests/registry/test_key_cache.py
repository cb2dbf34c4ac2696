"""The request path's key lookups: Redis caches records, PostgreSQL answers when it cannot."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from inferbox.keys import Keys
from inferbox.registry.store import create_pool
from inferbox.security.keystore import KeyCache, KeyStore
from tests.conftest import REDIS_URL


async def test_a_key_is_found_through_redis_and_without_it(registry_db):
    keys = Keys(f"ibkc-{uuid.uuid4().hex[:8]}")
    live = aioredis.Redis.from_url(REDIS_URL)
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", retry=None)
    try:
        async with create_pool(registry_db, max_size=2) as pool:
            store = KeyStore(pool)
            record, _ = await store.create(name="cache-test", scopes=["infer"])
            # Through Redis: the record is cached there for the other API processes.
            assert (await KeyCache(store, live, keys).get(record.id)).id == record.id
            assert await live.exists(keys.api_key(record.id)) == 1
            # Redis unreachable: PostgreSQL, the source, answers instead of a 503.
            cache = KeyCache(store, dead, keys)
            assert (await cache.get(record.id)).name == "cache-test"
            assert await cache.get("ibk_unknown") is None
    finally:
        await live.delete(keys.api_key(record.id))
        await live.aclose()
        await dead.aclose()
