"""The hot path's Redis connection: pipelined replies in order, errors, pushes, reconnects."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from inferbox.lanes.resp import BlockingRespConnection, RespConnection, pack
from tests.support.redis import REDIS_URL

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


async def test_a_pipeline_answers_in_order_and_a_refused_command_raises_after_all_replies(
    redis_client,
):
    key = f"ibresp-{uuid.uuid4().hex}"
    conn = RespConnection(REDIS_URL)
    try:
        assert await conn.pipeline(("INCR", key), ("INCR", key), ("GET", key)) == [1, 2, b"2"]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await conn.pipeline(("LPUSH", key, "x"), ("INCR", key))
        # The refused command did not stop the one behind it, and no reply was left unread.
        assert await conn.execute("GET", key) == b"3"
        # Redis closes the connection after QUIT: the command behind it fails as lost, and the
        # next command reconnects.
        with pytest.raises(RedisConnectionError):
            await conn.pipeline(("QUIT",), ("GET", key))
        assert await conn.execute("GET", key) == b"3"
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


def _blocking(redis_client, **options) -> BlockingRespConnection:
    return BlockingRespConnection({**redis_client.connection_pool.connection_kwargs, **options})


def test_blocking_commands_travel_together_and_a_refused_one_raises_after_all_replies(
    redis_client,
):
    key = f"ibresp-{uuid.uuid4().hex}"
    conn = _blocking(redis_client)
    try:
        assert conn.execute([pack("INCR", key) for _ in range(50)]) == list(range(1, 51))
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            conn.execute([pack("LPUSH", key, "x"), pack("INCR", key)])
        # Every reply of the refused batch was read: the next one gets its own answer.
        assert conn.execute([pack("GET", key)]) == [b"51"]
    finally:
        conn.close()
        redis_client.delete(key)


def test_blocking_connection_selects_its_database_and_reconnects_after_a_kill(redis_client):
    key = f"ibresp-{uuid.uuid4().hex}"
    options = redis_client.connection_pool.connection_kwargs
    other_db = redis.Redis(host=options["host"], port=options["port"], db=3)
    conn = _blocking(redis_client, db=3)
    try:
        conn.execute([pack("SET", key, "in-3"), pack("CLIENT", "SETNAME", key)])
        assert other_db.get(key) == b"in-3" and redis_client.get(key) is None
        kill_id = next(c["id"] for c in redis_client.client_list() if c["name"] == key)
        redis_client.client_kill_filter(_id=kill_id)
        with pytest.raises(RedisConnectionError):
            conn.execute([pack("PING")])
        # The next call opens a new connection, in the same database.
        assert conn.execute([pack("GET", key)]) == [b"in-3"]
    finally:
        conn.close()
        other_db.delete(key)
        other_db.close()


def test_a_blocking_read_waits_its_block_and_a_silent_server_times_out(redis_client):
    stream = f"ibresp-{uuid.uuid4().hex}"
    conn = _blocking(redis_client)
    conn.timeout_s = 0.3
    try:
        started = time.monotonic()
        # BLOCK longer than the timeout is fine when the caller says how long it may wait.
        assert conn.execute([pack("XREAD", "BLOCK", 500, "STREAMS", stream, "$")], 0.5) == [None]
        assert time.monotonic() - started >= 0.45
        with pytest.raises(RedisConnectionError):
            conn.execute([pack("XREAD", "BLOCK", 2000, "STREAMS", stream, "$")])
        assert conn.execute([pack("PING")]) == [b"PONG"]
    finally:
        conn.close()


def test_an_unreachable_redis_is_a_connection_error_for_the_blocking_connection():
    with pytest.raises(RedisConnectionError):
        BlockingRespConnection({"host": "127.0.0.1", "port": 1}).execute([pack("PING")])
