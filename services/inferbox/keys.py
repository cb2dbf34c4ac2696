"""Names of every Redis key and channel inferbox uses, in one place.

All of them start with ``Settings.key_prefix`` so appliances and test runs can share a Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

LANES = ("hi", "lo")
"""Interactive lane streams per model version: ``hi`` for default/urgent calls, ``lo`` for the rest."""

CONSUMER_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names under one prefix."""

    prefix: str

    @property
    def catalog(self) -> str:
        """Hash: model name -> JSON ``CatalogEntry`` (every version's spec)."""
        return f"{self.prefix}:catalog"

    @property
    def workers(self) -> str:
        """Hash: worker id -> JSON ``WorkerInfo`` (liveness with an expiry time)."""
        return f"{self.prefix}:workers"

    @property
    def events(self) -> str:
        """Pub/sub channel announcing catalog changes to workers."""
        return f"{self.prefix}:events"

    @property
    def capacity(self) -> str:
        """Hash: ``<model>/<version>`` -> JSON capacity card measured by a worker."""
        return f"{self.prefix}:capacity"

    def status(self, model: str) -> str:
        """Hash: ``<version>/<worker id>`` -> JSON ``VersionStatus``."""
        return f"{self.prefix}:status:{model}"

    def statistics(self, model: str) -> str:
        """Hash: ``<version>/<worker id>`` -> JSON inference statistics of that worker
        (``worker.statistics.Snapshot``), refreshed by its heartbeat."""
        return f"{self.prefix}:stats:{model}"

    def stream(self, model: str, version: int, lane: str) -> str:
        """Stream of queued synchronous calls for one model version and lane."""
        return f"{self.prefix}:q:{model}:{version}:{lane}"

    def reply_channel(self, api_process: str) -> str:
        """Pub/sub channel on which one API process receives its replies."""
        return f"{self.prefix}:reply:{api_process}"

    def api_key(self, key_id: str) -> str:
        """String: JSON ``KeyRecord`` of one API key (a cache of PostgreSQL, with an expiry)."""
        return f"{self.prefix}:apikey:{key_id}"

    @property
    def api_key_events(self) -> str:
        """Pub/sub channel: ids of API keys changed (revoked), dropped from every local cache."""
        return f"{self.prefix}:apikey-events"

    def rate_bucket(self, key_id: str) -> str:
        """Hash: one key's token bucket (``tokens``, ``ts`` in ms)."""
        return f"{self.prefix}:bucket:{key_id}"

    def concurrency(self, key_id: str) -> str:
        """Sorted set: one key's requests in flight (member: slot id, score: expiry in ms)."""
        return f"{self.prefix}:inflight:{key_id}"

    def auth_failures(self, remote_addr: str) -> str:
        """Counter of auth failures from one address in the current audit window."""
        return f"{self.prefix}:authfail:{remote_addr}"

    def cache_entry(self, model: str, version: int, digest: str) -> str:
        """String in the cache Redis: one stored answer (``inferbox.cache.entry``), under the
        digest of everything that decides it (``inferbox.cache.key``)."""
        return f"{self.prefix}:rc:{model}:{version}:{digest}"

    def cache_generation(self, model: str, version: int) -> str:
        """String in the cache Redis: the random token a version's stored answers must carry to
        be served; the registry replaces it when the version is unloaded, loaded, changed or
        deleted, so older answers are never served again."""
        return f"{self.prefix}:rc-gen:{model}:{version}"
