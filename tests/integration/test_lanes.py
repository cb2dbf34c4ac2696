"""The interactive lane against a real Redis: priorities, claiming orphans, acknowledging."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid

import numpy as np
import pytest
import redis

from inferbox.errors import DeadlineExceeded, Unavailable
from inferbox.keys import CONSUMER_GROUP, Keys
from inferbox.lanes.client import InteractiveClient
from inferbox.lanes.consumer import LaneConsumer
from inferbox.lanes.wire import CallHeader, TensorMeta, encode_call
from inferbox.models.spec import spec_from_onnx
from inferbox.testing import onnx_models
from inferbox.worker.runtime import load_model
from inferbox.worker.serving import ModelServer
from tests.support.redis import REDIS_URL, delete_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(redis_client):
    keys = Keys(f"iblane-{uuid.uuid4().hex[:8]}")
    yield keys
    delete_prefix(redis_client, keys.prefix)


@pytest.fixture
def consumer_for(redis_client, keys):
    """Makes LaneConsumers of the mlp model (closed after the test)."""
    made: list[LaneConsumer] = []

    def make(name: str) -> LaneConsumer:
        made.append(LaneConsumer(redis_client, keys, "mlp", 1, name))
        return made[-1]

    yield make
    for consumer in made:
        consumer.close()


def _queue(redis_client, keys: Keys, lane: str, token: str) -> None:
    header = CallHeader(
        channel=keys.reply_channel("test"),
        token=token,
        deadline=time.time() + 60,
        inputs=[TensorMeta("x", "FP32", [1, 64])],
    )
    redis_client.xadd(
        keys.stream("mlp", 1, lane), encode_call(header, [np.zeros((1, 64), np.float32).tobytes()])
    )


def test_high_priority_calls_come_first_and_low_ones_wait_in_the_backlog(
    redis_client, keys, consumer_for, tmp_path
):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "mlp.onnx"), max_batch_size=3)
    server = ModelServer(
        load_model(spec), redis_client, keys, "w1", block_ms=100, claim_idle_ms=1000
    )
    consumer = consumer_for("w1")
    consumer.ensure_groups()
    for token in ("lo-1", "lo-2"):
        _queue(redis_client, keys, "lo", token)
    for token in ("hi-1", "hi-2"):
        _queue(redis_client, keys, "hi", token)
    backlog = __import__("collections").deque()
    first = server._gather(consumer, backlog)
    assert [c.header.token for c in first] == ["hi-1", "hi-2", "lo-1"]
    assert [c.header.token for c in backlog] == ["lo-2"]
    second = server._gather(consumer, backlog)
    assert [c.header.token for c in second] == ["lo-2"]


def test_calls_of_a_dead_consumer_are_claimed_by_a_live_one(redis_client, keys, consumer_for):
    dead = consumer_for("dead")
    live = consumer_for("live")
    dead.ensure_groups()
    _queue(redis_client, keys, "hi", "orphan")
    high, _ = dead.read(10, None)
    assert [c.header.token for c in high] == ["orphan"]
    assert live.claim(min_idle_ms=10_000, count=10) == []
    time.sleep(0.06)
    claimed = live.claim(min_idle_ms=50, count=10)
    assert [c.header.token for c in claimed] == ["orphan"]
    stream = keys.stream("mlp", 1, "hi")
    live.finish([], [(c.stream, c.entry_id) for c in claimed])
    live.flush()
    assert redis_client.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    assert redis_client.xlen(stream) == 0


async def test_a_full_queue_refuses_a_call_and_leaves_no_entry_behind(redis_client, keys):
    """The bound counts queued and running entries; a refused call is withdrawn again."""
    stream = keys.stream("mlp", 1, "hi")
    _queue(redis_client, keys, "hi", "a")
    _queue(redis_client, keys, "hi", "b")
    client = InteractiveClient(REDIS_URL, keys)
    header = CallHeader(
        channel="", token="", deadline=time.time() + 60, inputs=[TensorMeta("x", "FP32", [1, 64])]
    )
    raw = np.zeros((1, 64), np.float32).tobytes()
    try:
        with pytest.raises(Unavailable, match="queue is full") as refused:
            await client.call(stream, header, [raw], max_queue=2, timeout_s=5)
        assert refused.value.retry_after == 1.0
        assert redis_client.xlen(stream) == 2
        # Below the bound the call is queued (and waits: no worker runs here).
        with pytest.raises(DeadlineExceeded):
            await client.call(stream, header, [raw], max_queue=3, timeout_s=0.2)
        # Not answered within its deadline: the API withdrew it too.
        assert redis_client.xlen(stream) == 2
    finally:
        await client.close()


async def test_queued_bytes_are_bounded_and_given_back(redis_client, keys):
    """Beyond ``max_queued_bytes`` of unanswered calls a call gets 503 at once, whatever the
    entry bound; the bytes count again once a call ends (here: its deadline)."""
    stream = keys.stream("mlp", 1, "hi")
    raw = np.zeros((1, 64), np.float32).tobytes()  # 256 bytes
    client = InteractiveClient(REDIS_URL, keys, max_queued_bytes=400)
    header = CallHeader(
        channel="", token="", deadline=time.time() + 60, inputs=[TensorMeta("x", "FP32", [1, 64])]
    )
    try:
        waiting = asyncio.create_task(
            client.call(stream, header, [raw], max_queue=100, timeout_s=0.5)
        )
        await asyncio.sleep(0.1)
        assert client.queued_bytes == 256
        with pytest.raises(Unavailable, match="queue is full") as refused:
            await client.call(stream, header, [raw], max_queue=100, timeout_s=5)
        assert refused.value.retry_after == 1.0
        assert redis_client.xlen(stream) == 1  # the refused call was never queued
        with pytest.raises(DeadlineExceeded):
            await waiting
        assert client.queued_bytes == 0
        with pytest.raises(DeadlineExceeded):  # room again
            await client.call(stream, header, [raw], max_queue=100, timeout_s=0.1)
    finally:
        await client.close()


@pytest.fixture
def full_redis_url(tmp_path):
    """A Redis of its own with a 4 MiB maxmemory that never evicts (as compose runs the queue's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(tmp_path)]
    command += ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    direct = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            direct.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(10)


async def test_a_queue_redis_at_its_memory_limit_refuses_calls_with_503_and_loses_none(
    full_redis_url, keys
):
    """At its maxmemory the queue's Redis refuses a new call (503 with Retry-After, a message
    that says why), and what was queued before is still there: nothing is evicted."""
    direct = redis.Redis.from_url(full_redis_url)
    client = InteractiveClient(full_redis_url, keys)
    stream = keys.stream("mlp", 1, "hi")
    header = CallHeader(
        channel="", token="", deadline=time.time() + 60, inputs=[TensorMeta("x", "FP32", [1, 64])]
    )
    raw = np.zeros(256 * 1024, np.uint8).tobytes()
    queued = []
    try:
        with pytest.raises(Unavailable, match="memory limit") as refused:
            for _ in range(64):  # 16 MiB: far past the 4 MiB limit
                queued.append(
                    asyncio.create_task(
                        client.call(stream, header, [raw], max_queue=1000, timeout_s=30)
                    )
                )
                await asyncio.sleep(0.01)
                for task in queued:
                    if task.done():
                        task.result()
        assert refused.value.retry_after == 1.0
        assert 0 < direct.xlen(stream) < 64
        assert direct.info("stats")["evicted_keys"] == 0
    finally:
        for task in queued:
            task.cancel()
        await client.close()
