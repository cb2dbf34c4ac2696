"""The reconciler: makes Redis agree with the ledger, and cleans up after jobs.

Every worker runs one (they coordinate through row locks, ``FOR UPDATE SKIP LOCKED``). Each
sweep:

- queues again the running jobs whose worker stopped renewing its lease (killed, hung), or
  fails them once they have used all their attempts;
- queues again the queued jobs whose RQ delivery is gone (Redis restarted empty or flushed,
  or a worker died between taking a delivery and claiming the job);
- expires finished jobs past their retention and deletes their data from the object store,
  and deletes expired input files;
- refreshes the ``inferbox_jobs`` gauge.

Completion webhooks are not its duty: the webhook sender (``sender.py``) delivers them in a task
of its own, several at once, so a slow receiver never holds up these sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog

from inferbox.config import Settings
from inferbox.jobs.runner import job_prefix
from inferbox.jobs.store import FAILED, STATES, JobStore
from inferbox.jobs.transport import JobTransport
from inferbox.observability import worker_metrics as metrics
from inferbox.registry.objects import ObjectStore

log = structlog.get_logger(__name__)


class Reconciler:
    """One worker's periodic sweep over the job ledger."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        transport: JobTransport,
        objects: ObjectStore,
    ):
        self.settings = settings
        self.store = store
        self.transport = transport
        self.objects = objects
        self._seen_models: set[str] = set()

    async def enqueue(self, job_id: uuid.UUID) -> None:
        """Put a queued job on the RQ queue and record the delivery."""
        transport_id = await asyncio.to_thread(self.transport.enqueue, job_id)
        await self.store.mark_enqueued(job_id, transport_id)

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep every ``jobs_reconcile_s`` until ``stopping`` is set; errors are logged (a
        dependency that is down makes the sweep wait for the next round)."""
        failures = 0
        while not stopping.is_set():
            try:
                await self.sweep()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("job reconciler sweep failed", error=str(exc), count=failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.settings.jobs_reconcile_s)

    async def sweep(self) -> None:
        """One round of every duty."""
        await self._requeue_lost()
        await self._redeliver()
        await self._expire()
        await self._count()

    async def _requeue_lost(self) -> None:
        requeued, failed = await self.store.requeue_lost("the worker running it was lost")
        for job in requeued:
            log.warning("job's worker was lost; queued again", job_id=str(job.id))
            metrics.JOBS_REQUEUED.labels("worker_lost").inc()
            await self.enqueue(job.id)
        for job in failed:
            log.warning("job's worker was lost too often; failed", job_id=str(job.id))
            metrics.JOBS_FINISHED.labels(job.model, FAILED).inc()

    async def _redeliver(self) -> None:
        for job in await self.store.stale_queued(self.settings.jobs_requeue_after_s):
            if await asyncio.to_thread(self.transport.pending, job.transport_id):
                await self.store.mark_enqueued(job.id, job.transport_id)  # still waiting: fine
                continue
            log.warning("job's delivery was lost; queued again", job_id=str(job.id))
            metrics.JOBS_REQUEUED.labels("transport_lost").inc()
            await self.enqueue(job.id)

    async def _expire(self) -> None:
        keys: list[str] = []
        for job in await self.store.expire():
            # Everything under the job's prefix: its request, its result, and the result of
            # an attempt whose worker died before recording it.
            keys += await asyncio.to_thread(self.objects.keys_under, job_prefix(job.id))
        keys += await self.store.expire_inputs()
        if keys:
            failed = await asyncio.to_thread(self.objects.delete_many, keys)
            log.info("expired job data deleted", count=len(keys) - len(failed))
            if failed:
                log.warning("some expired job objects could not be deleted", count=len(failed))

    async def _count(self) -> None:
        counts = await self.store.counts()
        models = {model for model, _ in counts} | self._seen_models
        for model in models:
            for state in STATES:
                metrics.JOBS.labels(model, state).set(counts.get((model, state), 0))
        self._seen_models = models
