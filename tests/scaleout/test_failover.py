"""An actor that dies mid-batch: the batch runs again elsewhere and every caller gets its answer."""

from __future__ import annotations

import msgspec
import numpy as np
import onnxruntime as ort
import pytest

from inferbox.models.spec import spec_from_onnx
from inferbox.testing import onnx_models
from tests.support.scaleout import LaneClient, actors_of, kill_actor_process
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROWS = 1024


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """A model slow enough (about a second for a batch of ``ROWS``) to kill an actor mid-run."""
    path = onnx_models.slow(tmp_path_factory.mktemp("heavy") / "heavy.onnx")
    spec = spec_from_onnx("heavy", 1, path)
    return msgspec.structs.replace(
        spec, config=msgspec.structs.replace(spec.config, max_batch_size=ROWS)
    )


def _expected(spec, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _running_actor(prefix: str):
    import ray

    for handle in actors_of(prefix):
        if ray.get(handle.info.remote(), timeout=10)["running"]:
            return handle
    return None


@pytest.mark.parametrize("actors", [2, 1], ids=["another-actor", "replacement-actor"])
def test_a_killed_actors_batch_completes(ray_worker, heavy, redis_client, actors):
    x = np.random.default_rng(3).standard_normal((ROWS, 1024)).astype(np.float32)
    env = {"INFERBOX_RAY_MIN_ACTORS": str(actors), "INFERBOX_RAY_MAX_ACTORS": str(actors)}
    with ray_worker([heavy], **env) as running:
        running.ready(["heavy"])
        wait_for(
            lambda: running.metric("inferbox_ray_replicas", model="heavy") == actors,
            30,
            "a copy of the model on every actor",
        )
        client = LaneClient(redis_client, running.keys)
        try:
            token = client.send("heavy", {"x": ("FP32", x)})
            victim = wait_for(lambda: _running_actor(running.keys.prefix), 20, "the batch to run")
            pid = kill_actor_process(victim)
            header, raws = client.receive(token, timeout_s=60)
        finally:
            client.close()
        assert header.status == 200, header.error
        got = np.frombuffer(raws[0], np.float32).reshape(header.outputs[0].shape)
        np.testing.assert_allclose(got, _expected(heavy, x), rtol=1e-5, atol=1e-6)
        assert running.metric("inferbox_ray_actor_deaths_total") >= 1
        assert running.metric("inferbox_ray_batch_retries_total", model="heavy") >= 1
        # The dead actor is replaced, and the replacement holds the model again.
        wait_for(
            lambda: (
                running.metric("inferbox_ray_actors") == actors
                and running.metric("inferbox_ray_replicas", model="heavy") == actors
            ),
            30,
            "the actor to be replaced",
        )
        died = [line for line in running.log_lines() if line.get("message") == "actor died"]
        assert died and died[0]["pid"] == pid
        assert not running.redis.xlen(running.keys.stream("heavy", 1, "hi"))
