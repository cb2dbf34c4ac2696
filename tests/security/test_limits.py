"""Per-key rate and concurrency limits: 429 with ``Retry-After``, then recovery."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest

from tests.support.auth import bearer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def _rejections(appliance, reason: str) -> float:
    text = httpx.get(f"{appliance.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f'inferbox_rejections_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_rate_limit_gives_429_with_retry_after_and_recovers(appliance, make_key):
    key, _ = make_key("infer", rate_per_s=1, burst=2)
    before = _rejections(appliance, "rate_limit")
    with httpx.Client(base_url=appliance.url, headers=bearer(key), timeout=30) as http:
        statuses = [http.post("/v2/models/mlp/infer", json=BODY).status_code for _ in range(2)]
        assert statuses == [200, 200]
        refused = http.post("/v2/models/mlp/infer", json=BODY)
        assert refused.status_code == 429
        assert "rate limit" in refused.json()["error"]
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 2
        # The control plane answers the same key's 429 as problem details.
        problem = http.get("/v1/models")
        assert problem.status_code == 429
        assert problem.headers["content-type"] == "application/problem+json"
        time.sleep(wait)
        assert http.post("/v2/models/mlp/infer", json=BODY).status_code == 200
    assert _rejections(appliance, "rate_limit") >= before + 2


def _slow_call(appliance, key: str, statuses: list[int]) -> None:
    data = np.zeros((512, 1024), np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [512, 1024],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"{appliance.url}/v2/models/slow/infer",
        content=header + data,
        headers={**bearer(key), "Inference-Header-Content-Length": str(len(header))},
        timeout=60,
    )
    statuses.append(response.status_code)


def test_concurrency_limit_gives_429_while_calls_run_and_recovers(appliance, make_key):
    key, key_id = make_key("infer", max_concurrency=2)
    slots = appliance.keys.concurrency(key_id)
    statuses: list[int] = []
    threads = [
        threading.Thread(target=_slow_call, args=(appliance, key, statuses)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: appliance.redis.zcard(slots) == 2, 10, "two calls in flight", 0.01)
    refused = httpx.post(f"{appliance.url}/v2/models/mlp/infer", json=BODY, headers=bearer(key))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "in flight" in refused.json()["error"]
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    assert appliance.redis.zcard(slots) == 0  # slots are given back
    ok = httpx.post(f"{appliance.url}/v2/models/mlp/infer", json=BODY, headers=bearer(key))
    assert ok.status_code == 200


def test_a_slot_is_free_again_when_the_answer_arrives(appliance, make_key):
    """A client at its concurrency limit that sends its next call the moment an answer
    arrives is never refused: the slot is given back before the answer's last byte."""
    key, key_id = make_key("infer", max_concurrency=1)
    statuses = []
    with httpx.Client(base_url=appliance.url, headers=bearer(key), timeout=30) as keep_alive:
        for i in range(150):
            if i % 2:
                statuses.append(keep_alive.post("/v2/models/mlp/infer", json=BODY).status_code)
            else:  # a Litestar route, and a new connection (maybe another API process)
                statuses.append(
                    httpx.get(f"{appliance.url}/v2/models/mlp", headers=bearer(key)).status_code
                )
    assert statuses == [200] * 150, [s for s in statuses if s != 200]
    assert appliance.redis.zcard(appliance.keys.concurrency(key_id)) == 0


def test_a_slot_outlives_the_longest_call(appliance, make_key):
    """A slot expires only after the longest deadline a call may have (nginx's 300 s), so a
    slow call never loses its slot to expiry (at da4a7bd: 120 s)."""
    key, key_id = make_key("infer", max_concurrency=1)
    slots = appliance.keys.concurrency(key_id)
    statuses: list[int] = []
    thread = threading.Thread(target=_slow_call, args=(appliance, key, statuses))
    thread.start()
    wait_for(lambda: appliance.redis.zcard(slots) == 1, 10, "the call in flight", 0.01)
    ((_, expiry_ms),) = appliance.redis.zrange(slots, 0, -1, withscores=True)
    seconds, micros = appliance.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    thread.join()
    assert expiry_ms - now_ms > appliance.settings.max_request_timeout_s * 1000
    assert statuses == [200]


def test_the_slot_lifetime_is_never_shorter_than_the_longest_call():
    from inferbox.config import Settings

    assert Settings(key_slot_ttl_s=120).slot_ttl_s == 330
    assert Settings(key_slot_ttl_s=900).slot_ttl_s == 900
    assert Settings(max_request_timeout_s=60, key_slot_ttl_s=60).slot_ttl_s == 90


async def test_limits_on_the_hot_path_connection_survive_a_script_flush():
    """A limited call's two commands travel on the lane's hiredis connection; a Redis that lost
    its scripts (restart, SCRIPT FLUSH) gets the script loaded again."""
    import uuid

    import redis.asyncio as aioredis

    from inferbox.keys import Keys
    from inferbox.lanes.resp import RespConnection
    from inferbox.security.keystore import KeyRecord, now_utc
    from inferbox.security.limits import Limiter
    from tests.support.redis import REDIS_URL

    client = aioredis.Redis.from_url(REDIS_URL)
    connection = RespConnection(REDIS_URL)
    keys = Keys(f"ibtest-{uuid.uuid4().hex[:8]}")
    limiter = Limiter(client, keys, 30, connection=connection)
    key = KeyRecord(
        id="ibk_limited1",
        secret_hash="x",
        name="t",
        scopes=["infer"],
        max_concurrency=1,
        created_at=now_utc(),
    )
    try:
        await client.script_flush()
        slot = await limiter.acquire(key)
        assert await client.zcard(keys.concurrency(key.id)) == 1
        with pytest.raises(Exception, match="already has 1 requests in flight"):
            await limiter.acquire(key)
        await limiter.release(key, slot)
        assert await client.zcard(keys.concurrency(key.id)) == 0
        await limiter.release(key, await limiter.acquire(key))
    finally:
        connection.close()
        await client.delete(keys.concurrency(key.id), keys.rate_bucket(key.id))
        await client.aclose()
