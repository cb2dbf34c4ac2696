"""Ray worker tests' helpers: workers started as the appliance starts them, a client of the
interactive lane that talks to them as the API does, and the Ray actors behind them."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import ray
import redis

from inferbox.keys import Keys
from inferbox.lanes.wire import (
    CallHeader,
    ReplyHeader,
    TensorMeta,
    decode_reply,
    encode_call,
    unbundle_replies,
)
from inferbox.models.catalog import put_specs
from inferbox.models.spec import ModelSpec
from inferbox.worker.batcher import to_raw
from tests.support.processes import free_port, start_inferbox, stop_process
from tests.support.redis import REDIS_URL, delete_prefix
from tests.support.waiting import wait_for

NAMESPACE = "inferbox-tests"
"""Ray namespace of the tests' cluster and of the workers' actors."""


@dataclass
class Running:
    """A worker process serving a catalog under its own prefix."""

    keys: Keys
    redis: redis.Redis
    proc: object
    log: Path
    metrics_url: str

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels`` (0 if absent)."""
        total = 0.0
        for line in httpx.get(self.metrics_url, timeout=5).text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_lines(self) -> list[dict]:
        """The JSON lines the process wrote.

        stdout (our lines) and stderr (Ray's own messages) share the file, and Ray's raylet
        warnings may end without a newline: a line of ours can follow one on the same line.
        """
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            start = line.find('{"')
            if start >= 0:
                try:
                    lines.append(json.loads(line[start:]))
                except ValueError:
                    continue
        return lines

    def ready(self, names: list[str], timeout: float = 60) -> None:
        """Wait until this worker reports every model (version 1) ready."""

        def check():
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited; log:\n{self.log.read_text()[-3000:]}")
            for name in names:
                states = [
                    json.loads(raw)["state"]
                    for field, raw in self.redis.hgetall(self.keys.status(name)).items()
                    if field.startswith(b"1/")
                ]
                if "ready" not in states:
                    return False
            return True

        wait_for(check, timeout, f"{names} to be ready", interval=0.1)


@contextmanager
def running_worker(
    tmp_path_factory, redis_client, specs: list[ModelSpec], command: str, **env: str
):
    """Start ``inferbox <command>`` (``worker`` or ``ray-worker``) over a fresh prefix."""
    prefix = f"ibtest-ray-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    put_specs(redis_client, keys, specs)
    port = free_port()
    logs = tmp_path_factory.mktemp("scaleout-logs")
    process_env = {
        **os.environ,
        "INFERBOX_REDIS_URL": REDIS_URL,
        "INFERBOX_KEY_PREFIX": prefix,
        "INFERBOX_WORKER_METRICS_PORT": str(port),
        "INFERBOX_WORKER_CACHE_DIR": str(tmp_path_factory.mktemp("scaleout-cache")),
        "INFERBOX_WORKER_LOCAL_MODEL_PATHS": "true",  # the catalog names files on disk
        "INFERBOX_WORKER_CLAIM_IDLE_MS": "5000",
        "INFERBOX_JOBS_ENABLED": "false",
        "INFERBOX_WORKER_CAPACITY_SWEEP_S": "0",
        "INFERBOX_RAY_NAMESPACE": NAMESPACE,
        "INFERBOX_RAY_ACTOR_GPUS": "0",
        **env,
    }
    proc = start_inferbox([command], process_env, logs / f"{command}.log")
    running = Running(
        keys, redis_client, proc, logs / f"{command}.log", f"http://127.0.0.1:{port}/metrics"
    )

    def serving_metrics():
        if proc.poll() is not None:
            raise AssertionError(f"{command} exited; log:\n{running.log.read_text()[-3000:]}")
        try:
            return httpx.get(running.metrics_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(serving_metrics, 60, f"{command} to serve its metrics", interval=0.1)
        yield running
    finally:
        stop_process(proc, timeout=30)
        delete_prefix(redis_client, prefix)


class LaneClient:
    """Sends calls into a worker's queues and reads the replies, as an API process does."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.keys = keys
        self.channel = keys.reply_channel(f"test-{uuid.uuid4().hex[:8]}")
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.channel)
        self.pending: dict[str, tuple[ReplyHeader, list[bytes]]] = {}

    def send(
        self,
        model: str,
        inputs: dict[str, tuple[str, np.ndarray]],
        outputs: list[str] | None = None,
        timeout_s: float = 60,
    ) -> str:
        """Queue one call (inputs: name -> (V2 datatype, array)); returns its token."""
        token = uuid.uuid4().hex
        metas = [TensorMeta(n, dt, list(a.shape)) for n, (dt, a) in inputs.items()]
        header = CallHeader(
            channel=self.channel,
            token=token,
            deadline=time.time() + timeout_s,
            inputs=metas,
            outputs=outputs,
        )
        raws = [to_raw(a, dt) for dt, a in inputs.values()]
        self.client.xadd(self.keys.stream(model, 1, "hi"), encode_call(header, raws))
        return token

    def receive(self, token: str, timeout_s: float = 60) -> tuple[ReplyHeader, list[bytes]]:
        """The reply to ``token`` (other replies that arrive meanwhile are kept)."""
        deadline = time.monotonic() + timeout_s
        while token not in self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply to {token} in {timeout_s} s")
            message = self.pubsub.get_message(timeout=min(remaining, 1.0))
            if message is None:
                continue
            for reply in unbundle_replies(message["data"]):
                header, raws = decode_reply(reply)
                self.pending[header.token] = (header, [bytes(r) for r in raws])
        return self.pending.pop(token)

    def call(self, model: str, inputs, outputs=None, timeout_s: float = 60):
        """Send one call and wait for its reply."""
        return self.receive(self.send(model, inputs, outputs, timeout_s), timeout_s)

    def close(self) -> None:
        self.pubsub.close()


def actors_of(prefix: str) -> list[ray.actor.ActorHandle]:
    """Handles of the live actors a Ray worker under ``prefix`` started."""
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == NAMESPACE and a["name"].startswith(f"{prefix}/")
    ]
    return [ray.get_actor(name, namespace=NAMESPACE) for name in sorted(names)]


def kill_actor_process(handle) -> int:
    """SIGKILL the process behind an actor (a crash, not a polite ``ray.kill``); its pid."""
    pid = ray.get(handle.info.remote(), timeout=10)["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid
