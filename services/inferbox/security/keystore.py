"""API keys in PostgreSQL (``KeyStore``) and the cached lookup of the request path (``KeyCache``).

The request path looks a key up by its id: first in the API process's own dictionary (entries
live ``ttl_s``, one second), then in Redis (``Keys.api_key``, shared by every API process), and
only then in PostgreSQL. A busy key therefore costs no round trip at all most of the time.

Redis holds copies only, each with an HMAC-SHA256 over the key id and the record made with a
secret that lives in PostgreSQL (``instance_secrets``, made at first start), never in Redis: a
copy whose MAC does not match (planted, altered, or moved to another id) is deleted and the
record read from PostgreSQL, so write access to Redis cannot mint or widen a key.

Revocation is effective within a second everywhere: ``KeyCache.revoked`` overwrites the Redis
copy with the revoked record and publishes the id, and every API process drops its local copy
on that message; a process that missed it drops it when its one-second entry expires. Cache
fills use ``SET NX``, so a fill that read PostgreSQL just before a revocation can never
overwrite the revoked copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import redis.asyncio as aioredis
import structlog
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from inferbox.errors import BadRequest, NotFound
from inferbox.keys import Keys
from inferbox.registry.store import MODEL_NAME
from inferbox.security.audit import SYSTEM, AuditLog, AuditRow
from inferbox.security.keys import SCOPES, hash_secret, new_key, secret_matches, split_key

log = structlog.get_logger(__name__)

_COLUMNS = (
    "id, secret_hash, name, scopes, allowed_models, priority, rate_per_s, burst,"
    " max_concurrency, expires_at, revoked_at, created_at, created_by, last_used_at"
)
_MISSING = b"-"
_INT_MAX = 2**31 - 1
_STALE_RETRY_S = 5.0
"""While PostgreSQL is unreachable, how long a stale key record is used before looking again."""
_REFRESH_TIMEOUT_S = 1.0
"""Longest a request waits to refresh a key record it already has (else it uses that one)."""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One API key as stored (the secret only as its hash)."""

    id: str
    secret_hash: str
    name: str
    scopes: list[str]
    allowed_models: list[str] | None = None
    priority: int = 0
    rate_per_s: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime
    created_by: str | None = None
    last_used_at: datetime | None = None

    def expired(self, now: float | None = None) -> bool:
        """The key's expiry has passed."""
        if self.expires_at is None:
            return False
        return self.expires_at.timestamp() <= (time.time() if now is None else now)

    def usable(self) -> bool:
        """Neither revoked nor expired."""
        return self.revoked_at is None and not self.expired()

    def public(self) -> dict:
        """What the API shows of a key (never the hash)."""
        view = msgspec.to_builtins(self)
        del view["secret_hash"]
        return view


def _check(
    name: str,
    scopes: list[str],
    allowed_models: list[str] | None,
    priority: int,
    rate_per_s: float | None,
    burst: int | None,
    max_concurrency: int | None,
) -> None:
    if not name or len(name) > 200:
        raise BadRequest("a key needs a name of 1 to 200 characters")
    if not name.isprintable():
        raise BadRequest("a key's name must be printable text")
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise BadRequest(f"scopes must be a non-empty subset of {list(SCOPES)}; unknown: {unknown}")
    for model in allowed_models or ():
        if not MODEL_NAME.fullmatch(model):
            raise BadRequest(f"{model!r} is not a valid model name")
    # Upper bounds are the columns' (integer, real): beyond them PostgreSQL would refuse the
    # row and the client would see a 500 instead of the reason.
    if not 0 <= priority <= _INT_MAX:
        raise BadRequest(f"priority must be between 0 and {_INT_MAX}")
    if rate_per_s is not None and not 0 < rate_per_s <= 1e9:
        raise BadRequest("rate_per_s must be > 0 and at most 1e9")
    if burst is not None and (not 1 <= burst <= _INT_MAX or rate_per_s is None):
        raise BadRequest(f"burst must be between 1 and {_INT_MAX} and needs rate_per_s")
    if max_concurrency is not None and not 1 <= max_concurrency <= _INT_MAX:
        raise BadRequest(f"max_concurrency must be between 1 and {_INT_MAX}")


