"""The API's cached view of the catalog: one Redis read per model however many calls ask."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from inferbox.errors import Unavailable
from inferbox.inference.directory import ModelDirectory
from inferbox.keys import Keys
from tests.support.redis import REDIS_URL

pytestmark = pytest.mark.integration


class _CountingClient:
    """A real asyncio Redis client that counts the pipelines made on it."""

    def __init__(self, url: str):
        self.client = aioredis.Redis.from_url(url)
        self.pipelines = 0

    def pipeline(self, **options):
        self.pipelines += 1
        return self.client.pipeline(**options)


async def test_calls_that_find_the_copy_expired_share_one_read():
    counting = _CountingClient(REDIS_URL)
    directory = ModelDirectory(counting, Keys(f"ibdir-{uuid.uuid4().hex[:8]}"), ttl_s=0.2)
    directory.expect_catalog = False
    try:
        first = await asyncio.gather(*(directory._fetch("m") for _ in range(50)))
        assert counting.pipelines == 1
        assert all(cached is first[0] for cached in first)
        await asyncio.sleep(0.25)
        second = await asyncio.gather(*(directory._fetch("m") for _ in range(50)))
        assert counting.pipelines == 2
        assert second[0] is not first[0]
        # A caller that leaves does not cancel the read the others wait for.
        await asyncio.sleep(0.25)
        leaving = asyncio.ensure_future(directory._fetch("m"))
        staying = asyncio.ensure_future(directory._fetch("m"))
        await asyncio.sleep(0)
        leaving.cancel()
        assert (await staying).entry is None
        assert counting.pipelines == 3
    finally:
        await counting.client.aclose()


async def test_a_failed_read_fails_every_waiting_call_and_the_next_one_reads_again():
    counting = _CountingClient("redis://127.0.0.1:1/0")
    directory = ModelDirectory(counting, Keys("ibdir"), ttl_s=10)
    try:
        results = await asyncio.gather(
            *(directory._fetch("m") for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, Unavailable) for r in results)
        assert counting.pipelines == 1
        with pytest.raises(Unavailable):
            await directory._fetch("m")
        assert counting.pipelines == 2
    finally:
        await counting.client.aclose()
