"""Running one job (``JobRunner.run``): claim it, read its input, compute it chunk by chunk on
the low-priority lane, store the result, and record the outcome if the claim still holds.

Chunks go through the same Redis streams as synchronous calls, on the low lane: any worker
holding the model batches them, and interactive calls (high lane) are always read first, so a
job never delays ``/infer``. A few chunks are in flight at once to keep batches full.

The claim (a lease in PostgreSQL) is renewed while the job runs. If renewal fails the job was
cancelled, or the lease ran out and another worker took it over: this run stops and discards
its work, so the ledger holds exactly one result whichever run finishes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from inferbox.config import Settings
from inferbox.errors import (
    BadRequest,
    DeadlineExceeded,
    InferboxError,
    NotFound,
    Unavailable,
)
from inferbox.inference.service import InferenceService
from inferbox.inference.validation import check_request, tensor_limits
from inferbox.jobs.inputs import RowReader
from inferbox.jobs.store import CANCELLED, FAILED, SUCCEEDED, Job, JobStore
from inferbox.jobs.tensors import OutputJoiner, SpooledOutputs, chunk_call, to_array
from inferbox.models.spec import ModelSpec
from inferbox.observability import worker_metrics as metrics
from inferbox.protocol.codec import (
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
)
from inferbox.redaction import redact
from inferbox.registry.objects import ObjectStore

log = structlog.get_logger(__name__)

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
# A chunk that times out or finds its queue full is tried again this many times.
_CHUNK_TRIES = 4


def job_prefix(job_id: uuid.UUID) -> str:
    """The object key prefix of everything a job stores."""
    return f"jobs/{job_id}/"


def result_key(job_id: uuid.UUID, attempt: int) -> str:
    """Where one attempt of a job stores its result (attempts never overwrite each other)."""
    return f"jobs/{job_id}/result.{attempt}"


def request_key(job_id: uuid.UUID) -> str:
    """Where a job's V2 request body is stored."""
    return f"jobs/{job_id}/request"


class LeaseLost(Exception):
    """The job was cancelled or given to another worker: stop and discard."""


class ShuttingDown(Exception):
    """This worker is stopping: hand the job back to the queue."""


class JobFailed(InferboxError):
    """A job that cannot succeed however often it is tried (bad input, a model error)."""


@dataclass
class _Work:
    """What to compute: input arrays (or a row reader), and how to shape the answer."""

    names: list[str]
    datatypes: list[str]
    rows: int | None
    arrays: list[np.ndarray] | None
    reader: RowReader | None
    requested: list[RequestedOutput] | None
    binary_default: bool
    response_id: str | None


