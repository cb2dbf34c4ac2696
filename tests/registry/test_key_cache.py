"""The request path's key lookups: Redis caches records, PostgreSQL answers when it cannot."""

from __future__ import annotations

import json
import uuid

import msgspec
import redis.asyncio as aioredis

from inferbox.keys import Keys
from inferbox.registry.store import create_pool
from inferbox.security.keys import hash_secret, split_key
from inferbox.security.keystore import KeyCache, KeyStore
from tests.support.redis import REDIS_URL


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


async def test_records_planted_in_redis_are_not_believed(registry_db):
    """Whoever can write Redis cannot mint a key, widen one, or hide one: a copy without the
    MAC made with the appliance's secret (kept in PostgreSQL) is deleted and ignored."""
    keys = Keys(f"ibkc-{uuid.uuid4().hex[:8]}")
    live = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with create_pool(registry_db, max_size=2) as pool:
            store = KeyStore(pool)
            record, full = await store.create(name="narrow", scopes=["infer"])
            secret_hash = hash_secret(split_key(full)[1])
            forged = {
                "id": "ibk_Forged01",
                "secret_hash": secret_hash,
                "name": "x",
                "scopes": ["admin"],
                "created_at": "2026-01-01T00:00:00Z",
            }
            await live.set(keys.api_key("ibk_Forged01"), json.dumps(forged))
            widened = msgspec.to_builtins(record) | {"scopes": ["admin"]}
            await live.set(keys.api_key(record.id), b"0" * 64 + json.dumps(widened).encode())
            cache = KeyCache(store, live, keys)
            assert await cache.get("ibk_Forged01") is None
            assert await live.get(keys.api_key("ibk_Forged01")) != json.dumps(forged).encode()
            assert (await cache.get(record.id)).scopes == ["infer"]
            # Hiding a key behind the "unknown id" marker does not work either.
            await live.set(keys.api_key(record.id), b"-")
            assert (await KeyCache(store, live, keys).get(record.id)).scopes == ["infer"]
            # What the cache writes itself it believes (and another process too).
            assert (await KeyCache(store, live, keys).get(record.id)).id == record.id
    finally:
        await live.delete(keys.api_key(record.id), keys.api_key("ibk_Forged01"))
        await live.aclose()
