"""What the API does with jobs (``JobService``): accept, look up, list, cancel, hand out results.

Accepting a job stores its input in the object store, commits its row, and only then answers
202; putting its id on the RQ queue comes last and may fail (Redis away) without losing it: the
reconciler delivers every queued job that RQ does not hold.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import structlog
from minio.error import S3Error
from redis.exceptions import RedisError

from inferbox.config import Settings
from inferbox.errors import BadRequest, InferboxError, NotFound
from inferbox.inference.validation import check_declared, check_request
from inferbox.jobs import inputs
from inferbox.jobs.runner import request_key
from inferbox.jobs.store import (
    CANCELLED,
    EXPIRED,
    STATES,
    SUCCEEDED,
    Job,
    JobInput,
    JobStore,
    NewJob,
)
from inferbox.jobs.transport import JobTransport
from inferbox.models.spec import ModelSpec
from inferbox.protocol.codec import TOO_DEEP, TensorLimits, decode_infer_request, peek_inputs
from inferbox.registry.objects import ObjectStore
from inferbox.registry.upload import spool
from inferbox.security.keystore import KeyRecord

log = structlog.get_logger(__name__)

MAX_PAGE = 200
_REQUEST_CONTENT_TYPE = "application/octet-stream"


class Gone(InferboxError):
    """The job's result was removed after its retention (410)."""

    status = 410


class NotFinished(InferboxError):
    """The job has no result (yet, or ever): queued, running, failed or cancelled (409)."""

    status = 409


class BulkRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of a job over an uploaded input file."""

    input_id: str
    id: str | None = None
    outputs: list[str] | None = None
    parameters: dict = {}


class JobOptions(msgspec.Struct, forbid_unknown_fields=True):
    """Job options read from a submission's ``parameters``."""

    webhook_url: str | None = None
    retention_s: int | None = None


_OPTION_NAMES = frozenset(JobOptions.__struct_fields__)


def _options(parameters: dict, settings: Settings) -> JobOptions:
    picked = {k: v for k, v in parameters.items() if k in _OPTION_NAMES}
    try:
        options = msgspec.convert(picked, JobOptions)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"job parameters: {exc}") from None
    if options.webhook_url is not None and not options.webhook_url.startswith(
        ("http://", "https://")
    ):
        raise BadRequest("webhook_url must be an http:// or https:// URL")
    if options.retention_s is not None and not (
        1 <= options.retention_s <= settings.jobs_max_retention_s
    ):
        raise BadRequest(f"retention_s must be 1 to {settings.jobs_max_retention_s} seconds")
    return options


