"""``ResponseCache``'s connection on its own, against a ``redis-server`` of the test's: it comes
back by itself after an outage, without a call to bring it back."""

from __future__ import annotations

import asyncio
import time

import pytest

from inferbox.cache.client import ResponseCache
from inferbox.keys import Keys
from tests.support.redis import CacheRedis

RETRY_S = 0.3


def connected(cache: ResponseCache) -> bool:
    lost = cache.conn.lost
    return lost is not None and not lost.done()


async def eventually(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


@pytest.fixture
def server(tmp_path):
    server = CacheRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def cache(server):
    cache = ResponseCache(server.url, Keys("rc-test"), source="infer", retry_s=RETRY_S)
    yield cache
    await cache.close()


async def test_a_cache_away_at_start_is_connected_once_it_answers(server, cache):
    await cache.start()  # nobody listens yet: calls skip the cache for retry_s
    assert not connected(cache)
    await asyncio.to_thread(server.start)
    assert await eventually(lambda: connected(cache), 5 * RETRY_S + 2)


async def test_a_restarted_cache_is_connected_again_without_a_call(server, cache):
    await asyncio.to_thread(server.start)
    await cache.start()
    assert connected(cache)
    first = cache.conn.lost
    server.kill()
    await asyncio.wait_for(asyncio.shield(first), 5)
    await asyncio.to_thread(server.start)
    assert await eventually(lambda: connected(cache), 5 * RETRY_S + 2)
    assert cache.conn.lost is not first


async def test_a_closed_cache_stays_closed(server, cache):
    await asyncio.to_thread(server.start)
    await cache.start()
    await cache.close()
    await asyncio.sleep(2 * RETRY_S)
    assert not connected(cache)
