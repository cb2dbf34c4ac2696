"""A worker's job lane: RQ threads take deliveries, an event loop thread runs the jobs.

``JobLane`` runs next to the model servers in the worker process. One thread holds an asyncio
loop with the PostgreSQL pool, the Redis clients (for the chunks sent on the low lane), the
runner and the reconciler. ``Settings.jobs_threads`` RQ ``SimpleWorker`` threads block on the
queue; each hands the job it takes to the loop and waits for it, so a worker runs at most that
many jobs at once. RQ never forks here: the process holds the GPU's sessions. The loop also runs
the webhook sender, in a task of its own, unless ``jobs_webhook_sender`` says a separate
``inferbox webhooks`` process delivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

import httpx
import redis
import redis.asyncio as aioredis
import structlog
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from inferbox.cache.client import ResponseCache
from inferbox.config import Settings
from inferbox.inference.directory import ModelDirectory
from inferbox.inference.service import InferenceService
from inferbox.jobs import execution
from inferbox.jobs.reconciler import Reconciler
from inferbox.jobs.runner import JobRunner
from inferbox.jobs.sender import STOP_GRACE_S, WebhookSender
from inferbox.jobs.store import JobStore
from inferbox.jobs.transport import FUNCTION, JobTransport
from inferbox.keys import Keys
from inferbox.lanes.client import InteractiveClient
from inferbox.registry.store import create_pool
from inferbox.registry.wiring import object_store

log = structlog.get_logger(__name__)

# RQ blocks on the queue for its worker TTL minus 15 s: this bounds how long a stop waits.
_RQ_WORKER_TTL = 20


class _ThreadWorker(SimpleWorker):
    """An RQ worker living in a thread of the worker process (which owns the signals)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass

    def _set_ip_address(self, connection: redis.Redis) -> None:
        # RQ looks its own address up with CLIENT LIST (every client's address and command),
        # which the worker's Redis user may not run; the address only decorates RQ's worker
        # record. The connection still gets the worker's name.
        with contextlib.suppress(redis.RedisError):
            connection.client_setname(self.name)
        self.ip_address = "unknown"

    def perform_job(self, job, queue) -> bool:
        """Run a delivery only if it is one of ours. An RQ job names the function the worker
        imports and calls (and callbacks it calls after): whoever can write to Redis could
        otherwise make this process call any importable function with arguments of its
        choice. Anything but ``transport.FUNCTION`` without callbacks fails unrun."""
        refusal = refused_delivery(job)
        if refusal is None:
            return super().perform_job(job, queue)
        log.warning("queued job refused", rq_job=job.id, reason=refusal)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        self.handle_job_failure(job, queue=queue, exc_string=f"refused: {refusal}")
        return False


def refused_delivery(job) -> str | None:
    """Why an RQ job is not a delivery ``JobTransport.enqueue`` makes (None: it is one)."""
    try:
        function, instance = job.func_name, job.instance
        args, kwargs = job.args, job.kwargs
    except Exception as exc:  # undecodable data: nothing of it is run
        return f"unreadable job data ({type(exc).__name__})"
    if function != FUNCTION or instance is not None:
        return f"it names {str(function)[:200]!r}, not {FUNCTION}"
    if kwargs or len(args) != 1 or not isinstance(args[0], str) or len(args[0]) > 64:
        return "its arguments are not one job id"
    callbacks = (
        job._success_callback_name,
        job._failure_callback_name,
        job._stopped_callback_name,
    )
    if any(callbacks):
        return "it names callbacks"
    return None


