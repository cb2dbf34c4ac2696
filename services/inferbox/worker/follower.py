"""Following the catalog: which versions it wants, their states as this worker reports them,
and the loop that keeps both current.

Where the versions run is a ``Host``'s business: ``worker.local.LocalHost`` keeps ONNX Runtime
sessions in this process, the Ray host (``scaleout.driver.RayHost``) keeps them on actors. Both
are driven by the same ``CatalogFollower`` and report through the same ``VersionBook``, so the
API sees one kind of worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Protocol

import redis
import structlog

from inferbox import heap
from inferbox.config import Settings
from inferbox.keys import LANES, Keys
from inferbox.models.catalog import VersionStatus, WorkerInfo, encode, servable_versions
from inferbox.models.spec import ModelSpec
from inferbox.worker.serving import ModelServer

log = structlog.get_logger(__name__)

Key = tuple[str, int]
"""A version: (model name, version number)."""


class VersionBook:
    """What this worker knows of each version it follows, and what it reports of them.

    ``specs``: the versions it holds (or is loading); ``states``: their reported status;
    ``failed``: the spec that failed to load (not tried again until the spec changes);
    ``wanted``: versions a waiting call asked for; ``measured``: sizes measured at load.
    """

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.keys = Keys(settings.key_prefix)
        self.worker_id = settings.worker_id
        self.specs: dict[Key, ModelSpec] = {}
        self.states: dict[Key, VersionStatus] = {}
        self.failed: dict[Key, ModelSpec] = {}
        self.wanted: set[Key] = set()
        self.measured: dict[Key, int] = {}
        self._lock = threading.Lock()

    def set_state(self, key: Key, state: str, reason: str | None = None, providers=()) -> None:
        """Report ``state`` for the version (``loading``, ``ready``, ``failed``)."""
        status = VersionStatus(
            state=state,
            expires=time.time() + self.settings.worker_status_ttl_s,
            reason=reason,
            providers=list(providers),
        )
        with self._lock:
            self.states[key] = status
        self.client.hset(self.keys.status(key[0]), f"{key[1]}/{self.worker_id}", encode(status))

    def forget(self, key: Key, reason: str) -> None:
        """The version is no longer served here: drop it and withdraw its status."""
        self.specs.pop(key, None)
        with self._lock:
            self.states.pop(key, None)
        with contextlib.suppress(redis.RedisError):
            field = f"{key[1]}/{self.worker_id}"
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.keys.status(key[0]), field)
            pipe.hdel(self.keys.statistics(key[0]), field)
            pipe.execute()
        log.info("model unloaded", model=key[0], version=key[1], reason=reason)

    def busy(self, key: Key) -> bool:
        """Calls are queued or running for this version."""
        pipe = self.client.pipeline(transaction=False)
        for lane in LANES:
            pipe.xlen(self.keys.stream(key[0], key[1], lane))
        return sum(pipe.execute()) > 0

    def priority(self, key: Key, spec: ModelSpec) -> tuple:
        """Sort key of the versions to place: wanted first, then pinned, then the newest."""
        return (key not in self.wanted, not spec.config.pinned, key[0], -key[1])

    def note(self, data: bytes) -> None:
        """A catalog event: ``want:<name>:<version>`` marks a version a call waits for."""
        if data.startswith(b"want:"):
            name, _, version = data[5:].decode().rpartition(":")
            if version.isdigit():
                self.wanted.add((name, int(version)))

    def heartbeat(self, device: str, statistics: dict[Key, bytes] | None = None) -> None:
        """Push this worker's liveness and every version's state forward by the status TTL,
        and publish the versions' inference ``statistics`` (encoded snapshots)."""
        expires = time.time() + self.settings.worker_status_ttl_s
        pipe = self.client.pipeline(transaction=False)
        info = WorkerInfo(
            pid=os.getpid(), host=socket.gethostname(), expires=expires, device=device
        )
        pipe.hset(self.keys.workers, self.worker_id, encode(info))
        with self._lock:
            for (name, version), status in self.states.items():
                status.expires = expires
                pipe.hset(self.keys.status(name), f"{version}/{self.worker_id}", encode(status))
        for (name, version), snapshot in (statistics or {}).items():
            pipe.hset(self.keys.statistics(name), f"{version}/{self.worker_id}", snapshot)
        pipe.execute()


