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

    def stream(self, model: str, version: int, lane: str) -> str:
        """Stream of queued synchronous calls for one model version and lane."""
        return f"{self.prefix}:q:{model}:{version}:{lane}"

    def reply_channel(self, api_process: str) -> str:
        """Pub/sub channel on which one API process receives its replies."""
        return f"{self.prefix}:reply:{api_process}"