class JobLane:
    """Runs delivered jobs and the reconciler inside a worker process."""

    def __init__(self, settings: Settings, owner: str):
        self.settings = settings
        self.owner = owner
        self.keys = Keys(settings.key_prefix)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.transport = JobTransport(self.redis, self.keys)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._runner: JobRunner | None = None
        self._threads: list[threading.Thread] = []
        self._rq_workers: list[_ThreadWorker | None] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the loop thread, then the RQ threads once the loop is serving."""
        loop_thread = threading.Thread(target=self._serve, name="jobs-loop", daemon=True)
        loop_thread.start()
        self._threads.append(loop_thread)
        if not self._ready.wait(timeout=30):
            log.warning("job lane is slow to start; RQ deliveries wait for it")
        execution.install(self)
        self._rq_workers = [None] * self.settings.jobs_threads
        for index in range(self.settings.jobs_threads):
            thread = threading.Thread(
                target=self._take_deliveries, args=(index,), name=f"jobs-rq-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info("job lane started", count=self.settings.jobs_threads)

    def _take_deliveries(self, index: int) -> None:
        while not self._stopping.is_set():
            # A new name on every start: a worker that failed while Redis was away could not
            # register its death, and RQ refuses a second birth under a name whose record
            # survived (a restart from the AOF keeps it for its TTL, 80 s).
            worker = _ThreadWorker(
                [self.transport.queue],
                connection=self.redis,
                serializer=JSONSerializer,
                name=f"{self.owner}.{index}.{uuid.uuid4().hex[:6]}",
                worker_ttl=_RQ_WORKER_TTL,
            )
            self._rq_workers[index] = worker
            if self._stopping.is_set():  # stop() ran between the check and the publication
                break
            try:
                worker.work(logging_level=self.settings.log_level.upper())
            except Exception as exc:  # Redis away: RQ's loop gives up; start it again
                log.warning("job queue unreachable; retrying", error=str(exc))
            self._stopping.wait(1.0)

    def execute(self, job_id: str) -> str | None:
        """Run a job on the loop and wait for it (called from an RQ thread)."""
        if self._loop is None or self._runner is None:
            raise RuntimeError("the job lane is not running")
        future = asyncio.run_coroutine_threadsafe(self._runner.run(uuid.UUID(job_id)), self._loop)
        return future.result()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running ones are handed back to the queue for another worker."""
        self._stopping.set()
        for worker in self._rq_workers:
            if worker is not None:
                worker._stop_requested = True
        if self._loop is not None and self._stop is not None:
            runner = self._runner
            if runner is not None:
                self._loop.call_soon_threadsafe(runner.stopping.set)
            self._loop.call_soon_threadsafe(self._stop.set)
        for thread in self._threads:
            thread.join(timeout)
        execution.install(None)

    # -- the loop thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("job lane stopped on an error")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self.settings
        client = aioredis.Redis.from_url(settings.redis_url)
        lane = InteractiveClient.from_settings(settings, self.keys)
        await lane.start()
        cache = ResponseCache.from_settings(settings, self.keys, "job")
        if cache is not None:
            await cache.start()
        objects = object_store(settings)
        pool = create_pool(settings.database_url, min_size=1, max_size=4)
        # Not waiting for the database: a worker serves /infer while PostgreSQL is away.
        await pool.open(wait=False)
        store = JobStore(pool)
        async with httpx.AsyncClient(timeout=settings.jobs_webhook_timeout_s) as http:
            reconciler = Reconciler(settings, store, self.transport, objects)
            self._runner = JobRunner(
                settings,
                store,
                objects,
                InferenceService.from_settings(
                    settings,
                    lane,
                    ModelDirectory(client, self.keys, settings.status_cache_s),
                    self.keys,
                    cache,
                ),
                self.owner,
                requeue=reconciler.enqueue,
            )
            sweeping = [asyncio.create_task(reconciler.run(self._stop))]
            if settings.jobs_webhook_sender == "worker":
                sender = WebhookSender.for_store(settings, store, http)
                sweeping.append(asyncio.create_task(sender.run(self._stop)))
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*sweeping), timeout=STOP_GRACE_S + 1)
                # Jobs still running hand themselves back before the clients close.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._runner.idle.wait(), timeout=10)
                if cache is not None:
                    await cache.close()
                await lane.close()
                await pool.close()
                await client.aclose()
