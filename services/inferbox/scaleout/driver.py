"""The Ray worker: the local worker's catalog following and status, with actors doing the compute.

It reads the same queues as a local worker (same consumer group), so the API, the catalog and
the replies do not change. Per actor it applies the local worker's residency rules: a version
loads where it fits, evicts least-recently-used idle versions only for a call that waits, and
is copied to every other actor with room (more actors, more throughput). Dead actors are
replaced; the autoscaler moves the actor count between its bounds by queue wait.
"""

from __future__ import annotations

import contextlib
import time

import ray
import redis
import structlog

from inferbox.config import Settings
from inferbox.models.catalog import FAILED, LOADING, READY, servable_versions
from inferbox.models.spec import ModelSpec
from inferbox.observability import worker_metrics
from inferbox.scaleout import metrics
from inferbox.scaleout.placement import choose, fits
from inferbox.scaleout.pool import ActorGone, ActorPool, NoCapacity, Slot
from inferbox.scaleout.remote import RayModelServer, RemoteModel
from inferbox.scaleout.scaler import Autoscaler
from inferbox.scaleout.settings import RaySettings
from inferbox.worker.main import Worker
from inferbox.worker.model_cache import Fetcher

log = structlog.get_logger(__name__)

Key = tuple[str, int]


def connect(ray_settings: RaySettings) -> None:
    """Join the Ray cluster as a driver (Ray's own log handler off: our JSON lines only)."""
    if ray.is_initialized():
        return
    options = {"namespace": ray_settings.namespace, "log_to_driver": False}
    if ray_settings.address == "local":
        options |= {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    elif ray_settings.node_ip_address:
        options["_node_ip_address"] = ray_settings.node_ip_address
    ray.init(address=ray_settings.address, configure_logging=False, **options)
    log.info("joined the ray cluster", address=ray_settings.address, **_resources())


def _resources() -> dict:
    total = ray.cluster_resources()
    return {"cluster_cpus": total.get("CPU", 0), "cluster_gpus": total.get("GPU", 0)}


class RayWorker(Worker):
    """A worker whose batches run on Ray actors; one process drives every actor."""

    def __init__(
        self,
        settings: Settings,
        ray_settings: RaySettings,
        client: redis.Redis | None = None,
        objects: Fetcher | None = None,
    ):
        super().__init__(settings, client, objects)
        self.ray_settings = ray_settings
        # What the actors run on (the driver itself holds no session).
        self.device = "cuda" if ray_settings.actor_gpus else "cpu"
        self.pool = ActorPool(
            ray_settings,
            settings.worker_memory_budget_bytes,
            str(settings.worker_cache_dir),
            label=f"{settings.key_prefix}/{self.id}",
        )
        self.scaler = Autoscaler(
            ray_settings.min_actors,
            ray_settings.max_actors,
            up_wait_s=ray_settings.scale_up_wait_ms / 1000,
            down_wait_s=ray_settings.scale_down_wait_ms / 1000,
            down_after_s=ray_settings.scale_down_after_s,
            interval_s=ray_settings.scale_interval_s,
        )
        self.target = ray_settings.min_actors
        self.models: dict[Key, RemoteModel] = {}
        self._blobs: dict[str, ray.ObjectRef] = {}
        self._capacity_warned = float("-inf")
        self._refused: set[tuple[str, Key]] = set()
        metrics.ACTORS_TARGET.set(self.target)

    def _check_memory(self) -> None:
        """Nothing to recycle here: sessions, and their arenas, live in the actors."""

    def shutdown(self) -> None:
        """Stop the batch threads, then the actors."""
        super().shutdown()
        for slot in list(self.pool.slots.values()):
            self.pool.remove(slot)

    # -- following the catalog and the load --------------------------------------------------

    def sync(self) -> None:
        """Keep the actor count on target, then place what the catalog wants."""
        self._supervise()
        desired = servable_versions(self.client, self.keys)
        for key in [k for k in self.specs if desired.get(k) != self.specs[k]]:
            self._unload(key)
        self.wanted &= set(desired)
        try:
            for key, spec in sorted(desired.items(), key=lambda kv: self._priority(*kv)):
                if self.failed.get(key) == spec:
                    continue
                self._place(key, spec)
        finally:
            self._blobs.clear()
        for key in self.models:
            metrics.REPLICAS.labels(key[0], str(key[1])).set(len(self.pool.holders(key)))
            self.servers[key].follow(len(self.pool.holders(key)))

    def _supervise(self) -> None:
        # Versions of a dead actor stay "ready": their calls wait in the queue while the
        # placement below loads them on a live actor (a batch in flight asks for it at once).
        self.pool.check()
        live = len(self.pool.live())
        decision = self.scaler.decide(live)
        if decision is not None:
            metrics.QUEUE_WAIT_P90.set(decision.wait_p90_s)
            if decision.direction != "hold" and decision.target != self.target:
                metrics.SCALE_DECISIONS.labels(decision.direction).inc()
                log.info(
                    f"scaling actors {decision.direction}",
                    actors_from=live,
                    actors_to=decision.target,
                    queue_wait_p90_ms=round(decision.wait_p90_s * 1000, 3),
                    reason=decision.reason,
                )
                self.target = decision.target
        metrics.ACTORS_TARGET.set(self.target)
        while len(self.pool.live()) < self.target:
            try:
                self.pool.start()
            except NoCapacity as exc:
                # Every sync tries again; say so once a minute, not every second.
                if time.monotonic() - self._capacity_warned > 60:
                    self._capacity_warned = time.monotonic()
                    log.warning(
                        "cannot start an actor",
                        error=str(exc),
                        actors=len(self.pool.live()),
                        target=self.target,
                        **_resources(),
                    )
                break
        while len(self.pool.live()) > self.target:
            if not self._retire_one():
                # Every actor holds a version that fits nowhere else: keep them all for now.
                self.target = len(self.pool.live())
                break
        metrics.ACTORS.set(len(self.pool.live()))

    def _retire_one(self) -> bool:
        """Remove the least busy actor once its versions are held elsewhere; False if none can go."""
        candidates = sorted(self.pool.live(), key=lambda s: (s.in_flight, -s.number))
        for slot in candidates:
            others = [s for s in self.pool.live() if s is not slot]
            if not others:
                return False
            alone = [k for k in slot.models if len(self.pool.holders(k)) == 1]
            homes = {}
            for key in alone:
                size = slot.residency.size(key)
                home = next((s for s in others if fits(s.residency, size)), None)
                if home is None:
                    break
                homes[key] = home
            if len(homes) < len(alone):
                continue
            for key, home in homes.items():
                if not self._load_on(home, key, self.specs[key]):
                    return False
            self.pool.drain(slot)
            self.pool.remove(slot)
            return True
        log.warning("no actor can be removed: their models fit nowhere else")
        return False

    def _place(self, key: Key, spec: ModelSpec) -> None:
        """At least one actor holds the version; every other actor with room holds a copy."""
        estimate = self.measured.get(key, spec.size)
        live = self.pool.live()
        if not self.pool.holders(key):
            on_demand = key in self.wanted
            choice = choose(
                {s.name: s.residency for s in live},
                estimate,
                evict=on_demand,
                busy=lambda k: self._busy(k) and len(self.pool.holders(k)) <= 1,
            )
            if choice is None:
                if on_demand and live:
                    log.warning("no room to load a wanted model", model=key[0], version=key[1])
                return
            slot = self.pool.slots[choice.actor]
            for victim in choice.victims:
                worker_metrics.EVICTIONS.inc()
                self._drop(slot, victim, reason="evicted to make room")
            if not self._load_on(slot, key, spec):
                return
            self.wanted.discard(key)
        for slot in self.pool.live():
            if (slot.name, key) in self._refused:
                continue
            if key not in slot.models and fits(slot.residency, self.measured.get(key, estimate)):
                self._load_on(slot, key, spec)

    def _load_on(self, slot: Slot, key: Key, spec: ModelSpec) -> bool:
        first = key not in self.servers
        if first:
            self.specs[key] = spec
            self._set_state(key, LOADING)
        try:
            answer = self.pool.load(slot, spec, self._blob(spec))
        except ActorGone:
            return False
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else repr(exc)
            log.error(
                "model failed to load", model=key[0], version=key[1], actor=slot.name, error=reason
            )
            self._refused.add((slot.name, key))  # no copy there again until the spec changes
            if not self.pool.holders(key):
                self.failed[key] = spec
                self._set_state(key, FAILED, reason)
            return False
        self.failed.pop(key, None)
        self.measured[key] = answer["size"]
        worker_metrics.LOAD_SECONDS.labels(key[0], str(key[1])).observe(answer["load_seconds"])
        log.info(
            "model resident",
            model=key[0],
            version=key[1],
            actor=slot.name,
            size_bytes=answer["size"],
            providers=answer["providers"],
        )
        if key not in self.servers:
            self._serve(key, spec, answer)
        elif self.states.get(key) is None or self.states[key].state != READY:
            self._set_state(key, READY, providers=answer["providers"])
        self.servers[key].follow(len(self.pool.holders(key)))
        return True

    def _serve(self, key: Key, spec: ModelSpec, answer: dict) -> None:
        model = RemoteModel(
            spec,
            answer["output_names"],
            answer["providers"],
            self.pool,
            retry_wait_s=self.ray_settings.retry_wait_s,
            max_deaths=self.ray_settings.max_actor_deaths_per_batch,
            on_missing=self._missing,
        )
        server = RayModelServer(
            model,
            self.client,
            self.keys,
            self.id,
            block_ms=self.settings.worker_block_ms,
            claim_idle_ms=self.settings.worker_claim_idle_ms,
            device=self.device,
            scaler=self.scaler,
            threads_per_actor=max(2, spec.config.instances(self.device)),
            tensor_dir=self.settings.tensor_dir or None,
        )
        server.start()
        self.models[key] = model
        self.servers[key] = server
        worker_metrics.MODELS_RESIDENT.set(len(self.servers))
        self._set_state(key, READY, providers=answer["providers"])

    def _blob(self, spec: ModelSpec):
        """The model file in Ray's object store (once per sync), from the local cache."""
        ref = self._blobs.get(spec.sha256)
        if ref is None:
            ref = self._blobs[spec.sha256] = ray.put(self.cache.path_for(spec).read_bytes())
        return ref

    def _missing(self, key: Key) -> None:
        """A batch waits for a version no live actor holds: ask for it as the API would."""
        with contextlib.suppress(redis.RedisError):
            self.client.publish(self.keys.events, f"want:{key[0]}:{key[1]}")

    def _drop(self, slot: Slot, key: Key, reason: str) -> None:
        """Unload a version from one actor; with its last copy gone it stops being served."""
        self.pool.unload(slot, key)
        if not self.pool.holders(key):
            self._unload(key, reason=reason)
            if self._busy(key):
                self.wanted.add(key)  # a call slipped in meanwhile: bring it back

    def _unload(self, key: Key, reason: str = "unloaded") -> None:
        model = self.models.pop(key, None)
        if model is not None:
            model.withdrawn.set()
        server = self.servers.pop(key, None)
        if server is not None:
            server.stop()
        for slot in list(self.pool.slots.values()):
            if key in slot.models:
                self.pool.unload(slot, key)
        self.specs.pop(key, None)
        self._refused = {(actor, k) for actor, k in self._refused if k != key}
        with self._lock:
            self.states.pop(key, None)
        worker_metrics.MODELS_RESIDENT.set(len(self.servers))
        metrics.REPLICAS.labels(key[0], str(key[1])).set(0)
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.status(key[0]), f"{key[1]}/{self.id}")
        log.info("model unloaded", model=key[0], version=key[1], reason=reason)
