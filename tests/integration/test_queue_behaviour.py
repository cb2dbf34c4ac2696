"""Deadlines, full queues, departed clients, priorities and batching, end to end."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from inferbox.keys import CONSUMER_GROUP
from inferbox.lanes.wire import CallHeader, TensorMeta, encode_call
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _slow_body(rows: int, timeout_us: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary V2 request for the slow model (rows x 1024 FP32)."""
    import json

    data = np.zeros((rows, 1024), np.float32).tobytes()
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [rows, 1024],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    if timeout_us is not None:
        header["parameters"] = {"timeout": timeout_us}
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def _settled(appliance, model: str = "slow") -> None:
    """Wait until no call of an earlier test is queued or running for ``model``."""
    streams = [appliance.keys.stream(model, 1, lane) for lane in ("hi", "lo")]

    def drained():
        return all(
            appliance.redis.xlen(s) == 0
            and appliance.redis.xpending(s, CONSUMER_GROUP)["pending"] == 0
            for s in streams
        )

    wait_for(drained, 10, "the queue to drain")


def _occupy(appliance, rows: int = 512, model: str = "slow") -> threading.Thread:
    """Keep the model's worker busy with one big call, in the background."""
    body, headers = _slow_body(rows)

    def run():
        httpx.post(
            f"{appliance.url}/v2/models/{model}/infer",
            content=body,
            headers={**headers, **appliance.headers},
            timeout=30,
        )

    thread = threading.Thread(target=run)
    thread.start()
    stream = appliance.keys.stream(model, 1, "hi")
    # Delivered to the worker (pending), so later calls cannot join its batch.
    wait_for(
        lambda: appliance.redis.xpending(stream, CONSUMER_GROUP)["pending"] >= 1,
        5,
        "the worker to take the big call",
        0.005,
    )
    return thread


def _ok_calls(appliance) -> float:
    return appliance.metric("inferbox_worker_calls_total", model="slow", outcome="ok")


def _only_one_more_computed(appliance, before: float) -> None:
    """The big call finishes, and nothing else ran after it."""
    wait_for(lambda: _ok_calls(appliance) == before + 1, 5, "the big call to finish")
    time.sleep(0.3)
    assert _ok_calls(appliance) == before + 1


def test_deadline_passes_gives_504_in_time(appliance, http):
    body, headers = _slow_body(512, timeout_us=100_000)
    started = time.monotonic()
    response = http.post("/v2/models/slow/infer", content=body, headers=headers)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert "deadline" in response.json()["error"]
    assert elapsed < 0.6


def test_a_call_that_timed_out_in_the_queue_is_never_computed(appliance, http):
    _settled(appliance)
    ok = _ok_calls(appliance)
    busy = _occupy(appliance)
    body, headers = _slow_body(1, timeout_us=50_000)
    assert http.post("/v2/models/slow/infer", content=body, headers=headers).status_code == 504
    busy.join()
    _only_one_more_computed(appliance, ok)
    assert appliance.redis.xlen(appliance.keys.stream("slow", 1, "hi")) == 0


def test_the_worker_drops_entries_whose_deadline_passed(appliance):
    """An entry the API could not withdraw (it was already past its deadline) is not run."""
    expired = appliance.metric("inferbox_worker_calls_total", model="mlp", outcome="expired")
    header = CallHeader(
        channel=appliance.keys.reply_channel("nobody"),
        token="1",
        deadline=time.time() - 1,
        inputs=[TensorMeta("x", "FP32", [1, 64])],
    )
    fields = encode_call(header, [np.zeros((1, 64), np.float32).tobytes()])
    appliance.redis.xadd(appliance.keys.stream("mlp", 1, "hi"), fields)
    wait_for(
        lambda: (
            appliance.metric("inferbox_worker_calls_total", model="mlp", outcome="expired")
            == expired + 1
        ),
        5,
        "the worker to drop the expired entry",
    )


def test_full_queue_answers_503_with_retry_after(appliance, http):
    _settled(appliance, "slow_queue")
    busy = _occupy(appliance, rows=64, model="slow_queue")
    body, headers = _slow_body(1)
    response = http.post("/v2/models/slow_queue/infer", content=body, headers=headers)
    busy.join()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "queue is full" in response.json()["error"]
    # Once the queue drains the model takes calls again.
    assert (
        http.post("/v2/models/slow_queue/infer", content=body, headers=headers).status_code == 200
    )


def test_a_departed_client_has_its_queued_call_dropped(appliance):
    _settled(appliance)
    ok = _ok_calls(appliance)
    expired = appliance.metric("inferbox_worker_calls_total", model="slow", outcome="expired")
    # The biggest call the model takes (about half a second here, more on a slower machine),
    # and a client that leaves well before it can be done: its call is still queued then.
    busy = _occupy(appliance, rows=1024)
    stream = appliance.keys.stream("slow", 1, "hi")
    body, headers = _slow_body(1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{appliance.url}/v2/models/slow/infer",
            content=body,
            headers={**headers, **appliance.headers},
            timeout=0.1,
        )
    # The API withdraws the call as soon as it sees the client leave.
    wait_for(lambda: appliance.redis.xlen(stream) == 1, 5, "the call to be withdrawn", 0.01)
    busy.join()
    _only_one_more_computed(appliance, ok)
    assert (
        appliance.metric("inferbox_worker_calls_total", model="slow", outcome="expired") == expired
    )


def test_low_priority_calls_are_served(http):
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}],
        "parameters": {"priority": 5},
    }
    response = http.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [1, 10]


def test_concurrent_calls_are_batched(appliance):
    count = appliance.metric("inferbox_batch_size_count", model="mlp_delay")
    rows = appliance.metric("inferbox_batch_size_sum", model="mlp_delay")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
    barrier = threading.Barrier(8)
    statuses = []

    def call():
        with httpx.Client(base_url=appliance.url, timeout=10, headers=appliance.headers) as client:
            barrier.wait()
            statuses.append(client.post("/v2/models/mlp_delay/infer", json=body).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert appliance.metric("inferbox_batch_size_sum", model="mlp_delay") == rows + 8
    # Eight calls, waiting up to 200 ms for company: far fewer than eight batches.
    assert appliance.metric("inferbox_batch_size_count", model="mlp_delay") - count <= 3
