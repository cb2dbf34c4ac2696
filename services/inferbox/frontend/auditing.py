"""Who is calling (``actor``), what it may see (``visible``, ``operates``) and ``audited``: an
audit row for a control-plane change.

The gate in front of Litestar (``inferbox.api.infer``) puts the caller's key record into the
ASGI scope under ``inferbox.api_key``; with auth turned off the actor is ``anonymous``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Request
from psycopg import AsyncConnection

from inferbox.errors import InferboxError
from inferbox.security.audit import ANONYMOUS, AuditRow
from inferbox.security.auth import Need, permits, remote_address

SCOPE_KEY = "inferbox.api_key"


def visible(request: Request, name: str) -> bool:
    """Whether the calling key may see model ``name`` in listings (its ``allowed_models``)."""
    key = request.scope.get(SCOPE_KEY)
    if key is None or key.allowed_models is None or "admin" in key.scopes:
        return True
    return name in key.allowed_models


def operates(request: Request, name: str) -> bool:
    """Whether the calling key may change model ``name`` (``admin``, or ``models:write`` with
    the model allowed): such a key also sees who made its versions and which workers serve
    them (key ids, worker ids), which a key that only reads or calls the model does not."""
    key = request.scope.get(SCOPE_KEY)
    return key is None or permits(key, Need("models:write", name)) is None


def actor(request: Request) -> str:
    """The calling key's id, or ``anonymous``."""
    key = request.scope.get(SCOPE_KEY)
    return key.id if key is not None else ANONYMOUS


class AuditedChange:
    """The audit row of one change, as the block of ``audited`` shapes it: ``details`` to add
    to, and ``write`` for a change that commits its row in its own transaction."""

    def __init__(self, request: Request, action: str, target: str, details: dict) -> None:
        self.request = request
        self.action = action
        self.target = target
        self.details = details
        self.written: AuditRow | None = None

    def row(self, outcome: str) -> AuditRow:
        """The row with ``outcome`` (``ok`` or ``failed``) and the details gathered so far."""
        request = self.request
        headers = {k.lower(): v for k, v in request.scope["headers"]}
        raw_id = headers.get(b"x-request-id")
        return AuditRow(
            actor=actor(request),
            action=self.action,
            target=self.target,
            outcome=outcome,
            remote_addr=remote_address(request.scope, headers, request.app.state.trusted_proxies),
            request_id=raw_id.decode("latin-1") if raw_id else None,
            details=dict(self.details),
        )

    async def write(self, conn: AsyncConnection, **details: object) -> None:
        """Write the ``ok`` row (with ``details`` added) on ``conn``, inside the transaction of
        the change it records: the change and its row commit together or not at all."""
        self.details.update(details)
        row = self.row("ok")
        await self.request.app.state.audit.insert(conn, row)
        self.written = row


@asynccontextmanager
async def audited(
    request: Request, action: str, target: str, **details: object
) -> AsyncIterator[AuditedChange]:
    """Write one audit row when the block ends: outcome ``ok``, or ``failed`` with the error.

    The block may add to the yielded change's ``details`` (e.g. the version an upload became),
    or, as its last step, write the ``ok`` row in the change's own transaction
    (``AuditedChange.write``).
    """
    change = AuditedChange(request, action, target, dict(details))
    audit = request.app.state.audit
    outcome = "failed"
    try:
        yield change
        outcome = "ok"
    except InferboxError as exc:
        change.details.update(error=exc.message, status=exc.status)
        raise
    except Exception:
        change.details.update(error="internal error", status=500)
        raise
    finally:
        if outcome == "ok" and change.written is not None:
            audit.emit(change.written)  # committed with the change
        else:
            # A row of its own (one the block wrote in its transaction rolled back with it).
            await audit.append(change.row(outcome))
