"""Placement on a live Ray worker: where there is room, eviction only for a waiting call, and
no more actors than the cluster can hold."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.scaleout import LaneClient
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _held(running, name: str) -> float:
    return running.metric("inferbox_ray_replicas", model=name, version="1")


def _want_and_call(running, client: LaneClient, name: str, inputs) -> None:
    # As the API does for a version no worker holds: ask for it, and queue the call meanwhile.
    running.redis.publish(running.keys.events, f"want:{name}:1")
    header, _ = client.call(name, inputs, timeout_s=60)
    assert header.status == 200, header.error


def test_one_version_per_actor_when_each_fills_its_budget(ray_worker, scaleout_models):
    # A budget of one byte: every version is larger, so each runs alone on its actor ("a version
    # larger than the budget runs alone"), loaded only for a waiting call.
    specs = [scaleout_models[n] for n in ("mlp", "add_sub", "fixed")]
    env = {
        "INFERBOX_RAY_MIN_ACTORS": "2",
        "INFERBOX_RAY_MAX_ACTORS": "2",
        "INFERBOX_WORKER_MEMORY_BUDGET_BYTES": "1",
    }
    rng = np.random.default_rng(1)
    mlp = {"x": ("FP32", rng.standard_normal((1, 64)).astype(np.float32))}
    add_sub = {
        "INPUT0": ("FP32", rng.standard_normal((1, 4)).astype(np.float32)),
        "INPUT1": ("FP32", rng.standard_normal((1, 4)).astype(np.float32)),
    }
    fixed = {"x": ("FP32", rng.standard_normal((2, 3)).astype(np.float32))}
    with ray_worker(specs, **env) as running:
        wait_for(lambda: running.metric("inferbox_ray_actors") == 2, 30, "two actors")
        assert running.metric("inferbox_models_resident") == 0  # nothing fits without a call
        client = LaneClient(running.redis, running.keys)
        try:
            _want_and_call(running, client, "mlp", mlp)
            _want_and_call(running, client, "add_sub", add_sub)
            # The second went to the empty actor: nothing was evicted.
            assert (_held(running, "mlp"), _held(running, "add_sub")) == (1, 1)
            assert running.metric("inferbox_evictions_total") == 0
            # A third: both actors are full, so the least recently used idle version goes.
            _want_and_call(running, client, "fixed", fixed)
            assert running.metric("inferbox_evictions_total") == 1
            assert _held(running, "mlp") == 0 and _held(running, "add_sub") == 1
            assert running.metric("inferbox_models_resident") == 2
            # And it comes back when a call wants it again.
            _want_and_call(running, client, "mlp", mlp)
            assert _held(running, "mlp") == 1
        finally:
            client.close()


def test_no_more_actors_than_the_cluster_holds(ray_worker, scaleout_models):
    # The test cluster has 4 CPUs: one actor of 3 CPUs fits, a second does not.
    env = {
        "INFERBOX_RAY_MIN_ACTORS": "2",
        "INFERBOX_RAY_MAX_ACTORS": "2",
        "INFERBOX_RAY_ACTOR_CPUS": "3",
    }
    with ray_worker([scaleout_models["mlp"]], **env) as running:
        running.ready(["mlp"])
        client = LaneClient(running.redis, running.keys)
        try:
            x = np.ones((2, 64), np.float32)
            header, _ = client.call("mlp", {"x": ("FP32", x)})
        finally:
            client.close()
        assert header.status == 200
        assert running.metric("inferbox_ray_actors") == 1
        assert running.metric("inferbox_ray_actors_target") == 2
        warnings = [
            line for line in running.log_lines() if line.get("message") == "cannot start an actor"
        ]
        assert len(warnings) == 1 and "CPU" in warnings[0]["error"]
