"""The audit log: append-only rows in PostgreSQL (``audit_log``), each also an ``audit`` log event.

Rows record who (a key id, ``anonymous`` or ``system``), what (``action``, ``target``), when,
from where (``remote_addr``, ``request_id``) and how it ended (``outcome``: ``ok``, ``failed``,
``denied``). Secrets never go in: callers pass key ids, not keys.

Auth failures could come in floods, so they are written at most once per remote address per
``failure_window_s`` (a Redis counter shared by the API processes); the row says how long the
window is, and the metric ``inferbox_rejections_total{reason="auth"}`` counts every one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from inferbox.keys import Keys

log = structlog.get_logger("inferbox.audit")

ANONYMOUS = "anonymous"
SYSTEM = "system"
_COLUMNS = ("actor", "action", "target", "outcome", "remote_addr", "request_id")
"""The text columns of a row, in the order of the ``INSERT``."""


def _dumps(value: object) -> str:
    return json.dumps(value, default=str)


def _storable(value: Any) -> Any:
    """``value`` with every string made storable in PostgreSQL: NUL becomes U+FFFD and an
    unpaired surrogate ``?`` (lists and dictionaries are walked)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the audit log."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None = None
    outcome: str
    remote_addr: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One row to append: who, what, how it ended, from where."""

    actor: str
    action: str
    target: str | None = None
    outcome: str = "ok"
    remote_addr: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def storable(self) -> dict[str, Any]:
        """The row's columns as PostgreSQL takes them."""
        # Targets and details echo what a client sent, and PostgreSQL refuses NUL characters
        # and unpaired surrogates in text and jsonb: a request naming one must still be
        # audited (and answered with its own error, not a 500).
        return {
            "actor": self.actor,
            "action": self.action,
            "target": _storable(self.target),
            "outcome": self.outcome,
            "remote_addr": self.remote_addr,
            "request_id": _storable(self.request_id),
            "details": _storable(self.details or {}),
        }


class AuditLog:
    """Writes and reads the audit log."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        redis: aioredis.Redis | None = None,
        keys: Keys | None = None,
        failure_window_s: int = 10,
    ) -> None:
        self._pool = pool
        self.redis = redis
        self.keys = keys
        self.failure_window_s = failure_window_s

    async def record(
        self,
        *,
        actor: str,
        action: str,
        target: str | None = None,
        outcome: str = "ok",
        remote_addr: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one row and emit the matching ``audit`` log event."""
        await self.append(
            AuditRow(
                actor=actor,
                action=action,
                target=target,
                outcome=outcome,
                remote_addr=remote_addr,
                request_id=request_id,
                details=details or {},
            )
        )

    async def append(self, row: AuditRow) -> None:
        """Append ``row`` in a transaction of its own and emit its ``audit`` log event."""
        async with self._pool.connection() as conn:
            await self.insert(conn, row)
        self.emit(row)

    @staticmethod
    async def insert(conn: AsyncConnection, row: AuditRow) -> None:
        """Append ``row`` on ``conn``, inside the caller's transaction: a change written in the
        same transaction commits with its row or not at all. ``emit`` once it has committed."""
        columns = row.storable()
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, outcome, remote_addr,"
            " request_id, details) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                *(columns[name] for name in _COLUMNS),
                Jsonb(columns["details"], dumps=_dumps),
            ),
        )

    @staticmethod
    def emit(row: AuditRow) -> None:
        """The ``audit`` log event of a written row."""
        columns = row.storable()
        details = columns.pop("details")
        key_id = row.actor if row.actor not in (ANONYMOUS, SYSTEM) else None
        # ``details`` goes to the log as one JSON string (a text field in Elasticsearch).
        log.info("audit", api_key_id=key_id, details=json.dumps(details, default=str), **columns)

    async def auth_failure(
        self,
        *,
        remote_addr: str | None,
        reason: str,
        key_id: str | None,
        path: str,
        request_id: str | None,
        status: int,
    ) -> bool:
        """Record a refused key or request, once per address and window; True if written."""
        if self.redis is not None and self.keys is not None:
            name = self.keys.auth_failures(remote_addr or "unknown")
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, self.failure_window_s, nx=True)
                count, _ = await pipe.execute()
            if count > 1:
                return False
        await self.record(
            actor=key_id or ANONYMOUS,
            action="auth.failure",
            target=path[:200],
            outcome="denied",
            remote_addr=remote_addr,
            request_id=request_id,
            details={"reason": reason, "status": status, "window_s": self.failure_window_s},
        )
        return True

    async def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first; ``before`` (an id) pages back from the previous page's last row."""
        clauses, params = [], []
        for clause, value in (
            ("actor = %s", actor),
            ("action = %s", action),
            ("at >= %s", since),
            ("id < %s", before),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, at, actor, action, target, outcome, remote_addr, request_id, details"
                f" FROM audit_log {where} ORDER BY id DESC LIMIT %s",
                (*params, limit),
            )
            rows = await cur.fetchall()
        return [msgspec.convert(row, AuditEntry) for row in rows]


OUT_OF_SCOPE_SQL = """
SELECT 'audit' AS source, a.id::text AS id, a.at, a.actor, a.action, a.target, a.outcome,
       a.remote_addr, k.scopes, k.allowed_models
  FROM audit_log a JOIN api_keys k ON k.id = a.actor
 WHERE NOT ('admin' = ANY (k.scopes))
   AND (a.action LIKE 'key.%%'
        OR ((a.action LIKE 'model.%%' OR a.action LIKE 'alias.%%')
            AND (NOT ('models:write' = ANY (k.scopes))
                 OR (k.allowed_models IS NOT NULL
                     AND NOT (split_part(split_part(a.target, '/', 1), ':', 1)
                              = ANY (k.allowed_models))))))
UNION ALL
SELECT 'jobs', j.id::text, j.created_at, j.api_key_id, 'job.submit', j.model, j.state,
       NULL, k.scopes, k.allowed_models
  FROM jobs j JOIN api_keys k ON k.id = j.api_key_id
 WHERE NOT ('admin' = ANY (k.scopes))
   AND (NOT ('jobs' = ANY (k.scopes))
        OR (k.allowed_models IS NOT NULL AND NOT (j.model = ANY (k.allowed_models))))
 ORDER BY at
"""
"""Control-plane changes and jobs made by keys that did not have the scope (or the model) they
needed: key creation or revocation by a non-admin key; uploads, config, deletes, alias,
traffic, load and unload changes by a key without ``models:write`` or that model; jobs by a
key without ``jobs`` or that model. A key's scopes and models never change after creation, so
its current row says what it had at the time. The gate refuses such calls before any handler
runs, so every row found here is a call that got past it (like the path-normalization hole of
da4a7bd and before: ``GET /v1//keys``, ``POST /v2//repository/models/m/unload``)."""


async def out_of_scope(pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    """The rows of ``OUT_OF_SCOPE_SQL``, oldest first."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(OUT_OF_SCOPE_SQL)
        return await cur.fetchall()
