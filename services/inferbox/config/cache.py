"""Settings of the response cache (``INFERBOX_CACHE_*``)."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class CacheSettings(SettingsGroup):
    """Response cache.

    Answers of the models that ask for it (``response_cache``), kept in a Redis of their own
    and looked up before a call is queued."""

    cache_url: str = Field(default="", pattern=r"^(redis://.*)?$")
    """The cache Redis (``redis://...``), apart from the queue's: its own memory budget and an
    evicting policy (``allkeys-lru``), so a full cache never costs a queued call. Empty: no
    response cache (a model's ``response_cache`` then does nothing)."""

    cache_timeout_ms: float = Field(default=50.0, gt=0)
    """Longest a call waits for the cache's answer; past it the call goes to the queue. A cache
    that is down or slow makes a call slower by at most this, never fails it."""

    cache_retry_s: float = Field(default=1.0, gt=0)
    """After the cache connection fails (or several lookups in a row time out), calls skip the
    cache for this long before it is tried again."""

    cache_max_entry_bytes: int = Field(default=1 << 20, ge=0)
    """Largest answer (output tensor bytes) stored; larger answers are computed every time."""

    cache_ttl_s: int = Field(default=3600, ge=0)
    """Expiry of a stored answer (0: none, eviction alone makes room)."""

    cache_per_key: bool = False
    """Keep every model's entries per API key (as a model's ``response_cache_per_key`` does
    for that model): a key never gets an answer another key's call stored, and cannot tell
    from the answer time whether another key sent the same input (docs/security.md)."""
