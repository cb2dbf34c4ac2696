"""The worker process: follows the catalog, keeps sessions resident, reports its state."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time

import redis
import structlog

from inferbox.config import Settings
from inferbox.keys import Keys
from inferbox.models.catalog import (
    FAILED,
    LOADING,
    READY,
    VersionStatus,
    WorkerInfo,
    encode,
    read_catalog,
)
from inferbox.models.spec import ModelSpec
from inferbox.observability import worker_metrics as metrics
from inferbox.worker.runtime import load_model, probe_device
from inferbox.worker.serving import ModelServer

log = structlog.get_logger(__name__)


class Worker:
    """One worker process: loads every catalog version and serves its queues."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = client or redis.Redis.from_url(settings.redis_url)
        self.id = settings.worker_id
        self.servers: dict[tuple[str, int], ModelServer] = {}
        self.states: dict[tuple[str, int], VersionStatus] = {}
        self.specs: dict[tuple[str, int], ModelSpec] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.device = probe_device(settings.worker_providers)

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain the batches in hand and leave cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        log.info("worker starting", worker=self.id, device=self.device)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        pubsub = None
        while not self.stopping.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.events)
                self.sync()
                # Wake at once on a catalog event, or after the sync interval at the latest.
                pubsub.get_message(timeout=self.settings.worker_sync_s)
            except redis.ConnectionError as exc:
                log.warning("redis unreachable; retrying", error=str(exc))
                pubsub = None
                self.stopping.wait(1.0)
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every model server and withdraw this worker's status."""
        log.info("worker stopping", worker=self.id)
        for key in list(self.servers):
            self._unload(key)
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.workers, self.id)

    # -- following the catalog ---------------------------------------------------------------

    def sync(self) -> None:
        """Load versions the catalog gained or changed; unload those it lost."""
        wanted = {
            (name, spec.version): spec
            for name, entry in read_catalog(self.client, self.keys).items()
            for spec in entry.versions
        }
        for key in [k for k in self.specs if k not in wanted]:
            self._unload(key)
        for key, spec in wanted.items():
            if self.specs.get(key) != spec:
                if key in self.specs:
                    self._unload(key)
                self._load(key, spec)

    def _load(self, key: tuple[str, int], spec: ModelSpec) -> None:
        self.specs[key] = spec
        self._set_state(key, LOADING)
        try:
            model = load_model(spec, device=self.device)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else repr(exc)
            log.error("model failed to load", model=spec.name, version=spec.version, error=reason)
            self._set_state(key, FAILED, reason)
            return
        metrics.LOAD_SECONDS.labels(spec.name, str(spec.version)).observe(model.load_seconds)
        server = ModelServer(
            model,
            self.client,
            self.keys,
            self.id,
            block_ms=self.settings.worker_block_ms,
            claim_idle_ms=self.settings.worker_claim_idle_ms,
            device=self.device,
        )
        server.start()
        self.servers[key] = server
        metrics.MODELS_RESIDENT.set(len(self.servers))
        self._set_state(key, READY, providers=model.providers)

    def _unload(self, key: tuple[str, int]) -> None:
        server = self.servers.pop(key, None)
        if server:
            server.stop()
        self.specs.pop(key, None)
        with self._lock:
            self.states.pop(key, None)
        metrics.MODELS_RESIDENT.set(len(self.servers))
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.status(key[0]), f"{key[1]}/{self.id}")
        log.info("model unloaded", model=key[0], version=key[1])

    # -- status -------------------------------------------------------------------------------

    def _set_state(
        self, key: tuple[str, int], state: str, reason: str | None = None, providers=()
    ) -> None:
        status = VersionStatus(
            state=state,
            expires=time.time() + self.settings.worker_status_ttl_s,
            reason=reason,
            providers=list(providers),
        )
        with self._lock:
            self.states[key] = status
        self.client.hset(self.keys.status(key[0]), f"{key[1]}/{self.id}", encode(status))

    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.heartbeat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed", error=str(exc))
            self.stopping.wait(self.settings.worker_heartbeat_s)

    def heartbeat(self) -> None:
        """Push this worker's liveness and every version's state forward by the status TTL."""
        expires = time.time() + self.settings.worker_status_ttl_s
        pipe = self.client.pipeline(transaction=False)
        info = WorkerInfo(
            pid=os.getpid(), host=socket.gethostname(), expires=expires, device=self.device
        )
        pipe.hset(self.keys.workers, self.id, encode(info))
        with self._lock:
            for (name, version), status in self.states.items():
                status.expires = expires
                pipe.hset(self.keys.status(name), f"{version}/{self.id}", encode(status))
        pipe.execute()
