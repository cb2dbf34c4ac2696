"""The job ledger in PostgreSQL (``JobStore``): every job's state, lease, progress and result.

Every transition is one conditional ``UPDATE ... WHERE state = ...``: a job is claimed only
from ``queued``, finished only by the worker holding its lease while it is ``running``. Two
workers that both ran a job after a crash therefore record one result between them; the loser
sees no row and discards its work. Redis never decides anything here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED, EXPIRED)
OPEN = (QUEUED, RUNNING)


class NewJob(msgspec.Struct, kw_only=True):
    """What a submission writes; the database fills in the rest."""

    id: uuid.UUID
    model: str
    version: int
    kind: str
    """``request`` (a V2 request body) or ``bulk`` (a job input file)."""
    input_key: str
    input_id: str | None = None
    header_length: int | None = None
    options: dict[str, Any] = {}
    priority: int = 0
    rows_total: int | None = None
    max_attempts: int
    idempotency_key: str | None = None
    api_key_id: str | None = None
    request_id: str | None = None
    webhook_url: str | None = None
    retention_s: int


class Job(NewJob, kw_only=True):
    """One row of ``jobs``: the submission plus its state, lease, progress and result."""

    state: str
    progress: float = 0.0
    rows_done: int = 0
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    transport_id: str | None = None
    enqueued_at: datetime | None = None
    error: str | None = None
    result_key: str | None = None
    result_content_type: str | None = None
    result_header_length: int | None = None
    result_size: int | None = None
    webhook_state: str | None = None
    webhook_attempts: int = 0
    webhook_next_at: datetime | None = None
    webhook_error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None

    def view(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` shows (no storage keys, no webhook URL secrets)."""
        return {
            "id": str(self.id),
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "kind": self.kind,
            "progress": round(self.progress, 4),
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "input_id": self.input_id,
            "result_size": self.result_size,
            "idempotency_key": self.idempotency_key,
            "api_key_id": self.api_key_id,
            "request_id": self.request_id,
            "webhook": None
            if self.webhook_url is None
            else {
                "state": self.webhook_state,
                "attempts": self.webhook_attempts,
                "error": self.webhook_error,
            },
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
        }