def encode_cursor(job: Job) -> str:
    """The opaque cursor of the page after ``job``."""
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor stands for; ``BadRequest`` for anything else."""
    try:
        created, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("malformed cursor") from None


def _owner(key: KeyRecord | None) -> str | None:
    return key.id if key is not None else None


def _sees_all(key: KeyRecord | None) -> bool:
    # Without auth (development) everything is visible; admins see every key's jobs.
    return key is None or "admin" in key.scopes


class JobService:
    """The jobs API's logic, over the ledger, the object store and the RQ transport."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        objects: ObjectStore,
        transport: JobTransport,
        limits: TensorLimits,
    ):
        self.settings = settings
        self.store = store
        self.objects = objects
        self.transport = transport
        self.limits = limits

    # -- submission ---------------------------------------------------------------------------

    async def submit(
        self,
        spec: ModelSpec,
        body: bytes,
        header_length: int | None,
        *,
        key: KeyRecord | None,
        idempotency_key: str | None,
        request_id: str,
    ) -> tuple[Job, bool]:
        """Accept a job for ``spec``: a V2 request body, or (JSON with ``input_id``) a job over
        an uploaded file. Returns ``(job, created)``; ``created`` is False when the key's
        ``Idempotency-Key`` was used before (the earlier job is returned, nothing is added)."""
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 200:
                raise BadRequest("Idempotency-Key must be 1 to 200 characters")
            existing = await self.store.by_idempotency_key(_owner(key), idempotency_key)
            if existing is not None:
                return existing, False
        job_id = uuid.uuid4()
        bulk = _bulk_request(body) if header_length is None else None
        common = {
            "id": job_id,
            "model": spec.name,
            "version": spec.version,
            "max_attempts": self.settings.jobs_max_attempts,
            "idempotency_key": idempotency_key,
            "api_key_id": _owner(key),
            "request_id": request_id,
        }
        uploaded = None
        if bulk is not None:
            row = await self._bulk(spec, bulk, key, common)
        else:
            check_declared(peek_inputs(body, header_length), spec)
            decoded = await asyncio.to_thread(
                decode_infer_request, body, header_length, self.limits
            )
            await asyncio.to_thread(check_request, decoded, spec, batch_limit=False)
            options = _options(decoded.parameters, self.settings)
            rows = decoded.inputs[0].shape[0] if spec.config.max_batch_size > 0 else None
            uploaded = request_key(job_id)
            await asyncio.to_thread(self.objects.put_bytes, uploaded, body, _REQUEST_CONTENT_TYPE)
            priority = decoded.priority or (key.priority if key is not None else 0)
            row = NewJob(
                **common,
                kind="request",
                input_key=uploaded,
                header_length=header_length,
                priority=priority,
                rows_total=rows,
                webhook_url=options.webhook_url,
                retention_s=self._retention(spec, options),
            )
        job, created = await self.store.create(row)
        if not created:
            # The same key raced itself: the other request's job stands.
            if uploaded is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.objects.delete, uploaded)
            return job, False
        await self._deliver(job)
        return job, True

    async def _bulk(self, spec: ModelSpec, bulk: BulkRequest, key, common: dict) -> NewJob:
        row = await self.store.get_input(bulk.input_id)
        if row is None or not (_sees_all(key) or row.api_key_id == _owner(key)):
            raise NotFound(f"no job input {bulk.input_id!r} (unknown or expired)")
        mapping = inputs.bind(spec, row.arrays)
        if bulk.outputs is not None:
            known = {t.name for t in spec.outputs}
            unknown = [name for name in bulk.outputs if name not in known]
            if unknown:
                raise BadRequest(f"unknown output {unknown[0]!r} for model {spec.name!r}")
        options = _options(bulk.parameters, self.settings)
        return NewJob(
            **common,
            kind="bulk",
            input_key=row.object_key,
            input_id=row.id,
            options={
                "format": row.format,
                "mapping": mapping,
                "outputs": bulk.outputs,
                "id": bulk.id,
            },
            priority=key.priority if key is not None else 0,
            rows_total=row.rows,
            webhook_url=options.webhook_url,
            retention_s=self._retention(spec, options),
        )

    def _retention(self, spec: ModelSpec, options: JobOptions) -> int:
        """The job's own retention, else its model's, else the appliance's."""
        return options.retention_s or spec.config.job_retention_s or self.settings.jobs_retention_s

    async def _deliver(self, job: Job) -> None:
        try:
            transport_id = await asyncio.to_thread(self.transport.enqueue, job.id)
            await self.store.mark_enqueued(job.id, transport_id)
        except (RedisError, OSError) as exc:
            # Accepted all the same: the reconciler delivers jobs the queue does not hold.
            log.warning("job accepted but not queued yet", job_id=str(job.id), error=str(exc))

    async def add_input(
        self, chunks: AsyncIterable[bytes], fmt: str, key: KeyRecord | None
    ) -> JobInput:
        """Receive an input file (streamed to disk), check it, store it; its row."""
        received = await spool(chunks, self.settings.upload_dir, self.settings.jobs_max_input_bytes)
        try:
            rows, arrays = await asyncio.to_thread(
                inputs.inspect, received.path, fmt, self.settings.jobs_max_input_bytes
            )
            input_id = f"in_{secrets.token_hex(12)}"
            object_key = f"jobs/inputs/{input_id}.{fmt}"
            await asyncio.to_thread(
                self.objects.put_path, object_key, received.path, "application/octet-stream"
            )
        finally:
            await asyncio.to_thread(Path(received.path).unlink, True)
        expires = datetime.now(UTC) + timedelta(seconds=self.settings.jobs_input_retention_s)
        return await self.store.add_input(
            JobInput(
                id=input_id,
                api_key_id=_owner(key),
                format=fmt,
                object_key=object_key,
                size=received.size,
                sha256=received.sha256,
                rows=rows,
                arrays=arrays,
                created_at=datetime.now(UTC),
                expires_at=expires,
            )
        )

    async def get_input(self, input_id: str, key: KeyRecord | None) -> JobInput:
        """An input file's row, if this key may see it."""
        row = await self.store.get_input(input_id)
        if row is None or not (_sees_all(key) or row.api_key_id == _owner(key)):
            raise NotFound(f"no job input {input_id!r} (unknown or expired)")
        return row

    # -- reading and cancelling ---------------------------------------------------------------

    async def get(self, job_id: str, key: KeyRecord | None) -> Job:
        """A job this key may see (another key's job is 'not found', like an unknown one)."""
        try:
            parsed = uuid.UUID(job_id)
        except ValueError:
            raise NotFound(f"no job {job_id!r}") from None
        job = await self.store.get(parsed)
        if job is None or not (_sees_all(key) or job.api_key_id == _owner(key)):
            raise NotFound(f"no job {job_id!r}")
        return job

    async def list(
        self,
        key: KeyRecord | None,
        *,
        state: str | None,
        model: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Job], str | None]:
        """A page of jobs (newest first) and the cursor of the next page, if any."""
        if state is not None and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        jobs = await self.store.list(
            api_key_id=None if _sees_all(key) else _owner(key),
            state=state,
            model=model,
            before=decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1]) if more else None

    async def cancel(self, job_id: str, key: KeyRecord | None) -> Job:
        """Cancel a queued or running job (a running one stops at its next lease renewal).
        A job already finished is answered as it is (409 for the caller to see)."""
        job = await self.get(job_id, key)
        cancelled = await self.store.cancel(job.id)
        if cancelled is None:
            raise NotFinished(f"job {job.id} is already {job.state}")
        with contextlib.suppress(RedisError, OSError):
            await asyncio.to_thread(self.transport.withdraw, job.transport_id)
        log.info("job cancelled", job_id=str(job.id), state=job.state)
        return cancelled

    async def result(self, job_id: str, key: KeyRecord | None) -> Job:
        """The job, if its result can be fetched; else why not (409 or 410)."""
        job = await self.get(job_id, key)
        if job.state == SUCCEEDED:
            return job
        if job.state == EXPIRED:
            raise Gone(f"job {job.id}'s result was removed after its retention")
        if job.state == CANCELLED:
            raise NotFinished(f"job {job.id} was cancelled")
        if job.state == "failed":
            raise NotFinished(f"job {job.id} failed: {job.error}")
        raise NotFinished(f"job {job.id} is {job.state}", retry_after=1.0)

    async def open_result(self, job: Job):
        """An iterator over the stored result's bytes (``Gone`` if it was just removed)."""
        try:
            return await asyncio.to_thread(self.objects.open_stream, job.result_key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise Gone(f"job {job.id}'s result is no longer stored") from None
            raise


def _bulk_request(body: bytes) -> BulkRequest | None:
    """The body as a job over an input file, or None when it is a V2 request."""
    stripped = body.lstrip()
    if not stripped.startswith(b"{") or b'"input_id"' not in body:
        return None
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None  # the V2 decoder reports it
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    if not isinstance(document, dict) or "input_id" not in document:
        return None
    try:
        return msgspec.convert(document, BulkRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"job over an input file: {exc}") from None
