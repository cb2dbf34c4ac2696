"""Large inputs through a shared directory, against a real Redis and a real batch loop: the
stream carries only the header, answers are the same bit for bit, no file outlives its call,
and every way the directory can be missing ends in an answer, never a lost call."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from inferbox.errors import DeadlineExceeded, InferboxError
from inferbox.keys import Keys
from inferbox.lanes.client import InteractiveClient
from inferbox.lanes.consumer import LaneConsumer
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_reply, encode_call, unbundle_replies
from inferbox.models.spec import spec_from_onnx
from inferbox.testing import onnx_models
from inferbox.worker.runtime import load_model
from inferbox.worker.serving import ModelServer
from tests.support.redis import REDIS_URL, delete_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(redis_client):
    keys = Keys(f"ibfile-{uuid.uuid4().hex[:8]}")
    yield keys
    delete_prefix(redis_client, keys.prefix)


@pytest.fixture
def model(tmp_path):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "mlp.onnx"), max_batch_size=8)
    return load_model(spec)


@pytest.fixture
def serve(redis_client, keys, model):
    """Starts the model's batch loop with a given tensor directory (stopped after the test)."""
    servers: list[ModelServer] = []

    def start(tensor_dir) -> ModelServer:
        server = ModelServer(
            model, redis_client, keys, "w", block_ms=50, claim_idle_ms=60_000, tensor_dir=tensor_dir
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(5)


def _header(rows: int) -> CallHeader:
    return CallHeader(
        channel="",
        token="",
        deadline=time.time() + 60,
        inputs=[TensorMeta("x", "FP32", [rows, 64])],
    )


def _rows(rows: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32).tobytes()


async def _call(client, keys, rows: int, timeout_s: float = 10, seed: int = 0):
    _, raws = await client.call(
        keys.stream("mlp", 1, "hi"),
        _header(rows),
        [_rows(rows, seed)],
        max_queue=100,
        timeout_s=timeout_s,
    )
    return bytes(raws[0])


async def test_a_large_call_travels_as_a_file_and_is_answered_bit_for_bit(
    redis_client, keys, serve, tmp_path
):
    shared = tmp_path / "tensors"
    shared.mkdir()
    by_file = InteractiveClient(REDIS_URL, keys, tensor_dir=str(shared), tensor_file_min_bytes=1024)
    inline = InteractiveClient(REDIS_URL, keys)
    await by_file.start()
    await inline.start()
    stream = keys.stream("mlp", 1, "hi")
    try:
        # No worker yet: the queued entry holds the header alone, its inputs are in the file.
        waiting = asyncio.create_task(_call(by_file, keys, 4))
        for _ in range(100):
            if redis_client.xlen(stream):
                break
            await asyncio.sleep(0.01)
        redis_client.xgroup_create(stream, "workers", id="0", mkstream=True)
        [(_, fields)] = redis_client.xrange(stream)
        assert list(fields) == [b"h"]
        [file] = list(shared.iterdir())
        assert file.read_bytes() == _rows(4)
        serve(str(shared))
        answered = await waiting
        assert answered == await _call(inline, keys, 4)  # the same bytes through Redis
        assert list(shared.iterdir()) == []  # no file outlives its call
        # A small call stays inline; several large ones batch together with it.
        results = await asyncio.gather(*(_call(by_file, keys, n, seed=n) for n in (1, 3, 2)))
        expected = [await _call(inline, keys, n, seed=n) for n in (1, 3, 2)]
        assert results == expected
        assert list(shared.iterdir()) == []
    finally:
        await by_file.close()
        await inline.close()


async def test_a_call_that_ends_unanswered_leaves_neither_entry_nor_file(
    redis_client, keys, tmp_path
):
    client = InteractiveClient(REDIS_URL, keys, tensor_dir=str(tmp_path), tensor_file_min_bytes=1)
    try:
        with pytest.raises(DeadlineExceeded):
            await _call(client, keys, 2, timeout_s=0.2)
        assert redis_client.xlen(keys.stream("mlp", 1, "hi")) == 0
        assert list(tmp_path.iterdir()) == []
    finally:
        await client.close()


async def test_a_directory_that_cannot_be_written_sends_the_inputs_through_redis(
    keys, serve, tmp_path
):
    missing = tmp_path / "not-there"
    serve(None)
    client = InteractiveClient(REDIS_URL, keys, tensor_dir=str(missing), tensor_file_min_bytes=1)
    inline = InteractiveClient(REDIS_URL, keys)
    await client.start()
    await inline.start()
    try:
        assert await _call(client, keys, 3) == await _call(inline, keys, 3)
    finally:
        await client.close()
        await inline.close()


async def test_a_worker_that_does_not_share_the_directory_answers_503_at_once(
    keys, serve, tmp_path
):
    serve(None)  # this worker was given no tensor directory
    shared = tmp_path / "tensors"
    shared.mkdir()
    client = InteractiveClient(REDIS_URL, keys, tensor_dir=str(shared), tensor_file_min_bytes=1)
    await client.start()
    try:
        started = time.monotonic()
        with pytest.raises(InferboxError, match="INFERBOX_TENSOR_DIR") as refused:
            await _call(client, keys, 2, timeout_s=10)
        assert refused.value.status == 503
        assert time.monotonic() - started < 5
        assert list(shared.iterdir()) == []
    finally:
        await client.close()


def test_an_expired_call_whose_file_is_gone_is_dropped_without_an_answer(
    redis_client, keys, tmp_path
):
    consumer = LaneConsumer(redis_client, keys, "mlp", 1, "w", str(tmp_path))
    consumer.ensure_groups()
    stream = keys.stream("mlp", 1, "hi")
    channel = keys.reply_channel("test")
    header = _header(1)
    header.channel, header.token, header.deadline = channel, "t", time.time() - 1
    header.file, header.sizes = f"{uuid.uuid4().hex}-1", [256]
    pubsub = redis_client.pubsub()
    pubsub.subscribe(channel)
    redis_client.xadd(stream, encode_call(header, []))
    try:
        high, low = consumer.read(10, None)
        consumer.flush()
        assert high == low == []
        assert redis_client.xlen(stream) == 0  # acknowledged and deleted
        message = pubsub.get_message(timeout=0.5)  # the subscription confirmation
        assert message is None or message["type"] == "subscribe"
        assert pubsub.get_message(timeout=0.2) is None
    finally:
        pubsub.close()
        consumer.close()


def test_a_live_call_whose_file_is_missing_is_answered_503(redis_client, keys, tmp_path):
    consumer = LaneConsumer(redis_client, keys, "mlp", 1, "w", str(tmp_path))
    consumer.ensure_groups()
    channel = keys.reply_channel("test")
    header = _header(1)
    header.channel, header.token = channel, "t"
    header.file, header.sizes = f"{uuid.uuid4().hex}-1", [256]
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    redis_client.xadd(keys.stream("mlp", 1, "hi"), encode_call(header, []))
    try:
        assert consumer.read(10, None) == ([], [])
        consumer.flush()
        message = None
        for _ in range(20):
            message = pubsub.get_message(timeout=0.1)
            if message:
                break
        [reply] = unbundle_replies(message["data"])
        answer, _ = decode_reply(reply)
        assert answer.status == 503 and "is not in" in answer.error
    finally:
        pubsub.close()
        consumer.close()
