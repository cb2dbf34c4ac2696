"""The local worker's batch loop, with ``session.run`` done by an actor.

``RemoteModel`` stands where ``worker.runtime.LoadedModel`` stands in ``ModelServer``: same
``spec``, ``output_names`` and ``run(feeds, outputs)``. Reading, batching, deadlines, replies,
acknowledgements, metrics and the call-by-call retry of a failing batch are the local worker's
own code; so the answers are the same bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import ray
import structlog
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from ray.exceptions import RayActorError

from inferbox.lanes.consumer import Call, LaneConsumer
from inferbox.models.spec import ModelSpec
from inferbox.scaleout import metrics
from inferbox.scaleout.pool import ActorPool, Slot
from inferbox.scaleout.scaler import Autoscaler
from inferbox.worker.batcher import Batch
from inferbox.worker.serving import ModelServer

log = structlog.get_logger(__name__)


class Withdrawn(BaseException):
    """No actor holds the version (for ``retry_wait_s``, or it was unloaded): leave the batch.

    A ``BaseException`` on purpose: ``ModelServer`` answers every ``Exception`` from a run with an
    error reply and an acknowledgement, and these calls must stay pending in Redis instead, to
    be claimed and run once an actor holds the version again.
    """


class ActorCrashed(RuntimeError):
    """The batch took several actors down with it (an ordinary error: the batch is split)."""


class RemoteModel:
    """A version served by whichever actor holds it; retried elsewhere when one dies."""

    def __init__(
        self,
        spec: ModelSpec,
        output_names: list[str],
        providers: list[str],
        pool: ActorPool,
        *,
        retry_wait_s: float,
        max_deaths: int,
        on_missing: Callable[[tuple[str, int]], None],
    ):
        self.spec = spec
        self.key = (spec.name, spec.version)
        self.output_names = output_names
        self.providers = providers
        self.load_seconds = 0.0
        self.pool = pool
        self.retry_wait_s = retry_wait_s
        self.max_deaths = max_deaths
        self.on_missing = on_missing
        self.withdrawn = threading.Event()

    def run(self, feeds, outputs: list[str] | None = None):
        """Run on a holder; on an actor's death, on another (nothing accepted is lost)."""
        deaths = 0
        waiting_since: float | None = None
        while True:
            if self.withdrawn.is_set():
                raise Withdrawn(f"{self.spec.name} version {self.spec.version} was unloaded")
            slot = self.pool.acquire(self.key)
            if slot is None:
                waiting_since = self._wait_for_holder(waiting_since)
                continue
            waiting_since = None
            try:
                answer = ray.get(slot.handle.run.remote(*self.key, feeds, outputs))
            except RayActorError as exc:
                deaths += 1
                self._actor_died(slot, deaths, exc)
                continue
            finally:
                self.pool.release(slot, self.key)
            if answer[0] == "ok":
                return answer[1], answer[2]
            self._not_run(slot, answer)

    def _wait_for_holder(self, waiting_since: float | None) -> float:
        """A short pause while no actor holds the version (the first one asks for it to be
        placed); ``Withdrawn`` once that has lasted ``retry_wait_s``. Returns when the wait
        began."""
        now = time.monotonic()
        if waiting_since is None:
            waiting_since = now
            self.on_missing(self.key)  # the Ray worker places it on a live actor
        elif now - waiting_since > self.retry_wait_s:
            raise Withdrawn(f"no actor holds {self.spec.name} version {self.spec.version}")
        time.sleep(0.02)
        return waiting_since

    def _actor_died(self, slot: Slot, deaths: int, exc: RayActorError) -> None:
        """Book the actor dead; ``ActorCrashed`` once the batch has taken down ``max_deaths``."""
        self.pool.mark_dead(slot, f"died running a batch: {type(exc).__name__}")
        metrics.BATCH_RETRIES.labels(self.spec.name, str(self.spec.version)).inc()
        if deaths >= self.max_deaths:
            raise ActorCrashed(f"the batch took down {deaths} actors") from exc
        log.warning(
            "retrying a batch on another actor",
            model=self.spec.name,
            version=self.spec.version,
            actor=slot.name,
        )

    def _not_run(self, slot: Slot, answer: tuple) -> None:
        """An actor's answer other than ``ok``: its error raised, except ``NotResident`` (the
        actor lost the version between the choice and the run), booked so that the caller
        chooses again among the others (or has it placed)."""
        _, kind, message = answer
        if kind == "NotResident":
            self.pool.unload(slot, self.key)
            return
        if kind == "InvalidArgument":
            raise InvalidArgument(message)
        raise RuntimeError(message)


class RayModelServer(ModelServer):
    """``ModelServer`` whose batch threads follow the number of actors holding the version."""

    def __init__(self, model: RemoteModel, *args, scaler: Autoscaler, threads_per_actor: int, **kw):
        super().__init__(model, *args, **kw)
        self.scaler = scaler
        self.threads_per_actor = threads_per_actor

    def start(self) -> None:
        """Create the consumer group; threads come with ``follow``."""
        LaneConsumer(
            self.client, self.keys, self.spec.name, self.spec.version, self.consumer_name
        ).ensure_groups()

    def follow(self, holders: int) -> None:
        """Enough batch threads to keep ``holders`` actors busy (threads are never stopped
        early: an idle one only blocks on its read)."""
        while len(self.threads) < max(1, holders) * self.threads_per_actor:
            thread = threading.Thread(
                target=self._loop,
                name=f"ray-serve-{self.spec.name}-{self.spec.version}-{len(self.threads)}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def _process(self, consumer: LaneConsumer, calls: list[Call]) -> None:
        now = time.time()
        self.scaler.observe([max(0.0, now - call.enqueued) for call in calls])
        super()._process(consumer, calls)

    def _run(self, consumer: LaneConsumer, batch: Batch, halvings: list[int] | None = None) -> None:
        try:
            super()._run(consumer, batch, halvings)
        except Withdrawn as exc:
            log.warning(
                "batch left in the queue for a later claim",
                model=self.spec.name,
                version=self.spec.version,
                calls=len(batch.calls),
                reason=str(exc),
            )
