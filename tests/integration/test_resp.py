"""The hot path's Redis connection: pipelined replies in order, errors, pushes, reconnects."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from inferbox.lanes.resp import RespConnection, pack
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def test_pack_is_resp():
    assert b"".join(pack("SET", b"k", 12)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"


async def test_concurrent_commands_get_their_own_replies(redis_client):
    key = f"ibresp-{uuid.uuid4().hex}"
    conn = RespConnection(REDIS_URL)
    try:
        results = await asyncio.gather(*(conn.execute("INCR", key) for _ in range(200)))
        assert sorted(results) == list(range(1, 201))
        assert await conn.execute("GET", key) == b"200"
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await conn.execute("LPUSH", key, "x")
        assert await conn.execute("PING") == b"PONG"
    finally:
        conn.close()
        redis_client.delete(key)


async def test_pushes_reach_the_callback_and_a_killed_connection_reconnects(redis_client):
    channel = f"ibresp-{uuid.uuid4().hex}"
    received: list[bytes] = []
    sub = RespConnection(REDIS_URL, on_push=lambda m: received.append(m[2]))
    conn = RespConnection(REDIS_URL)
    try:
        await sub.execute("SUBSCRIBE", channel)
        await conn.execute("PUBLISH", channel, b"\x00binary\xff")
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [b"\x00binary\xff"]

        await conn.execute("CLIENT", "SETNAME", channel)
        kill_id = next(c["id"] for c in redis_client.client_list() if c["name"] == channel)
        redis_client.client_kill_filter(_id=kill_id)
        await asyncio.wait_for(conn.lost, 5)
        # The next command reconnects by itself.
        assert await conn.execute("PING") == b"PONG"
    finally:
        sub.close()
        conn.close()


async def test_an_unreachable_redis_is_a_connection_error():
    conn = RespConnection("redis://127.0.0.1:1/0")
    with pytest.raises(RedisConnectionError):
        await conn.execute("PING")
