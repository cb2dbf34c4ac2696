"""Settings of API keys, their limits, the audit log and the trusted proxy."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class SecuritySettings(SettingsGroup):
    """Security.

    Who may call: API keys, their default limits and concurrency slots, the longest call a slot
    must outlive, the audit log of failures, and which proxy may name the client."""

    auth_enabled: bool = True
    """Require an API key (``Authorization: Bearer``) on every route but health and metadata;
    ``false`` is for development only (a warning is logged at start)."""

    key_cache_s: float = Field(default=1.0, gt=0, le=1.0)
    """How long an API process trusts its copy of a key; a revocation takes effect within it."""

    key_slot_ttl_s: float = Field(default=330.0, gt=0)
    """Expiry of a concurrency slot, so slots of a crashed API process free themselves; longer
    than the longest synchronous call (``max_request_timeout_s``), so a running call always
    holds its slot."""

    key_default_max_concurrency: int = Field(default=64, ge=0, le=2**31 - 1)
    """Calls in flight a key made over the API may have when its creator names no limit; 0:
    none. ``"max_concurrency": null`` asks for no limit; the bootstrap admin key has none. This
    bounds the share of the workers one key can hold whatever its calls cost."""

    key_default_rate_per_s: float = Field(default=0.0, ge=0, le=1e9)
    """Rate limit (requests per second, burst as many) a key made over the API gets when its
    creator names none; 0 (the default): none. A count of calls says nothing of their cost: a
    rate low enough to protect the workers from one key's heavy calls would throttle cheap ones
    (a tiny model serves thousands a second), so the default limit is the concurrency one."""

    max_request_timeout_s: float = Field(default=300.0, gt=0)
    """Longest deadline a synchronous call may have, whatever its ``timeout`` parameter or its
    model's config say: nginx's ``INFERBOX_NGINX_PROXY_TIMEOUT`` (300 s) stops waiting then."""

    @property
    def slot_ttl_s(self) -> float:
        """The concurrency slots' expiry in use: ``key_slot_ttl_s``, raised to 30 s past
        ``max_request_timeout_s`` when set shorter (a slot that expired during its call would
        let a key run more than ``max_concurrency`` calls)."""
        return max(self.key_slot_ttl_s, self.max_request_timeout_s + 30)

    audit_failure_window_s: int = Field(default=10, ge=1)
    """Auth failures are written to the audit log once per remote address per this window."""

    trusted_proxies: str = "127.0.0.1,::1"
    """Addresses or networks (comma-separated) of the proxy in front (nginx): only a peer among
    them may name the client with ``X-Real-IP`` (and ``X-Forwarded-For``, read by uvicorn). In
    compose, nginx's address on the backend network."""