class JobInput(msgspec.Struct, kw_only=True):
    """One row of ``job_inputs``: an uploaded bulk input file."""

    id: str
    api_key_id: str | None
    format: str
    object_key: str
    size: int
    sha256: str
    rows: int
    arrays: dict[str, Any]
    created_at: datetime
    expires_at: datetime

    def view(self) -> dict[str, Any]:
        """What the API shows of an input."""
        return {
            "input_id": self.id,
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "rows": self.rows,
            "arrays": self.arrays,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


def _json(value: Any) -> Jsonb:
    return Jsonb(value, dumps=lambda v: msgspec.json.encode(v).decode())


_INSERT_COLUMNS = tuple(NewJob.__struct_fields__)


class JobStore:
    """Job and job-input rows; each method is one short transaction from the pool."""

    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    # -- submission ---------------------------------------------------------------------------

    async def create(self, job: NewJob) -> tuple[Job, bool]:
        """Insert ``job`` (committed on return); ``(existing, False)`` when its idempotency key
        was used before by the same API key."""
        values = [getattr(job, column) for column in _INSERT_COLUMNS]
        values[_INSERT_COLUMNS.index("options")] = _json(job.options)
        placeholders = ", ".join(["%s"] * len(values))
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Job))
            await cursor.execute(
                f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}, state)"
                f" VALUES ({placeholders}, 'queued')"
                " ON CONFLICT (coalesce(api_key_id, ''), idempotency_key)"
                " WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *",
                values,
            )
            row = await cursor.fetchone()
            if row is not None:
                return row, True
        existing = await self.by_idempotency_key(job.api_key_id, job.idempotency_key or "")
        if existing is None:  # deleted in between: cannot happen (rows are never deleted)
            raise RuntimeError("idempotency conflict without a row")
        return existing, False

    async def by_idempotency_key(self, api_key_id: str | None, key: str) -> Job | None:
        """The job a key submitted with ``Idempotency-Key: key``, if any."""
        return await self._one(
            "SELECT * FROM jobs WHERE coalesce(api_key_id, '') = %s AND idempotency_key = %s",
            (api_key_id or "", key),
        )

    async def mark_enqueued(self, job_id: uuid.UUID, transport_id: str) -> None:
        """Record which RQ job carries ``job_id`` now."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET transport_id = %s, enqueued_at = now()"
                " WHERE id = %s AND state = 'queued'",
                (transport_id, job_id),
            )

    # -- reading ------------------------------------------------------------------------------

    async def _one(self, query: str, params: tuple) -> Job | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Job))
            await cursor.execute(query, params)
            return await cursor.fetchone()

    async def _many(self, query: str, params: tuple) -> list[Job]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Job))
            await cursor.execute(query, params)
            return await cursor.fetchall()

    async def get(self, job_id: uuid.UUID) -> Job | None:
        """One job, or None."""
        return await self._one("SELECT * FROM jobs WHERE id = %s", (job_id,))

    async def list(
        self,
        *,
        api_key_id: str | None = None,
        state: str | None = None,
        model: str | None = None,
        before: tuple[datetime, uuid.UUID] | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, filtered; ``before`` is the (created_at, id) of the last job of
        the previous page (keyset pagination: stable while jobs are added)."""
        clauses, params = [], []
        if api_key_id is not None:
            clauses.append("api_key_id = %s")
            params.append(api_key_id)
        if state is not None:
            clauses.append("state = %s")
            params.append(state)
        if model is not None:
            clauses.append("model = %s")
            params.append(model)
        if before is not None:
            clauses.append("(created_at, id) < (%s, %s)")
            params.extend(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._many(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT %s",
            (*params, limit),
        )

    async def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (model, state), for the metrics."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT model, state, count(*) FROM jobs GROUP BY 1, 2")
            return {(model, state): n for model, state, n in await cursor.fetchall()}

    # -- the worker's transitions -------------------------------------------------------------

    async def claim(self, job_id: uuid.UUID, owner: str, lease_s: float) -> Job | None:
        """``queued`` -> ``running`` for ``owner``, counting an attempt; None if the job is not
        queued (cancelled, already claimed, finished): a duplicate delivery to drop."""
        return await self._one(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = %s,"
            " lease_expires_at = now() + make_interval(secs => %s),"
            " started_at = coalesce(started_at, now()), error = NULL"
            " WHERE id = %s AND state = 'queued' RETURNING *",
            (owner, lease_s, job_id),
        )

    async def renew(
        self, job_id: uuid.UUID, owner: str, lease_s: float, rows_done: int, progress: float
    ) -> bool:
        """Extend the lease and record progress; False when the lease is lost (the job was
        cancelled or given to another worker): stop working on it."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => %s),"
                " rows_done = %s, progress = %s"
                " WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (lease_s, rows_done, min(max(progress, 0.0), 1.0), job_id, owner),
            )
            return cursor.rowcount == 1

    async def succeed(
        self,
        job_id: uuid.UUID,
        owner: str,
        *,
        result_key: str,
        content_type: str,
        header_length: int | None,
        size: int,
        rows_done: int,
    ) -> bool:
        """``running`` -> ``succeeded`` with its result, only for the lease holder."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'succeeded', progress = 1, rows_done = %s,"
                " result_key = %s, result_content_type = %s, result_header_length = %s,"
                " result_size = %s, finished_at = now(), lease_owner = NULL,"
                " lease_expires_at = NULL,"
                " expires_at = now() + make_interval(secs => retention_s),"
                " webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,"
                " webhook_next_at = CASE WHEN webhook_url IS NULL THEN NULL ELSE now() END"
                " WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (rows_done, result_key, content_type, header_length, size, job_id, owner),
            )
            return cursor.rowcount == 1

    async def fail(self, job_id: uuid.UUID, owner: str | None, error: str) -> bool:
        """``running`` (held by ``owner``) or ``queued`` (owner None) -> ``failed``."""
        condition = (
            "state = 'queued'" if owner is None else "state = 'running' AND lease_owner = %s"
        )
        params: tuple = (error[:2000], job_id) if owner is None else (error[:2000], job_id, owner)
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'failed', error = %s, finished_at = now(),"
                " lease_owner = NULL, lease_expires_at = NULL,"
                " expires_at = now() + make_interval(secs => retention_s),"
                " webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,"
                " webhook_next_at = CASE WHEN webhook_url IS NULL THEN NULL ELSE now() END"
                f" WHERE id = %s AND {condition}",
                params,
            )
            return cursor.rowcount == 1

    async def release(
        self, job_id: uuid.UUID, owner: str, reason: str, *, refund: bool = True
    ) -> bool:
        """``running`` -> ``queued``, to run again (the caller enqueues it, or the reconciler
        does). ``refund``: the attempt does not count (a worker shutting down handed it back)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,"
                " attempts = CASE WHEN %s THEN greatest(attempts - 1, 0) ELSE attempts END,"
                " error = %s, transport_id = NULL, enqueued_at = NULL"
                " WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (refund, reason, job_id, owner),
            )
            return cursor.rowcount == 1

    async def cancel(self, job_id: uuid.UUID) -> Job | None:
        """``queued``/``running`` -> ``cancelled``; None when the job was not open."""
        return await self._one(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(), lease_owner = NULL,"
            " lease_expires_at = NULL, expires_at = now() + make_interval(secs => retention_s),"
            " webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,"
            " webhook_next_at = CASE WHEN webhook_url IS NULL THEN NULL ELSE now() END"
            " WHERE id = %s AND state IN ('queued', 'running') RETURNING *",
            (job_id,),
        )

    # -- the reconciler's sweeps --------------------------------------------------------------

    async def requeue_lost(self, max_attempts_reason: str) -> tuple[list[Job], list[Job]]:
        """Running jobs whose lease ran out: back to ``queued`` when they have attempts left
        (returned first, to be enqueued), else ``failed`` (returned second)."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Job))
            await cursor.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,"
                " transport_id = NULL, enqueued_at = NULL,"
                " error = 'the worker running it was lost (attempt ' || attempts || ')'"
                " WHERE id IN (SELECT id FROM jobs WHERE state = 'running'"
                " AND lease_expires_at < now() AND attempts < max_attempts"
                " FOR UPDATE SKIP LOCKED) RETURNING *"
            )
            requeued = await cursor.fetchall()
            await cursor.execute(
                "UPDATE jobs SET state = 'failed', finished_at = now(), lease_owner = NULL,"
                " lease_expires_at = NULL, error = %s || ' (' || attempts || ' attempts)',"
                " expires_at = now() + make_interval(secs => retention_s),"
                " webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,"
                " webhook_next_at = CASE WHEN webhook_url IS NULL THEN NULL ELSE now() END"
                " WHERE id IN (SELECT id FROM jobs WHERE state = 'running'"
                " AND lease_expires_at < now() AND attempts >= max_attempts"
                " FOR UPDATE SKIP LOCKED) RETURNING *",
                (max_attempts_reason,),
            )
            return requeued, await cursor.fetchall()

    async def stale_queued(self, older_than_s: float, limit: int = 500) -> list[Job]:
        """Queued jobs not (re)enqueued for ``older_than_s``: their RQ entry may be lost."""
        return await self._many(
            "SELECT * FROM jobs WHERE state = 'queued'"
            " AND created_at < now() - make_interval(secs => %s) AND (enqueued_at IS NULL"
            " OR enqueued_at < now() - make_interval(secs => %s))"
            " ORDER BY created_at LIMIT %s",
            (older_than_s, older_than_s, limit),
        )

    async def expire(self, limit: int = 500) -> list[Job]:
        """Finished jobs past their retention -> ``expired`` (returned: their data to delete)."""
        return await self._many(
            "UPDATE jobs SET state = 'expired' WHERE id IN (SELECT id FROM jobs"
            " WHERE expires_at < now() AND state IN ('succeeded', 'failed', 'cancelled')"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING *",
            (limit,),
        )

    async def due_webhooks(self, limit: int = 50, hold_s: float = 60.0) -> list[Job]:
        """Claim up to ``limit`` finished jobs whose webhook delivery is due: their next try is
        pushed ``hold_s`` into the future, so no other sender (``FOR UPDATE SKIP LOCKED``, then
        the new time) takes them while this one delivers and records the outcome; a sender
        that dies leaves them due again after ``hold_s``."""
        return await self._many(
            "UPDATE jobs SET webhook_next_at = now() + make_interval(secs => %s)"
            " WHERE id IN (SELECT id FROM jobs WHERE webhook_state = 'pending'"
            " AND webhook_next_at <= now() ORDER BY webhook_next_at LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING *",
            (hold_s, limit),
        )

    async def webhook_outcome(
        self, job_id: uuid.UUID, *, delivered: bool, error: str | None, retry_in_s: float | None
    ) -> None:
        """Record one delivery try: delivered, retry later, or (``retry_in_s`` None) failed."""
        if delivered:
            state, next_at = "delivered", None
        else:
            state = "pending" if retry_in_s is not None else "failed"
            next_at = retry_in_s
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET webhook_state = %s, webhook_attempts = webhook_attempts + 1,"
                " webhook_error = %s, webhook_next_at = CASE WHEN %s::float8 IS NULL THEN NULL"
                " ELSE now() + make_interval(secs => %s::float8) END WHERE id = %s",
                (state, error, next_at, next_at, job_id),
            )

    # -- inputs -------------------------------------------------------------------------------

    async def add_input(self, row: JobInput) -> JobInput:
        """Record an uploaded input file."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(JobInput))
            await cursor.execute(
                "INSERT INTO job_inputs (id, api_key_id, format, object_key, size, sha256, rows,"
                " arrays, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (
                    row.id,
                    row.api_key_id,
                    row.format,
                    row.object_key,
                    row.size,
                    row.sha256,
                    row.rows,
                    _json(row.arrays),
                    row.expires_at,
                ),
            )
            return await cursor.fetchone()

    async def get_input(self, input_id: str) -> JobInput | None:
        """One input file's row, unless it has expired."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(JobInput))
            await cursor.execute(
                "SELECT * FROM job_inputs WHERE id = %s AND expires_at > now()", (input_id,)
            )
            return await cursor.fetchone()

    async def expire_inputs(self, limit: int = 500) -> list[str]:
        """Delete input rows past their retention; return their object keys (to delete),
        keeping those still named by an open job (they expire once it finishes)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM job_inputs WHERE id IN (SELECT i.id FROM job_inputs i"
                " WHERE i.expires_at < now() AND NOT EXISTS (SELECT 1 FROM jobs j"
                " WHERE j.input_id = i.id AND j.state IN ('queued', 'running'))"
                " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING object_key",
                (limit,),
            )
            return [row[0] for row in await cursor.fetchall()]
