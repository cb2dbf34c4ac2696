"""Whether a request's key may do what its route needs (``Gate``, ``permits``).

What each route needs is declared on its handler (``inferbox.security.access``) and decided
after routing (``inferbox.api.gate``; the inference fast path reads the ``infer`` route's
declaration). ``admin`` implies every scope. A missing, malformed, unknown, wrong, expired or
revoked key is 401 (with ``WWW-Authenticate: Bearer``); a valid key without the scope or the
model is 403.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import psycopg
import structlog
from redis.exceptions import RedisError

from inferbox.errors import Forbidden, InferboxError, Unauthorized, Unavailable
from inferbox.security.audit import AuditLog
from inferbox.security.keys import bearer_token, key_id_of, secret_matches, split_key
from inferbox.security.keystore import KeyCache, KeyRecord
from inferbox.security.limits import Limiter

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs: a scope (None: any valid key) and, for model routes, the model."""

    scope: str | None
    model: str | None = None


def permits(key: KeyRecord, need: Need) -> str | None:
    """Why ``key`` may not do what ``need`` asks (a message for a 403), or None if it may."""
    if need.scope is not None and need.scope not in key.scopes and "admin" not in key.scopes:
        return f"key {key.id} lacks the {need.scope!r} scope"
    if (
        need.model is not None
        and key.allowed_models is not None
        and need.model not in key.allowed_models
    ):
        return f"key {key.id} may not use model {need.model!r}"
    return None


class KeyRefused(Unauthorized):
    """401 for a presented key, remembering its public id (for logs and the audit log)."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class ScopeRefused(Forbidden):
    """403: a valid key without the scope or model."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
LOOPBACK: Networks = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


def trusted_networks(text: str) -> Networks:
    """``Settings.trusted_proxies`` parsed: addresses and networks, comma-separated."""
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in text.split(",")
            if part.strip()
        )
    except ValueError as exc:
        raise ValueError(f"INFERBOX_TRUSTED_PROXIES: {exc}") from None


def remote_address(
    scope: dict, headers: dict[bytes, bytes], trusted: Networks = LOOPBACK
) -> str | None:
    """The caller's IP address: the proxy's ``X-Real-IP`` when the peer is one of the
    ``trusted`` proxies, else the peer itself; None when neither is an IP address."""
    client = scope.get("client")
    peer = _ip(client[0]) if client else None
    real = headers.get(b"x-real-ip")
    if real and peer is not None and any(peer in network for network in trusted):
        forwarded = _ip(real.decode("latin-1"))
        if forwarded is not None:
            return str(forwarded)
    return None if peer is None else str(peer)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class Gate:
    """Everything a request passes before it is served: its key, scope, model and limits."""

    def __init__(
        self, cache: KeyCache, limiter: Limiter, audit: AuditLog, trusted: Networks = LOOPBACK
    ) -> None:
        self.cache = cache
        self.limiter = limiter
        self.audit = audit
        self.trusted = trusted
        # Authorization header -> (key id, the stored hash its secret matched). A client sends
        # the same header on every call: hashing it again each time is wasted work. The key's
        # record (revocation, expiry, scopes) is still looked up on every call.
        self._verified: dict[bytes, tuple[str, str]] = {}

    async def authenticate(self, authorization: bytes | None, need: Need) -> KeyRecord:
        """The key presented for ``need``, or ``KeyRefused`` (401) / ``ScopeRefused`` (403)."""
        known = self._verified.get(authorization) if authorization else None
        if known is not None:
            key = await self._lookup(known[0])
            if key is not None and key.secret_hash == known[1]:
                return self._check(key, need)
        token = bearer_token(authorization)
        if token is None:
            raise KeyRefused("an API key is required: Authorization: Bearer <key>")
        parts = split_key(token)
        if parts is None:
            raise KeyRefused("the API key is malformed", key_id_of(token))
        key_id, secret = parts
        key = await self._lookup(key_id)
        if key is None or not secret_matches(secret, key.secret_hash):
            raise KeyRefused("the API key is not valid", key_id)
        if len(self._verified) >= 4096:
            self._verified.clear()
        self._verified[authorization] = (key_id, key.secret_hash)
        return self._check(key, need)

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        try:
            return await self.cache.get(key_id)
        except (RedisError, psycopg.Error) as exc:
            log.warning("API key lookup failed", error=str(exc))
            raise Unavailable("API keys cannot be checked right now") from None

    def _check(self, key: KeyRecord, need: Need) -> KeyRecord:
        """Revocation, expiry, scope and model of a key whose secret matched."""
        key_id = key.id
        if key.revoked_at is not None:
            raise KeyRefused(f"API key {key_id} was revoked", key_id)
        if key.expired():
            raise KeyRefused(f"API key {key_id} has expired", key_id)
        problem = permits(key, need)
        if problem is not None:
            raise ScopeRefused(problem, key_id)
        self.cache.used.add(key_id)
        return key

    async def admit(
        self, authorization: bytes | None, need: Need, known: KeyRecord | None = None
    ) -> tuple[KeyRecord, str | None]:
        """Authenticate (or, for ``known``, the key this request already authenticated for a
        lesser need, check ``need`` only), then take a rate token and a concurrency slot (429
        without).

        Returns the key and the slot to hand to ``release`` when the request ends.
        """
        if known is not None:
            key = self._check(known, need)
        else:
            key = await self.authenticate(authorization, need)
        try:
            return key, await self.limiter.acquire(key)
        except RedisError as exc:
            log.warning("rate limit check failed", error=str(exc))
            raise Unavailable("limits cannot be checked right now") from None

    async def release(self, key: KeyRecord, slot: str | None) -> None:
        """The request ended: give its concurrency slot back."""
        if slot is not None:
            try:
                await self.limiter.release(key, slot)
            except Exception as exc:  # the slot's expiry frees it anyway
                log.warning("releasing a concurrency slot failed", error=str(exc))

    async def audit_refusal(
        self, exc: InferboxError, scope: dict, headers: dict[bytes, bytes], request_id: str
    ) -> None:
        """Audit an auth failure (401/403; rate limits are not audited), never failing the
        answer."""
        if exc.status not in (401, 403):
            return
        try:
            await self.audit.auth_failure(
                remote_addr=remote_address(scope, headers, self.trusted),
                reason=exc.message,
                key_id=getattr(exc, "key_id", None),
                path=scope["path"],
                request_id=request_id,
                status=exc.status,
            )
        except Exception as exc2:
            log.warning("writing the audit row of an auth failure failed", error=str(exc2))