class Host(Protocol):
    """Where a follower's versions run. ``place`` and ``release`` report through the book."""

    device: str
    """``cuda`` or ``cpu``: what the sessions run on (reported in the heartbeat)."""
    servers: dict[Key, ModelServer]
    """The batch loops of the versions served here (their statistics go out with the
    heartbeat)."""

    def prepare(self) -> None:
        """Before each sync (the Ray host keeps its actor count on target here)."""

    def place(self, key: Key, spec: ModelSpec) -> None:
        """Serve the version if it fits, or if a call waits for it and room can be made."""

    def release(self, key: Key, reason: str = "unloaded") -> None:
        """Stop serving the version here (and ``VersionBook.forget`` it)."""

    def settle(self) -> None:
        """After each sync's placements, even a failed one."""

    def outgrown(self) -> bool:
        """Whether this process should restart to return memory its models do not hold."""

    def close(self) -> None:
        """Stop serving everything (batches in hand are finished first)."""


class CatalogFollower:
    """One worker process: follows the catalog's loaded versions on ``host`` and reports them.

    Versions load at start as far as the host's room allows; a version asked for by a waiting
    call (a ``want:<name>:<version>`` event from the API) is placed on demand.
    """

    def __init__(self, settings: Settings, book: VersionBook, host: Host) -> None:
        self.settings = settings
        self.book = book
        self.host = host
        self.client = book.client
        self.keys = book.keys
        self.id = book.worker_id
        self.stopping = threading.Event()
        self.recycle = False
        self.jobs = None

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain the batches in hand and leave cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        log.info("worker starting", worker=self.id, device=self.host.device)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        if self.settings.jobs_enabled:
            # Imported here: a worker without jobs never loads RQ or the database driver.
            from inferbox.jobs.lane import JobLane

            self.jobs = JobLane(self.settings, owner=self.id)
            self.jobs.start()
        pubsub = None
        settled = False
        while not self.stopping.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.events)
                self.sync()
                if not settled:
                    # The models of the first sync are loaded: out of the collector's sight.
                    heap.settle()
                    settled = True
                if self.host.outgrown():
                    self.recycle = True
                    self.stopping.set()
                # Wake at once on an event, or after the sync interval at the latest.
                message = pubsub.get_message(timeout=self.settings.worker_sync_s)
                while message is not None:
                    self.book.note(message["data"])
                    message = pubsub.get_message(timeout=0)
            except redis.ConnectionError as exc:
                log.warning("redis unreachable; retrying", error=str(exc))
                pubsub = None
                self.stopping.wait(1.0)
        self.shutdown()
        if self.recycle:
            log.warning("worker restarting itself to return memory", worker=self.id)
            os.execv(sys.executable, [sys.executable, *sys.argv])

    def sync(self) -> None:
        """Release what the catalog dropped or changed; place what it wants."""
        book = self.book
        self.host.prepare()
        desired = servable_versions(self.client, self.keys)
        for key in [k for k in book.specs if desired.get(k) != book.specs[k]]:
            self.host.release(key)
        book.wanted &= set(desired)
        try:
            for key, spec in sorted(desired.items(), key=lambda kv: book.priority(*kv)):
                if book.failed.get(key) != spec:
                    self.host.place(key, spec)
        finally:
            self.host.settle()

    def shutdown(self) -> None:
        """Stop the job lane, then every version, and withdraw this worker's status."""
        log.info("worker stopping", worker=self.id)
        if self.jobs is not None:
            # First, while the models still serve: running jobs hand themselves back.
            self.jobs.stop()
        self.host.close()
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.workers, self.id)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                statistics = {
                    key: server.statistics.snapshot()
                    for key, server in list(self.host.servers.items())
                }
                self.book.heartbeat(self.host.device, statistics)
            except redis.RedisError as exc:
                log.warning("heartbeat failed", error=str(exc))
            self.stopping.wait(self.settings.worker_heartbeat_s)
