"""Actors follow the load: one more when calls wait, one fewer when they stop waiting."""

from __future__ import annotations

import threading

import msgspec
import numpy as np
import pytest

from inferbox.models.spec import spec_from_onnx
from inferbox.testing import onnx_models
from tests.support.scaleout import LaneClient
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def busy_model(tmp_path_factory):
    """About 0.1 s per call of 64 rows, one call per batch: a queue builds at once under load."""
    path = onnx_models.slow(tmp_path_factory.mktemp("busy") / "busy.onnx")
    spec = spec_from_onnx("busy", 1, path)
    return msgspec.structs.replace(
        spec, config=msgspec.structs.replace(spec.config, max_batch_size=64)
    )


class Load:
    """``senders`` threads calling the model back to back; every answer is checked."""

    def __init__(self, redis_client, keys, senders: int):
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        x = np.random.default_rng(5).standard_normal((64, 1024)).astype(np.float32)
        self.threads = [
            threading.Thread(target=self._send, args=(redis_client, keys, x), daemon=True)
            for _ in range(senders)
        ]
        for thread in self.threads:
            thread.start()

    def _send(self, redis_client, keys, x) -> None:
        client = LaneClient(redis_client, keys)
        try:
            while not self.stop.is_set():
                try:
                    header, _ = client.call("busy", {"x": ("FP32", x)}, timeout_s=60)
                except AssertionError as exc:
                    header, error = None, str(exc)
                with self._lock:
                    if header is not None and header.status == 200:
                        self.answers += 1
                    else:
                        self.failures.append(error if header is None else header.error)
        finally:
            client.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)


def test_actors_scale_up_under_load_and_down_when_it_drops(ray_worker, busy_model, redis_client):
    env = {
        "INFERBOX_RAY_MIN_ACTORS": "1",
        "INFERBOX_RAY_MAX_ACTORS": "2",
        "INFERBOX_RAY_SCALE_UP_WAIT_MS": "50",
        "INFERBOX_RAY_SCALE_DOWN_WAIT_MS": "20",
        "INFERBOX_RAY_SCALE_DOWN_AFTER_S": "2",
        "INFERBOX_RAY_SCALE_INTERVAL_S": "1",
    }
    with ray_worker([busy_model], **env) as running:
        running.ready(["busy"])
        assert running.metric("inferbox_ray_actors") == 1
        heavy = Load(redis_client, running.keys, senders=6)
        try:
            wait_for(
                lambda: (
                    running.metric("inferbox_ray_actors") == 2
                    and running.metric("inferbox_ray_replicas", model="busy") == 2
                ),
                60,
                "a second actor under load",
                interval=0.2,
            )
            assert running.metric("inferbox_ray_scale_decisions_total", direction="up") == 1
            before = heavy.answers
            wait_for(lambda: heavy.answers > before + 4, 60, "answers from both actors")
        finally:
            heavy.finish()
        # The load drops to one caller at a time: calls stop waiting, an actor goes.
        light = Load(redis_client, running.keys, senders=1)
        try:
            wait_for(
                lambda: running.metric("inferbox_ray_actors") == 1,
                60,
                "back to one actor",
                interval=0.2,
            )
            before = light.answers
            wait_for(lambda: light.answers > before + 2, 30, "answers after scaling down")
        finally:
            light.finish()
        assert running.metric("inferbox_ray_scale_decisions_total", direction="down") == 1
        assert heavy.failures == [] and light.failures == []
        decisions = [
            line
            for line in running.log_lines()
            if line.get("message", "").startswith("scaling actors")
        ]
        assert [d["message"] for d in decisions] == ["scaling actors up", "scaling actors down"]
        up, down = decisions
        assert (up["actors_from"], up["actors_to"]) == (1, 2)
        assert up["queue_wait_p90_ms"] > 50
        assert (down["actors_from"], down["actors_to"]) == (2, 1)
        assert down["queue_wait_p90_ms"] <= 20
        # Nothing was left behind in the queue.
        assert running.redis.xlen(running.keys.stream("busy", 1, "hi")) == 0
