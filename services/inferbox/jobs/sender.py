"""The webhook sender: delivers due completion webhooks, several at once, on its own.

It runs beside the reconciler in every worker's job lane (``jobs_webhook_sender = "worker"``,
the default), or as a process of its own, ``inferbox webhooks`` (``serve``), with the workers
told ``separate``: in the appliance that process is the one inferbox container with a way out,
and it holds nothing but a database role that reads jobs and writes their webhook columns.

Deliveries run as tasks, at most ``jobs_webhook_concurrency`` at once, each bounded by
``webhooks.DELIVERY_DEADLINE_S``: a slow receiver holds one slot, never the others, and never
the reconciler's other duties (requeueing lost jobs, expiring data), which run in another task.

A sender claims no more due webhooks than it has free slots (``JobStore.due_webhooks``: ``FOR
UPDATE SKIP LOCKED``, then the next try pushed ``CLAIM_S`` ahead), so every claimed delivery
starts at once and ends, outcome recorded, well before its claim runs out: several senders
(every worker, or several ``inferbox webhooks``) never deliver the same try twice. A sender
that dies mid-delivery leaves its claims due again after ``CLAIM_S`` (at least once, not
exactly once: receivers dedupe on ``X-Inferbox-Job-Id``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import httpx
import structlog

from inferbox.config import Settings
from inferbox.jobs import webhooks
from inferbox.jobs.store import Job, JobStore
from inferbox.observability import worker_metrics as metrics

log = structlog.get_logger(__name__)

CLAIM_S = 2 * webhooks.DELIVERY_DEADLINE_S
"""How long a claimed delivery is held from other senders: twice the longest a delivery takes."""

STOP_GRACE_S = 5.0
"""How long a stopping sender lets deliveries in flight finish before cancelling them (their
claims then run out, and the next sender tries again)."""

Claim = Callable[[int], Awaitable[list[Job]]]
Send = Callable[[Job], Awaitable[None]]


class WebhookSender:
    """Claims due deliveries and runs each as a task, at most ``size`` at a time.

    ``claim(n)`` takes up to ``n`` due deliveries; ``send(job)`` delivers one and records its
    outcome. ``for_store`` wires them to the job ledger."""

    def __init__(self, claim: Claim, send: Send, *, size: int, poll_s: float):
        self.claim = claim
        self.send = send
        self.size = size
        self.poll_s = poll_s
        self._running: set[asyncio.Task] = set()

    @classmethod
    def for_store(
        cls, settings: Settings, store: JobStore, http: httpx.AsyncClient
    ) -> WebhookSender:
        """A sender over the job ledger, with the settings' secret, retries and pool size."""

        async def claim(limit: int) -> list[Job]:
            return await store.due_webhooks(limit, hold_s=CLAIM_S)

        async def send(job: Job) -> None:
            await deliver_and_record(settings, store, http, job)

        return cls(
            claim, send, size=settings.jobs_webhook_concurrency, poll_s=settings.jobs_reconcile_s
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until ``stopping`` is set, then give deliveries in flight ``STOP_GRACE_S``."""
        stop = asyncio.create_task(stopping.wait())
        failures = 0
        try:
            while not stopping.is_set():
                free = self.size - len(self._running)
                claimed: list[Job] = []
                if free > 0:
                    try:
                        claimed = await self.claim(free)
                        failures = 0
                    except Exception as exc:  # the database away: try at the next round
                        failures += 1
                        if failures in (1, 10) or failures % 100 == 0:
                            log.warning("webhook claim failed", error=str(exc), count=failures)
                for job in claimed:
                    task = asyncio.create_task(self._send(job))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                # Every slot was filled (or none was free): more may be due, so look again as
                # soon as a delivery ends. Otherwise nothing is due until the next round.
                busy = free <= 0 or len(claimed) == free
                wake = {stop, *self._running} if busy else {stop}
                await asyncio.wait(wake, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await self._drain()

    async def _send(self, job: Job) -> None:
        try:
            await self.send(job)
        except Exception as exc:  # not recorded: its claim runs out, and it is tried again
            log.warning("webhook outcome not recorded", job_id=str(job.id), error=str(exc))

    async def _drain(self) -> None:
        tasks = set(self._running)
        if not tasks:
            return
        try:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        finally:  # also when the sender itself is cancelled: no delivery outlives it
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def deliver_and_record(
    settings: Settings, store: JobStore, http: httpx.AsyncClient, job: Job
) -> None:
    """Deliver one job's webhook and record the outcome: delivered, retry after a backoff, or
    failed after ``jobs_webhook_max_attempts`` tries."""
    error = await webhooks.deliver(
        http,
        job,
        settings.jobs_webhook_secret,
        allow_private=settings.jobs_webhook_allow_private,
    )
    if error is None:
        metrics.WEBHOOKS.labels("delivered").inc()
        await store.webhook_outcome(job.id, delivered=True, error=None, retry_in_s=None)
        return
    attempts = job.webhook_attempts + 1
    retry = webhooks.backoff_s(attempts) if attempts < settings.jobs_webhook_max_attempts else None
    metrics.WEBHOOKS.labels("retry" if retry is not None else "failed").inc()
    log.info("job webhook not delivered", job_id=str(job.id), error=error, attempt=attempts)
    await store.webhook_outcome(job.id, delivered=False, error=error, retry_in_s=retry)


async def serve(settings: Settings) -> None:
    """``inferbox webhooks``: deliver until SIGTERM or SIGINT.

    Needs only PostgreSQL (a role with ``inferbox db app-role --component webhooks``) and a way
    to the receivers: no Redis, no object store, no model."""
    from inferbox.registry.store import create_pool

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    pool = create_pool(settings.database_url, min_size=1, max_size=4)
    # Not waiting for the database: the sender logs and tries again while it is away.
    await pool.open(wait=False)
    try:
        async with httpx.AsyncClient(timeout=settings.jobs_webhook_timeout_s) as http:
            sender = WebhookSender.for_store(settings, JobStore(pool), http)
            log.info("webhook sender started", concurrency=sender.size)
            await sender.run(stopping)
    finally:
        await pool.close()
    log.info("webhook sender stopped")
