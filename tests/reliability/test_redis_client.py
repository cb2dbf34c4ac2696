"""The API's Redis client after a Redis restart: no request pays for a dead pooled connection."""

from __future__ import annotations

import asyncio

import pytest

from inferbox.frontend.wiring import redis_client
from tests.support.redis import RedisServer

pytestmark = pytest.mark.integration


async def test_pooled_connections_that_died_with_a_restart_are_replaced_without_an_error(
    tmp_path,
):
    server = RedisServer(tmp_path)
    server.start()
    client = redis_client(server.url)
    try:
        await client.set("k", "v")
        # Many connections in the pool, all of which die with the restart.
        assert await asyncio.gather(*(client.get("k") for _ in range(20))) == [b"v"] * 20
        server.kill()
        server.start()
        for _ in range(40):
            assert await client.get("k") == b"v"
    finally:
        await client.aclose()
        server.kill()
