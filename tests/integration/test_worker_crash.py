"""A worker killed mid-batch: a live worker claims its calls and answers them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import numpy as np
import pytest

from inferbox.keys import CONSUMER_GROUP, Keys
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_reply, encode_call, unbundle_replies
from inferbox.models.catalog import put_specs
from inferbox.models.repository import scan_repository
from inferbox.testing import onnx_models
from tests.support.paths import INFERBOX
from tests.support.processes import stop_process
from tests.support.redis import REDIS_URL, delete_prefix
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _worker(prefix: str, name: str, log) -> subprocess.Popen:
    env = {
        **os.environ,
        "INFERBOX_REDIS_URL": REDIS_URL,
        "INFERBOX_KEY_PREFIX": prefix,
        "INFERBOX_WORKER_ID": name,
        "INFERBOX_WORKER_LOCAL_MODEL_PATHS": "true",  # the catalog names files on disk
        "INFERBOX_WORKER_CLAIM_IDLE_MS": "1500",
        "INFERBOX_WORKER_BLOCK_MS": "200",
    }
    with log.open("wb") as out:
        return subprocess.Popen([INFERBOX, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)


def test_calls_of_a_killed_worker_are_answered_by_another(redis_client, tmp_path):
    prefix = f"ibcrash-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    onnx_models.slow(tmp_path / "repo" / "slow" / "1" / "model.onnx")
    (tmp_path / "repo" / "slow" / "inferbox.json").write_text('{"max_batch_size": 2048}')
    put_specs(redis_client, keys, scan_repository(tmp_path / "repo"))
    stream = keys.stream("slow", 1, "hi")
    status = keys.status("slow")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.reply_channel("crash-test"))
    first = second = None
    try:
        first = _worker(prefix, "first", tmp_path / "first.log")
        wait_for(lambda: redis_client.hget(status, "1/first"), 30, "the first worker to load")
        wait_for(lambda: b'"ready"' in redis_client.hget(status, "1/first"), 30, "ready")
        x = np.ones((2048, 1024), np.float32)
        header = CallHeader(
            channel=keys.reply_channel("crash-test"),
            token="t1",
            deadline=time.time() + 60,
            inputs=[TensorMeta("x", "FP32", list(x.shape))],
        )
        redis_client.xadd(stream, encode_call(header, [x.tobytes()]))
        wait_for(
            lambda: redis_client.xpending(stream, CONSUMER_GROUP)["pending"] == 1,
            10,
            "the first worker to take the call",
            0.01,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _worker(prefix, "second", tmp_path / "second.log")
        message = None
        deadline = time.monotonic() + 45
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
        assert message is not None, (tmp_path / "second.log").read_text()[-2000:]
        (reply,) = [decode_reply(r) for r in unbundle_replies(message["data"])]
        header, _raws = reply
        assert header.token == "t1" and header.error is None
        assert header.outputs[0].shape == [2048, 1024]
        wait_for(lambda: redis_client.xlen(stream) == 0, 5, "the entry to be deleted")
        assert redis_client.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    finally:
        pubsub.close()
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)
        delete_prefix(redis_client, prefix)