class KeyStore:
    """The ``api_keys`` table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        name: str,
        scopes: list[str],
        allowed_models: list[str] | None = None,
        priority: int = 0,
        rate_per_s: float | None = None,
        burst: int | None = None,
        max_concurrency: int | None = None,
        expires_at: datetime | None = None,
        created_by: str | None = None,
        audit: Callable[[AsyncConnection, KeyRecord], Awaitable[None]] | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the full key (to show once, never again).

        ``audit`` writes the key's audit row on the same connection, in the same transaction:
        a key never exists without its row, and a failed row leaves no key behind."""
        scopes = sorted(set(scopes), key=SCOPES.index) if set(scopes) <= set(SCOPES) else scopes
        _check(name, scopes, allowed_models, priority, rate_per_s, burst, max_concurrency)
        if rate_per_s is not None and burst is None:
            burst = max(1, round(rate_per_s))
        key_id, secret, full = new_key()
        async with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                f"INSERT INTO api_keys (id, secret_hash, name, scopes, allowed_models, priority,"
                f" rate_per_s, burst, max_concurrency, expires_at, created_by)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (
                    key_id,
                    hash_secret(secret),
                    name,
                    scopes,
                    allowed_models,
                    priority,
                    rate_per_s,
                    burst,
                    max_concurrency,
                    expires_at,
                    created_by,
                ),
            )
            record = msgspec.convert(await cur.fetchone(), KeyRecord)
            if audit is not None:
                await audit(conn, record)
        return record, full

    async def cache_secret(self) -> bytes:
        """The appliance's key-cache MAC secret, made (32 random bytes) at first use."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO instance_secrets (name, value) VALUES ('key_cache_mac', %s)"
                " ON CONFLICT (name) DO NOTHING",
                (secrets.token_bytes(32),),
            )
            cursor = await conn.execute(
                "SELECT value FROM instance_secrets WHERE name = 'key_cache_mac'"
            )
            return bytes((await cursor.fetchone())[0])

    async def get(self, key_id: str) -> KeyRecord | None:
        """One key by id, or None."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
            row = await cur.fetchone()
        return None if row is None else msgspec.convert(row, KeyRecord)

    async def list(self) -> list[KeyRecord]:
        """Every key, revoked and expired ones included, oldest first."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
            rows = await cur.fetchall()
        return [msgspec.convert(row, KeyRecord) for row in rows]

    async def revoke(
        self,
        key_id: str,
        audit: Callable[[AsyncConnection, KeyRecord], Awaitable[None]] | None = None,
    ) -> KeyRecord:
        """Mark a key revoked (the first revocation time is kept); 404 if unknown. ``audit``
        writes its audit row in the same transaction, as for ``create``."""
        async with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE id = %s RETURNING {_COLUMNS}",
                (key_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            record = msgspec.convert(row, KeyRecord)
            if audit is not None:
                await audit(conn, record)
        return record

    async def touch(self, key_ids: Iterable[str]) -> None:
        """Record that these keys were used just now (``last_used_at``)."""
        ids = list(key_ids)
        if ids:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE api_keys SET last_used_at = now() WHERE id = ANY(%s)", (ids,)
                )


async def bootstrap_admin(store: KeyStore, path: Path) -> str:
    """First start: make sure ``path`` (mode 0600) holds a usable admin key.

    Nothing happens when it already does; otherwise a new admin key is created and written
    there. Returns a line saying which (with the key's id, never its secret).
    """
    existing = await asyncio.to_thread(_read_if_exists, path)
    if existing is not None:
        parts = split_key(existing.strip())
        record = await store.get(parts[0]) if parts else None
        if (
            record is not None
            and record.usable()
            and "admin" in record.scopes
            and secret_matches(parts[1], record.secret_hash)
        ):
            return f"admin key {record.id} already in {path}"
    written: list[AuditRow] = []

    async def audit(conn: AsyncConnection, record: KeyRecord) -> None:
        # Audited like a key made over the API, in the key's own transaction.
        row = AuditRow(
            actor=SYSTEM,
            action="key.create",
            target=record.name,
            details={"key_id": record.id, "scopes": record.scopes, "bootstrap": True},
        )
        await AuditLog.insert(conn, row)
        written.append(row)

    record, full = await store.create(
        name="bootstrap admin", scopes=["admin"], created_by=SYSTEM, audit=audit
    )
    AuditLog.emit(written[0])
    write_secret_file(path, full)
    return f"created admin key {record.id} in {path}"


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only (atomically, by rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


class KeyCache:
    """Key lookups for the request path: local (``ttl_s``), then Redis, then PostgreSQL."""

    def __init__(
        self,
        store: KeyStore,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        ttl_s: float = 1.0,
        redis_ttl_s: float = 30.0,
        touch_every_s: float = 10.0,
    ) -> None:
        self.store = store
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.redis_ttl_ms = int(redis_ttl_s * 1000)
        self.touch_every_s = touch_every_s
        self.used: set[str] = set()
        """Ids of keys used since the last ``last_used_at`` update."""
        self._local: dict[str, tuple[float, KeyRecord | None]] = {}
        self._tasks: list[asyncio.Task] = []
        self._mac_key: bytes | None = None

    async def _secret(self) -> bytes:
        if self._mac_key is None:
            self._mac_key = await self.store.cache_secret()
        return self._mac_key

    def _seal(self, key_id: str, payload: bytes) -> bytes:
        """``payload`` as stored in Redis: its MAC (64 hex digits), then the payload."""
        mac = hmac.new(self._mac_key, key_id.encode() + b"\0" + payload, hashlib.sha256)
        return mac.hexdigest().encode() + payload

    def _open(self, key_id: str, value: bytes) -> bytes | None:
        """The payload of a Redis value, or None when its MAC does not match."""
        payload = value[64:]
        return payload if hmac.compare_digest(self._seal(key_id, payload), value) else None

    async def get(self, key_id: str) -> KeyRecord | None:
        """The key's record (None for an unknown id), at most ``ttl_s`` old."""
        now = time.monotonic()
        hit = self._local.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            if hit is None:
                record = await self._fetch(key_id)
            else:
                # One request refreshes the record; the others keep the one in hand until it
                # is done (at most _REFRESH_TIMEOUT_S), instead of all waiting on PostgreSQL.
                self._local[key_id] = (now + _REFRESH_TIMEOUT_S, hit[1])
                async with asyncio.timeout(_REFRESH_TIMEOUT_S):
                    record = await self._fetch(key_id)
        except (psycopg.Error, TimeoutError):
            if hit is None:
                raise
            # PostgreSQL is down (or slow) and Redis has let its copy expire: keep serving the
            # last record seen. It stays safe: revoking a key needs PostgreSQL, and a
            # revocation made before the outage already replaced this copy (through Redis and
            # pub/sub). Look again in a few seconds, not on every request.
            self._local[key_id] = (now + _STALE_RETRY_S, hit[1])
            return hit[1]
        if len(self._local) > 10_000:
            self._local.clear()
        self._local[key_id] = (now + self.ttl_s, record)
        return record

    async def _fetch(self, key_id: str) -> KeyRecord | None:
        name = self.keys.api_key(key_id)
        try:
            raw = await self.redis.get(name)
        except RedisError as exc:
            # Redis only caches the record: PostgreSQL, the source, answers while Redis
            # cannot (down or restarting).
            log.warning("API key cache unreachable; reading PostgreSQL", error=str(exc))
            return await self.store.get(key_id)
        await self._secret()
        if raw is not None:
            payload = self._open(key_id, raw)
            if payload is not None:
                return None if payload == _MISSING else msgspec.json.decode(payload, type=KeyRecord)
            # Not written by an API process of this appliance: not believed, not kept.
            log.warning("API key cache entry with a wrong MAC deleted", api_key_id=key_id[:40])
            with contextlib.suppress(RedisError):
                await self.redis.delete(name)
        record = await self.store.get(key_id)
        value = self._seal(key_id, _MISSING if record is None else msgspec.json.encode(record))
        # Unknown ids are remembered briefly: a flood of made-up keys reaches Redis, not SQL.
        ttl = self.redis_ttl_ms if record is not None else 5000
        with contextlib.suppress(RedisError):
            await self.redis.set(name, value, px=ttl, nx=True)
        return record

    async def created(self, record: KeyRecord) -> None:
        """A key was just created: forget any memory of its id being unknown."""
        await self.redis.delete(self.keys.api_key(record.id))
        self._local.pop(record.id, None)

    async def revoked(self, record: KeyRecord) -> None:
        """A key was just revoked: replace every cached copy within the second."""
        await self._secret()
        await self.redis.set(
            self.keys.api_key(record.id),
            self._seal(record.id, msgspec.json.encode(record)),
            px=self.redis_ttl_ms,
        )
        self._local.pop(record.id, None)
        await self.redis.publish(self.keys.api_key_events, record.id)

    async def start(self) -> None:
        """Start following invalidations and recording ``last_used_at``."""
        await self._secret()
        self._tasks = [
            asyncio.create_task(self._follow(), name="key-invalidations"),
            asyncio.create_task(self._touch(), name="key-last-used"),
        ]

    async def close(self) -> None:
        """Stop the background tasks (flushing ``last_used_at`` once more)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._flush()

    async def _follow(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.api_key_events)
                    # Anything revoked while we were not listening: start afresh.
                    self._local.clear()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._local.pop(message["data"].decode(), None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("key invalidation listener failed; retrying", error=str(exc))
                await asyncio.sleep(1.0)

    async def _touch(self) -> None:
        while True:
            await asyncio.sleep(self.touch_every_s)
            try:
                await self._flush()
            except Exception as exc:
                log.warning("recording key use failed", error=str(exc))

    async def _flush(self) -> None:
        used, self.used = self.used, set()
        await self.store.touch(used)


def now_utc() -> datetime:
    """The current time, timezone-aware (for expiries)."""
    return datetime.now(UTC)
