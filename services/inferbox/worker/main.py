"""The worker process: follows the catalog, keeps sessions resident, reports its state."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time

import msgspec
import redis
import structlog

from inferbox import heap
from inferbox.config import Settings
from inferbox.keys import LANES, Keys
from inferbox.models.catalog import (
    FAILED,
    LOADING,
    READY,
    VersionStatus,
    WorkerInfo,
    encode,
    servable_versions,
)
from inferbox.models.spec import ModelSpec
from inferbox.observability import worker_metrics as metrics
from inferbox.worker import memory
from inferbox.worker.capacity import sweep
from inferbox.worker.model_cache import Fetcher, ModelCache, UntrustedModelFile
from inferbox.worker.residency import NoRoom, Residency
from inferbox.worker.runtime import LoadedModel, WarmupTooLarge, load_model, probe_device
from inferbox.worker.serving import ModelServer

log = structlog.get_logger(__name__)


class Worker:
    """One worker process: serves the catalog's loaded versions within its memory budget.

    Versions load at start as far as the budget allows; a version asked for by a waiting call
    (a ``want:<name>:<version>`` event from the API) is loaded on demand, evicting the
    least-recently-used idle, unpinned versions to make room.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        objects: Fetcher | None = None,
    ):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = client or redis.Redis.from_url(settings.redis_url)
        self.id = settings.worker_id
        self.servers: dict[tuple[str, int], ModelServer] = {}
        self.states: dict[tuple[str, int], VersionStatus] = {}
        self.specs: dict[tuple[str, int], ModelSpec] = {}
        self.failed: dict[tuple[str, int], ModelSpec] = {}
        self.wanted: set[tuple[str, int]] = set()
        self.measured: dict[tuple[str, int], int] = {}
        self.stopping = threading.Event()
        self.recycle = False
        self.jobs = None
        self._lock = threading.Lock()
        self.device = probe_device(settings.worker_providers, settings.worker_require_cuda)
        self.cache = ModelCache(
            settings.worker_cache_dir, objects, local_paths=settings.worker_local_model_paths
        )
        self.residency = Residency(settings.worker_memory_budget_bytes)
        self.baseline = memory.usage(self.device)

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain the batches in hand and leave cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        log.info("worker starting", worker=self.id, device=self.device)
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
                self._check_memory()
                # Wake at once on an event, or after the sync interval at the latest.
                message = pubsub.get_message(timeout=self.settings.worker_sync_s)
                while message is not None:
                    self._note(message["data"])
                    message = pubsub.get_message(timeout=0)
            except redis.ConnectionError as exc:
                log.warning("redis unreachable; retrying", error=str(exc))
                pubsub = None
                self.stopping.wait(1.0)
        self.shutdown()
        if self.recycle:
            log.warning("worker restarting itself to return memory", worker=self.id)
            os.execv(sys.executable, [sys.executable, *sys.argv])

    def shutdown(self) -> None:
        """Stop every model server and withdraw this worker's status."""
        log.info("worker stopping", worker=self.id)
        if self.jobs is not None:
            # First, while the models still serve: running jobs hand themselves back.
            self.jobs.stop()
        # Every server stops reading at once, so leaving takes one read timeout, not one each.
        for server in self.servers.values():
            server.stopping.set()
        for key in list(self.servers):
            self._unload(key)
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.workers, self.id)

    def _note(self, data: bytes) -> None:
        if data.startswith(b"want:"):
            name, _, version = data[5:].decode().rpartition(":")
            if version.isdigit():
                self.wanted.add((name, int(version)))

    def _check_memory(self) -> None:
        if self.device == "cuda":
            # A CUDA session's arena grows to the activations of the largest batch it ran
            # (10.8 GB beside 1.5 GB of ResNet-50 and BERT weights at batch 128 on an H200):
            # that is working memory, not the CPU allocator's creep this check is for.
            return
        used = memory.usage(self.device)
        if memory.should_recycle(
            used, self.baseline, self.residency.used, self.settings.worker_recycle_factor
        ):
            log.warning(
                "memory outgrew the resident models",
                used_bytes=used,
                baseline_bytes=self.baseline,
                models_bytes=self.residency.used,
            )
            self.recycle = True
            self.stopping.set()

    # -- following the catalog ---------------------------------------------------------------

    def sync(self) -> None:
        """Unload what the catalog dropped or changed; load what it wants and what fits."""
        desired = servable_versions(self.client, self.keys)
        for key in [k for k in self.specs if desired.get(k) != self.specs[k]]:
            self._unload(key)
        self.wanted &= set(desired)
        for key, spec in sorted(desired.items(), key=lambda kv: self._priority(*kv)):
            if key in self.servers or self.failed.get(key) == spec:
                continue
            on_demand = key in self.wanted
            # The size measured at an earlier load, else the file size as a first guess.
            estimate = self.measured.get(key, spec.size)
            try:
                victims = self.residency.plan(estimate, busy=self._busy)
            except NoRoom as exc:
                if on_demand:
                    log.warning(
                        "no room to load a wanted model",
                        model=key[0],
                        version=key[1],
                        error=str(exc),
                    )
                continue
            if victims and not on_demand:
                continue  # at start, load what fits; evict only for a call that waits
            for victim in victims:
                metrics.EVICTIONS.inc()
                self._unload(victim, reason="evicted to make room")
                if self._busy(victim):
                    self.wanted.add(victim)  # a call slipped in meanwhile: bring it back
            self._load(key, spec)
            self.wanted.discard(key)
            self._enforce_budget(keep=key)

    def _enforce_budget(self, keep: tuple[str, int]) -> None:
        """After a load measured larger than its estimate, evict idle versions until it fits."""
        if not self.residency.budget or self.residency.used <= self.residency.budget:
            return
        for victim in self.residency.resident():
            if self.residency.used <= self.residency.budget:
                break
            if victim == keep or self._busy(victim) or self.specs[victim].config.pinned:
                continue
            metrics.EVICTIONS.inc()
            self._unload(victim, reason="evicted to stay within the memory budget")

    def _priority(self, key: tuple[str, int], spec: ModelSpec) -> tuple:
        # Wanted first, then pinned, then the newest versions.
        return (key not in self.wanted, not spec.config.pinned, key[0], -key[1])

    def _busy(self, key: tuple[str, int]) -> bool:
        """Calls are queued or running for this version."""
        pipe = self.client.pipeline(transaction=False)
        for lane in LANES:
            pipe.xlen(self.keys.stream(key[0], key[1], lane))
        return sum(pipe.execute()) > 0

    def _load(self, key: tuple[str, int], spec: ModelSpec) -> None:
        self.specs[key] = spec
        self._set_state(key, LOADING)
        before = memory.usage(self.device)
        try:
            model = self._create_session(spec)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else repr(exc)
            log.error("model failed to load", model=spec.name, version=spec.version, error=reason)
            self.failed[key] = spec
            self._set_state(key, FAILED, reason)
            return
        self.failed.pop(key, None)
        size = max(memory.usage(self.device) - before, spec.size)
        self.measured[key] = size
        self.residency.add(key, size, pinned=spec.config.pinned)
        metrics.LOAD_SECONDS.labels(spec.name, str(spec.version)).observe(model.load_seconds)
        server = ModelServer(
            model,
            self.client,
            self.keys,
            self.id,
            block_ms=self.settings.worker_block_ms,
            claim_idle_ms=self.settings.worker_claim_idle_ms,
            device=self.device,
            on_batch=lambda: self.residency.touch(key),
            tensor_dir=self.settings.tensor_dir or None,
        )
        server.start()
        self.servers[key] = server
        metrics.MODELS_RESIDENT.set(len(self.servers))
        metrics.RESIDENT_BYTES.set(self.residency.used)
        self._set_state(key, READY, providers=model.providers)
        log.info("model resident", model=spec.name, version=spec.version, size_bytes=size)
        self._measure_capacity(key, model, size)

    def _create_session(self, spec: ModelSpec) -> LoadedModel:
        """Load from the local copy; a copy that fails to load is fetched again, once."""
        path = self.cache.path_for(spec)
        bound = self.settings.worker_warmup_max_bytes
        try:
            return load_model(spec, path=path, warmup_max_bytes=bound)
        except (WarmupTooLarge, UntrustedModelFile):
            raise  # fetching the file again changes nothing
        except Exception:
            if spec.object_key is None:
                raise
            log.warning("cached model file failed to load; fetching it again", model=spec.name)
            self.cache.discard(spec)
            return load_model(spec, path=self.cache.path_for(spec), warmup_max_bytes=bound)

    def _measure_capacity(self, key: tuple[str, int], model: LoadedModel, size: int) -> None:
        seconds = self.settings.worker_capacity_sweep_s
        field = f"{key[0]}/{key[1]}"
        if seconds <= 0 or self.client.hexists(self.keys.capacity, field):
            return
        try:
            card = sweep(
                model.run,
                model.spec.inputs,
                model.spec.config.max_batch_size,
                device=self.device,
                memory_bytes=size,
                seconds_per_size=seconds,
                max_input_bytes=self.settings.worker_warmup_max_bytes,
            )
        except Exception as exc:
            log.warning("capacity sweep failed", model=key[0], version=key[1], error=str(exc))
            return
        self.client.hset(self.keys.capacity, field, msgspec.json.encode(card))

    def _unload(self, key: tuple[str, int], reason: str = "unloaded") -> None:
        server = self.servers.pop(key, None)
        if server:
            server.stop()
        self.specs.pop(key, None)
        self.residency.remove(key)
        metrics.RESIDENT_BYTES.set(self.residency.used)
        with self._lock:
            self.states.pop(key, None)
        metrics.MODELS_RESIDENT.set(len(self.servers))
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.status(key[0]), f"{key[1]}/{self.id}")
        log.info("model unloaded", model=key[0], version=key[1], reason=reason)

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
