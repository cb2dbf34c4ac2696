"""Admin routes of the control plane: API keys (``/v1/keys``) and the audit log (``/v1/audit``).

Both need the ``admin`` scope (checked by the gate in front of Litestar). A new key's secret is
in the answer to ``POST /v1/keys`` and nowhere else, ever.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import msgspec
import structlog
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from redis.exceptions import RedisError

from inferbox.api.schemas import AuditPage, CreatedKey, KeyList, KeyView, NewKey
from inferbox.config import Settings
from inferbox.errors import BadRequest
from inferbox.frontend.auditing import actor, audited
from inferbox.security.access import needs
from inferbox.security.audit import AuditLog
from inferbox.security.keystore import KeyCache, KeyRecord, KeyStore, now_utc

log = structlog.get_logger(__name__)

_ADMIN = needs("admin")


_MAX_EXPIRY_S = 100 * 365 * 86400
"""Longest lifetime a key may be given (a larger one overflows the date arithmetic)."""


def _limits(data: NewKey, settings: Settings) -> tuple[float | None, int | None]:
    """The new key's rate and concurrency limits: its creator's, else the defaults (a key is
    limited unless asked otherwise, so that no key can take the whole appliance by default)."""
    rate = data.rate_per_s
    if rate is msgspec.UNSET:
        rate = settings.key_default_rate_per_s or None
    concurrency = data.max_concurrency
    if concurrency is msgspec.UNSET:
        concurrency = settings.key_default_max_concurrency or None
    return rate, concurrency


async def _forget_unknown(key_cache: KeyCache, record: KeyRecord) -> None:
    """Drop any cached memory of the new key's id being unknown. The key exists from here on,
    so its creator must get it: a failure here only delays its first use by the few seconds
    an unknown id is remembered."""
    try:
        await key_cache.created(record)
    except RedisError as exc:
        log.warning("new key not announced to the key cache", api_key_id=record.id, error=str(exc))


class KeysController(Controller):
    """Create, list and revoke API keys."""

    path = "/v1/keys"
    tags = ["admin"]

    @post("", status_code=201, opt=_ADMIN)
    async def create_key(
        self,
        request: Request,
        keystore: NamedDependency[KeyStore],
        key_cache: NamedDependency[KeyCache | None],
        settings: NamedDependency[Settings],
        data: JSONBody[NewKey],
    ) -> CreatedKey:
        """Create a key; the answer's ``key`` is the only time its secret is shown."""
        if data.expires_in_s is not None and not 0 < data.expires_in_s <= _MAX_EXPIRY_S:
            raise BadRequest(f"expires_in_s must be > 0 and at most {_MAX_EXPIRY_S} (100 years)")
        expires_at = now_utc() + timedelta(seconds=data.expires_in_s) if data.expires_in_s else None
        rate, concurrency = _limits(data, settings)
        async with audited(request, "key.create", data.name, scopes=data.scopes) as change:
            # The key and its audit row commit together: no key exists unaudited, and none is
            # left behind when its row cannot be written (the client then gets the error).
            record, full = await keystore.create(
                name=data.name,
                scopes=data.scopes,
                allowed_models=data.allowed_models,
                priority=data.priority,
                rate_per_s=rate,
                burst=data.burst,
                max_concurrency=concurrency,
                expires_at=expires_at,
                created_by=actor(request),
                audit=lambda conn, record: change.write(conn, key_id=record.id),
            )
        if key_cache is not None:
            await _forget_unknown(key_cache, record)
        return CreatedKey.with_secret(record, full)

    @get("", opt=_ADMIN)
    async def list_keys(self, keystore: NamedDependency[KeyStore]) -> KeyList:
        """Every key (without secrets), revoked and expired ones included."""
        return KeyList(keys=[KeyView.of(k) for k in await keystore.list()])

    @delete("/{key_id:str}", status_code=200, opt=_ADMIN)
    async def revoke_key(
        self,
        request: Request,
        keystore: NamedDependency[KeyStore],
        key_cache: NamedDependency[KeyCache | None],
        key_id: FromPath[str],
    ) -> KeyView:
        """Revoke a key; every API process refuses it within a second."""
        async with audited(request, "key.revoke", key_id) as change:
            record = await keystore.revoke(key_id, audit=lambda conn, _: change.write(conn))
        if key_cache is not None:
            await key_cache.revoked(record)
        return KeyView.of(record)


_SINCE = QueryParameter(description="ISO 8601 time")
_BEFORE = QueryParameter(description="cursor: the `next` of the previous page")
_LIMIT = QueryParameter(ge=1, le=1000)


class AuditController(Controller):
    """The audit log, newest first."""

    path = "/v1/audit"
    tags = ["admin"]

    @get("", opt=_ADMIN)
    async def list_audit(
        self,
        audit: NamedDependency[AuditLog],
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        since: Annotated[datetime | None, _SINCE] = None,
        before: Annotated[int | None, _BEFORE] = None,
        limit: Annotated[int, _LIMIT] = 100,
    ) -> AuditPage:
        """Rows filtered by actor, action and time; page with ``before=<next>``."""
        entries = await audit.query(
            actor=actor, action=action, since=since, before=before, limit=limit
        )
        following = entries[-1].id if len(entries) == limit else None
        return AuditPage(entries=entries, next=following)
