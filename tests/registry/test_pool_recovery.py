"""The registry's connection pool after a PostgreSQL outage: back within seconds of the repair.

psycopg_pool retries a failed connection with a doubling delay (1, 2, 4, 8 s, ...): after a
10 s outage an API process could wait another 8 s before it tried again, answering 503 while
PostgreSQL was already back (and while another API process, retrying on its own schedule,
already said ready). ``create_pool`` bounds that.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from inferbox.registry.store import create_pool
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OUTAGE_S = 8.0


@pytest.fixture
def postgres():
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def _query(pool, timeout_s: float) -> bool:
    try:
        async with pool.connection(timeout=timeout_s) as conn:
            await conn.execute("SELECT 1")
        return True
    except (psycopg.OperationalError, PoolTimeout):
        return False


async def test_connections_come_back_soon_after_a_long_outage(postgres):
    async with create_pool(postgres.conninfo(), max_size=4, timeout_s=2.0) as pool:
        assert await _query(pool, 2.0)
        await asyncio.to_thread(postgres.stop)
        # Requests keep coming while it is down, more than the pool has connections: each
        # fails, and each starts a retry of its own until every slot of the pool is retrying.
        ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < ends:
            assert not await _query(pool, 0.5)
            await asyncio.sleep(0.2)
        await asyncio.to_thread(postgres.start)
        started = time.monotonic()
        while not await _query(pool, 1.0):
            assert time.monotonic() - started < 15, "the pool never reconnected"
        took = time.monotonic() - started
        print(f"reconnected {took:.2f} s after the repair")
        assert took < 3.5, took
