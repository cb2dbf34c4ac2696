"""The Ray worker's actors: start, watch, drain and remove them; choose one for a batch.

Each actor is a ``Slot`` with its own residency bookkeeping. A batch goes to the live holder of
its version with the fewest batches in flight. An actor found dead (a failed call, or a failed
ping) leaves the pool at once; the Ray worker starts a replacement while it is below its target.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import structlog
from ray.exceptions import GetTimeoutError, RayActorError

from inferbox.models.spec import ModelSpec
from inferbox.scaleout import metrics
from inferbox.scaleout.actor import actor_class
from inferbox.scaleout.settings import RaySettings
from inferbox.worker.residency import Residency

log = structlog.get_logger(__name__)

Key = tuple[str, int]


class ActorGone(Exception):
    """The actor died (or was removed) before answering."""


class NoCapacity(Exception):
    """The cluster could not place another actor in time (no free GPU or CPU)."""


@dataclass(eq=False)
class Slot:
    """One actor and what the Ray worker knows about it."""

    name: str
    number: int
    handle: Any
    residency: Residency
    info: dict = field(default_factory=dict)
    models: dict[Key, dict] = field(default_factory=dict)
    """Resident versions: the actor's answer to ``load`` (output names, providers, size)."""
    in_flight: int = 0
    draining: bool = False
    dead: bool = False


class ActorPool:
    """The actors of one Ray worker, named ``<prefix>/<worker id>/<n>`` in the Ray namespace."""

    def __init__(self, ray_settings: RaySettings, budget_bytes: int, cache_dir: str, label: str):
        self.settings = ray_settings
        self.budget = budget_bytes
        self.cache_dir = cache_dir
        self.label = label
        self.cls = actor_class(ray_settings.actor_gpus, ray_settings.actor_cpus)
        self.slots: dict[str, Slot] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Condition()

    # -- membership -----------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> Slot:
        """Start one actor and wait until it answers; raises ``NoCapacity`` if it cannot."""
        resource, amount = (
            ("GPU", self.settings.actor_gpus)
            if self.settings.actor_gpus
            else ("CPU", self.settings.actor_cpus)
        )
        free = ray.available_resources().get(resource, 0.0)
        if free < amount:
            # Asked of Ray first: an actor that cannot be placed would only wait (and hold the
            # Ray worker's sync loop) until the timeout.
            raise NoCapacity(f"the cluster has {free:g} {resource} free, an actor needs {amount:g}")
        number = next(self._numbers)
        name = f"{self.label}/{number}"
        handle = self.cls.options(name=name, namespace=self.settings.namespace).remote(
            self.cache_dir, self.settings.actor_gpus, self.settings.actor_cpus
        )
        try:
            info = ray.get(handle.info.remote(), timeout=timeout_s)
        except (GetTimeoutError, RayActorError) as exc:
            ray.kill(handle)
            raise NoCapacity(f"actor {name} did not start: {exc}") from exc
        slot = Slot(name, number, handle, Residency(self.budget), info)
        with self._lock:
            self.slots[name] = slot
        metrics.ACTORS.set(len(self.live()))
        log.info("actor started", actor=name, **info)
        return slot

    def live(self) -> list[Slot]:
        """Actors that take new batches."""
        with self._lock:
            return [s for s in self.slots.values() if not s.dead and not s.draining]

    def holders(self, key: Key) -> list[Slot]:
        """Live actors holding a version."""
        return [s for s in self.live() if key in s.models]

    def mark_dead(self, slot: Slot, reason: str) -> None:
        """Take a dead actor out of the pool (once), forgetting its models."""
        with self._lock:
            if slot.dead:
                return
            slot.dead = True
            self.slots.pop(slot.name, None)
            self._lock.notify_all()
        metrics.ACTOR_DEATHS.inc()
        metrics.ACTORS.set(len(self.live()))
        log.error(
            "actor died",
            actor=slot.name,
            reason=reason,
            models=[f"{n}/{v}" for n, v in slot.models],
            pid=slot.info.get("pid"),
        )
        ray.kill(slot.handle)

    def check(self, timeout_s: float = 5.0) -> list[Slot]:
        """Ping every actor; those that are gone are taken out and returned."""
        with self._lock:
            slots = list(self.slots.values())
        refs = {slot.handle.info.remote(): slot for slot in slots}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        gone = []
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError as exc:
                self.mark_dead(refs[ref], f"ping failed: {type(exc).__name__}")
                gone.append(refs[ref])
        return gone

    def drain(self, slot: Slot, timeout_s: float = 60.0) -> None:
        """Stop giving the actor batches and wait for those it has."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            slot.draining = True
            while slot.in_flight and not slot.dead:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)

    def remove(self, slot: Slot) -> None:
        """Kill an actor on purpose (scale down, shutdown)."""
        with self._lock:
            self.slots.pop(slot.name, None)
            slot.draining = True
        ray.kill(slot.handle)
        metrics.ACTORS.set(len(self.live()))
        log.info("actor removed", actor=slot.name)

    # -- models ---------------------------------------------------------------------------

    def load(self, slot: Slot, spec: ModelSpec, blob_ref, timeout_s: float = 600.0) -> dict:
        """Load a version on an actor and book its measured size there."""
        try:
            answer = ray.get(slot.handle.load.remote(spec, blob_ref), timeout=timeout_s)
        except RayActorError as exc:
            self.mark_dead(slot, f"died while loading: {type(exc).__name__}")
            raise ActorGone(slot.name) from exc
        key = (spec.name, spec.version)
        with self._lock:
            slot.residency.add(key, answer["size"], pinned=spec.config.pinned)
            slot.models[key] = answer
        return answer

    def unload(self, slot: Slot, key: Key) -> None:
        """Drop a version from one actor (an actor that is gone has dropped it already)."""
        with self._lock:
            slot.models.pop(key, None)
            slot.residency.remove(key)
        if slot.dead:
            return
        try:
            ray.get(slot.handle.unload.remote(*key), timeout=30)
        except (RayActorError, GetTimeoutError) as exc:
            log.warning("unload failed", actor=slot.name, model=key[0], error=str(exc))

    # -- batches --------------------------------------------------------------------------

    def acquire(self, key: Key) -> Slot | None:
        """The live holder of ``key`` with the fewest batches in flight (reserved), or None."""
        with self._lock:
            holders = [
                s for s in self.slots.values() if key in s.models and not (s.dead or s.draining)
            ]
            if not holders:
                return None
            slot = min(holders, key=lambda s: (s.in_flight, s.number))
            slot.in_flight += 1
            return slot

    def release(self, slot: Slot, key: Key) -> None:
        """A batch on ``slot`` finished (either way)."""
        with self._lock:
            slot.in_flight -= 1
            self._lock.notify_all()
        slot.residency.touch(key)