class JobRunner:
    """Runs jobs for one worker (``owner``), sharing its event loop's Redis and pool clients."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        objects: ObjectStore,
        inference: InferenceService,
        owner: str,
        requeue: Callable[[uuid.UUID], Awaitable[None]],
    ):
        """``inference`` runs the chunks (its response cache, source ``job``, answers a chunk
        of a model with ``response_cache`` when it holds the answer and keeps the answers
        computed for the others); ``requeue`` puts a job handed back by this runner on the
        queue again."""
        self.settings = settings
        self.store = store
        self.objects = objects
        self.inference = inference
        self.directory = inference.directory
        self.owner = owner
        self.requeue = requeue
        self.stopping = asyncio.Event()
        self.active = 0
        """Jobs running now."""
        self.idle = asyncio.Event()
        """Set while no job runs (a stopping lane waits for it)."""
        self.idle.set()
        self.limits = tensor_limits(settings)

    async def run(self, job_id: uuid.UUID) -> str | None:
        """Run a delivered job; returns the state it ended in here (None: not claimed, or
        handed back). Never raises for the job's own failures: they are recorded."""
        job = await self.store.claim(job_id, self.owner, self.settings.jobs_lease_s)
        if job is None:
            log.info("job delivery dropped: not queued", job_id=str(job_id))
            return None
        self.active += 1
        self.idle.clear()
        try:
            with structlog.contextvars.bound_contextvars(
                job_id=str(job.id), model=job.model, version=job.version, request_id=job.request_id
            ):
                return await self._run_claimed(job)
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def _run_claimed(self, job: Job) -> str | None:
        started = time.perf_counter()
        log.info("job started", attempt=job.attempts)
        workdir = self.settings.jobs_spool_dir / f"{job.id}.{job.attempts}"
        progress = _Progress(job.rows_total)
        renewer = asyncio.create_task(self._keep_lease(job, progress))
        work = asyncio.create_task(self._compute(job, workdir, progress))
        try:
            done, _ = await asyncio.wait({renewer, work}, return_when=asyncio.FIRST_COMPLETED)
            if renewer in done:  # it only ends by losing the lease (or shutting down)
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                renewer.result()
            key, content_type, header_length, size = work.result()
        except LeaseLost:
            log.info("job stopped: cancelled or taken over by another worker")
            metrics.JOBS_FINISHED.labels(job.model, CANCELLED).inc()
            return None
        except ShuttingDown:
            await self._hand_back(job)
            return None
        except (JobFailed, BadRequest, NotFound) as exc:
            return await self._fail(job, exc.message)
        except Exception as exc:
            log.exception("job attempt failed", error=str(exc))
            return await self._attempt_failed(job, exc)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        recorded = await self.store.succeed(
            job.id,
            self.owner,
            result_key=key,
            content_type=content_type,
            header_length=header_length,
            size=size,
            rows_done=progress.done,
        )
        if not recorded:
            # Cancelled, or another worker holds it now: only its result may count.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.objects.delete, key)
            log.info("job result discarded: the claim was lost before it was recorded")
            return None
        elapsed = time.perf_counter() - started
        metrics.JOBS_FINISHED.labels(job.model, SUCCEEDED).inc()
        metrics.JOB_SECONDS.labels(job.model).observe(elapsed)
        metrics.JOB_ROWS.labels(job.model).inc(progress.done)
        log.info("job succeeded", duration_ms=round(elapsed * 1000, 3), rows=progress.done)
        return SUCCEEDED

    async def _hand_back(self, job: Job) -> None:
        """Give the claimed job back to the queue as this worker stops (no attempt used up)."""
        if await self.store.release(job.id, self.owner, "handed back by a stopping worker"):
            metrics.JOBS_REQUEUED.labels("released").inc()
            log.info("job handed back to the queue")
            try:
                await self.requeue(job.id)
            except Exception as exc:  # the reconciler delivers it later
                log.warning("could not queue the handed-back job", error=str(exc))

    async def _attempt_failed(self, job: Job, exc: Exception) -> str | None:
        """Transient trouble (S3, Redis, PostgreSQL unreachable) or a bug: the job is tried
        again later while attempts remain, then fails."""
        # The job's owner reads the error: the backend's names and addresses are left out of it
        # (the log keeps them).
        log.warning("job attempt failed", attempt=job.attempts, error=str(exc)[:2000])
        if job.attempts >= job.max_attempts:
            return await self._fail(
                job, f"gave up after {job.attempts} attempts: {redact(str(exc))}"
            )
        reason = f"attempt failed: {redact(str(exc))}"
        if await self.store.release(job.id, self.owner, reason, refund=False):
            metrics.JOBS_REQUEUED.labels("released").inc()
        return None

    async def _fail(self, job: Job, reason: str) -> str | None:
        if await self.store.fail(job.id, self.owner, reason):
            metrics.JOBS_FINISHED.labels(job.model, FAILED).inc()
            log.warning("job failed", error=reason)
            return FAILED
        return None

    async def _keep_lease(self, job: Job, progress: _Progress) -> None:
        """Renew the claim every third of the lease; raise when it is lost or on shutdown."""
        interval = self.settings.jobs_lease_s / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=interval)
            if self.stopping.is_set():
                raise ShuttingDown()
            try:
                held = await self.store.renew(
                    job.id, self.owner, self.settings.jobs_lease_s, progress.done, progress.ratio
                )
            except Exception as exc:  # the database is away: keep computing, try again
                log.warning("could not renew the job's lease", error=str(exc))
                continue
            if not held:
                raise LeaseLost()

    # -- computing ----------------------------------------------------------------------------

    async def _compute(
        self, job: Job, workdir: Path, progress: _Progress
    ) -> tuple[str, str, int | None, int]:
        try:
            spec = await self.directory.resolve(job.model, str(job.version))
        except NotFound:
            raise JobFailed(f"model {job.model!r} version {job.version} no longer exists") from None
        if spec.error:
            raise JobFailed(
                f"model {job.model!r} version {job.version} is not usable: {spec.error}"
            )
        work = await self._prepare(job, spec, workdir)
        progress.total = work.rows
        key = result_key(job.id, job.attempts)
        if work.reader is not None:
            # Bulk: outputs go to disk chunk by chunk, and the result is uploaded from there.
            spooled = SpooledOutputs(workdir / "outputs")
            try:
                await self._run_chunks(job, spec, work, progress, spooled)
            finally:
                work.reader.close()
            path = workdir / "result"
            header_length, size = await asyncio.to_thread(
                spooled.write_response,
                path,
                model_name=spec.name,
                model_version=str(spec.version),
                request_id=work.response_id,
                requested=work.requested,
            )
            await asyncio.to_thread(self.objects.put_path, key, path, BINARY_TYPE)
            return key, BINARY_TYPE, header_length, size
        joiner = OutputJoiner()
        await self._run_chunks(job, spec, work, progress, joiner)
        payload, header_length = encode_infer_response(
            model_name=spec.name,
            model_version=str(spec.version),
            request_id=work.response_id,
            outputs=joiner.join(),
            requested=work.requested,
            binary_default=work.binary_default,
        )
        content_type = JSON_TYPE if header_length is None else BINARY_TYPE
        await asyncio.to_thread(self.objects.put_bytes, key, payload, content_type)
        return key, content_type, header_length, len(payload)

    async def _prepare(self, job: Job, spec: ModelSpec, workdir: Path) -> _Work:
        names = [t.name for t in spec.inputs]
        datatypes = [t.datatype for t in spec.inputs]
        if job.kind == "request":
            body = await asyncio.to_thread(self.objects.get_bytes, job.input_key)
            decoded = decode_infer_request(body, job.header_length, self.limits)
            metas, raws, _ = check_request(decoded, spec, batch_limit=False)
            arrays = [
                to_array(m.datatype, m.shape, raw) for m, raw in zip(metas, raws, strict=True)
            ]
            rows = metas[0].shape[0] if spec.config.max_batch_size > 0 and metas else None
            return _Work(
                names,
                datatypes,
                rows,
                arrays,
                None,
                decoded.outputs,
                decoded.binary_output_default,
                decoded.id,
            )
        options = job.options
        local = await asyncio.to_thread(
            self.objects.download, job.input_key, workdir / f"input.{options['format']}"
        )
        reader = await asyncio.to_thread(
            RowReader, local, options["format"], spec, options["mapping"], workdir
        )
        wanted = options.get("outputs")
        requested = None if wanted is None else [RequestedOutput(n, True) for n in wanted]
        return _Work(
            names, datatypes, job.rows_total, None, reader, requested, True, options.get("id")
        )

    async def _run_chunks(
        self,
        job: Job,
        spec: ModelSpec,
        work: _Work,
        progress: _Progress,
        joiner: OutputJoiner | SpooledOutputs,
    ) -> None:
        """Run the work chunk by chunk on the low lane, handing each chunk's outputs to
        ``joiner`` with its first row."""
        if work.rows is None:  # no batch dimension: the request is one call
            metas, raws = chunk_call(work.names, work.datatypes, work.arrays, 0, None)
            out_metas, out_raws = await self._call(job, spec, metas, raws)
            joiner.add(0, out_metas, out_raws)
            return
        size = self.settings.jobs_chunk_rows or spec.config.max_batch_size
        size = max(1, min(size, spec.config.max_batch_size))
        window = asyncio.Semaphore(self.settings.jobs_chunks_in_flight)
        tasks: set[asyncio.Task] = set()

        async def one(start: int, metas, raws) -> None:
            try:
                out_metas, out_raws = await self._call(job, spec, metas, raws)
                await asyncio.to_thread(joiner.add, start, out_metas, out_raws)
                progress.done += metas[0].shape[0]
            finally:
                window.release()

        try:
            for start in range(0, work.rows, size):
                stop = min(start + size, work.rows)
                await window.acquire()
                self._raise_finished(tasks)
                if self.stopping.is_set():
                    raise ShuttingDown()
                if work.reader is not None:
                    arrays = await asyncio.to_thread(work.reader.read, start, stop)
                    metas, raws = chunk_call(work.names, work.datatypes, arrays, 0, None)
                else:
                    metas, raws = chunk_call(work.names, work.datatypes, work.arrays, start, stop)
                tasks.add(asyncio.create_task(one(start, metas, raws)))
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                tasks = set(tasks)
                self._raise_finished(done)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _raise_finished(tasks: set[asyncio.Task]) -> None:
        """Re-raise the first failure among finished chunk tasks; forget the successful."""
        for task in [t for t in tasks if t.done()]:
            tasks.discard(task)
            task.result()

    async def _call(self, job: Job, spec: ModelSpec, metas, raws):
        """One chunk on the low lane (``InferenceService.compute``: from the response cache
        when the model uses it and holds the answer, with the job's key as the namespace where
        entries are per key); queue-full and deadline misses are tried again."""
        timeout = self.settings.jobs_chunk_timeout_s
        for attempt in range(1, _CHUNK_TRIES + 1):
            try:
                # Checked on every try: an unloaded version's answers are not served, cached
                # or not.
                await self.inference.directory.admit(spec)
                out_metas, out_raws, _ = await self.inference.compute(
                    spec,
                    metas,
                    raws,
                    None,
                    request_id=job.request_id,
                    lane="lo",
                    timeout_s=timeout,
                    namespace=job.api_key_id,
                )
                return out_metas, out_raws
            except (DeadlineExceeded, Unavailable) as exc:
                if isinstance(exc, Unavailable) and "unloaded" in exc.message:
                    raise JobFailed(exc.message) from None
                if attempt == _CHUNK_TRIES:
                    raise
                log.info("job chunk delayed; trying again", error=exc.message, attempt=attempt)
                await asyncio.sleep(min(2.0**attempt, 30.0))
            except InferboxError as exc:
                # The worker ran the chunk and the model refused it: retrying cannot help.
                raise JobFailed(f"the model failed on the job's input: {exc.message}") from None
        raise AssertionError("unreachable")


class _Progress:
    """Rows done out of the total (None: one call without a batch dimension)."""

    def __init__(self, total: int | None):
        self.total = total
        self.done = 0

    @property
    def ratio(self) -> float:
        if not self.total:
            return 0.0
        return self.done / self.total
