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
from inferbox.models.catalog import FAILED, LOADING, READY
from inferbox.models.spec import ModelSpec
from inferbox.observability import worker_metrics
from inferbox.scaleout import metrics
from inferbox.scaleout.placement import choose, fits
from inferbox.scaleout.pool import ActorGone, ActorPool, NoCapacity, Slot
from inferbox.scaleout.remote import RayModelServer, RemoteModel
from inferbox.scaleout.scaler import Autoscaler
from inferbox.scaleout.settings import RaySettings
from inferbox.worker.follower import CatalogFollower, Key, VersionBook
from inferbox.worker.model_cache import Fetcher, ModelCache

log = structlog.get_logger(__name__)


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


def ray_worker(
    settings: Settings,
    ray_settings: RaySettings,
    client: redis.Redis | None = None,
    objects: Fetcher | None = None,
) -> CatalogFollower:
    """The worker ``inferbox ray-worker`` runs: the local worker's catalog following, state
    reports and ``want:`` events (``CatalogFollower``), over actors instead of sessions."""
    book = VersionBook(settings, client or redis.Redis.from_url(settings.redis_url))
    return CatalogFollower(settings, book, RayHost(settings, ray_settings, book, objects))


class RayHost:
    """Versions on Ray actors; this process (the driver) holds no session, only the batch
    threads that read the queues and hand batches to the actors."""

    def __init__(
        self,
        settings: Settings,
        ray_settings: RaySettings,
        book: VersionBook,
        objects: Fetcher | None = None,
    ):
        self.settings = settings
        self.ray_settings = ray_settings
        self.book = book
        self.servers: dict[Key, RayModelServer] = {}
        # What the actors run on.
        self.device = "cuda" if ray_settings.actor_gpus else "cpu"
        self.cache = ModelCache(
            settings.worker_cache_dir, objects, local_paths=settings.worker_local_model_paths
        )
        self.pool = ActorPool(
            ray_settings,
            settings.worker_memory_budget_bytes,
            str(settings.worker_cache_dir),
            label=f"{settings.key_prefix}/{book.worker_id}",
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

    def outgrown(self) -> bool:
        """Never: sessions, and their arenas, live in the actors."""
        return False

    def close(self) -> None:
        """Stop the batch threads, then the actors."""
        for server in self.servers.values():
            server.stopping.set()
        for key in list(self.servers):
            self.release(key)
        for slot in list(self.pool.slots.values()):
            self.pool.remove(slot)

    def prepare(self) -> None:
        """Keep the actor count on target before the catalog's versions are placed."""
        self._supervise()

    def settle(self) -> None:
        """Forget this sync's model files in the object store; batch threads follow the
        number of actors holding each version."""
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
                if not self._load_on(home, key, self.book.specs[key]):
                    return False
            self.pool.drain(slot)
            self.pool.remove(slot)
            return True
        log.warning("no actor can be removed: their models fit nowhere else")
        return False

    def place(self, key: Key, spec: ModelSpec) -> None:
        """At least one actor holds the version; every other actor with room holds a copy."""
        estimate = self.book.measured.get(key, spec.size)
        live = self.pool.live()
        if not self.pool.holders(key):
            on_demand = key in self.book.wanted
            choice = choose(
                {s.name: s.residency for s in live},
                estimate,
                evict=on_demand,
                busy=lambda k: self.book.busy(k) and len(self.pool.holders(k)) <= 1,
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
            self.book.wanted.discard(key)
        for slot in self.pool.live():
            if (slot.name, key) in self._refused:
                continue
            if key not in slot.models and fits(
                slot.residency, self.book.measured.get(key, estimate)
            ):
                self._load_on(slot, key, spec)

    def _load_on(self, slot: Slot, key: Key, spec: ModelSpec) -> bool:
        first = key not in self.servers
        if first:
            self.book.specs[key] = spec
            self.book.set_state(key, LOADING)
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
                self.book.failed[key] = spec
                self.book.set_state(key, FAILED, reason)
            return False
        self.book.failed.pop(key, None)
        self.book.measured[key] = answer["size"]
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
        elif self.book.states.get(key) is None or self.book.states[key].state != READY:
            self.book.set_state(key, READY, providers=answer["providers"])
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
            self.book.client,
            self.book.keys,
            self.book.worker_id,
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
        self.book.set_state(key, READY, providers=answer["providers"])

    def _blob(self, spec: ModelSpec):
        """The model file in Ray's object store (once per sync), from the local cache."""
        ref = self._blobs.get(spec.sha256)
        if ref is None:
            ref = self._blobs[spec.sha256] = ray.put(self.cache.path_for(spec).read_bytes())
        return ref

    def _missing(self, key: Key) -> None:
        """A batch waits for a version no live actor holds: ask for it as the API would."""
        with contextlib.suppress(redis.RedisError):
            self.book.client.publish(self.book.keys.events, f"want:{key[0]}:{key[1]}")

    def _drop(self, slot: Slot, key: Key, reason: str) -> None:
        """Unload a version from one actor; with its last copy gone it stops being served."""
        self.pool.unload(slot, key)
        if not self.pool.holders(key):
            self.release(key, reason=reason)
            if self.book.busy(key):
                self.book.wanted.add(key)  # a call slipped in meanwhile: bring it back

    def release(self, key: Key, reason: str = "unloaded") -> None:
        """Stop serving the version: its batch threads, and its copy on every actor."""
        model = self.models.pop(key, None)
        if model is not None:
            model.withdrawn.set()
        server = self.servers.pop(key, None)
        if server is not None:
            server.stop()
        for slot in list(self.pool.slots.values()):
            if key in slot.models:
                self.pool.unload(slot, key)
        self._refused = {(actor, k) for actor, k in self._refused if k != key}
        worker_metrics.MODELS_RESIDENT.set(len(self.servers))
        metrics.REPLICAS.labels(key[0], str(key[1])).set(0)
        self.book.forget(key, reason)
