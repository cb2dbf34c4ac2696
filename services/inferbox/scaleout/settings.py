"""Settings of the Ray worker variant, read from ``INFERBOX_RAY_*`` environment variables.

They sit beside ``inferbox.config.Settings`` (which the Ray worker reads too: Redis, the key
prefix, the per-actor memory budget, batching timings) rather than inside it, so processes that
never use Ray carry none of them.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RaySettings(BaseSettings):
    """How the Ray worker reaches the cluster and sizes its pool of actors."""

    model_config = SettingsConfigDict(env_prefix="INFERBOX_RAY_", extra="ignore")

    address: str = "auto"
    """Ray cluster to join: ``auto`` (the node this process runs on joined one with
    ``ray start``), ``host:port`` of the head's GCS, or ``local`` (start a private cluster)."""

    node_ip_address: str | None = None
    """Address of this machine as the Ray head advertises it (empty: Ray's own guess); the Ray
    worker shares the head's node, so it must use the same."""

    namespace: str = "inferbox"
    """Ray namespace of the actors (their names also carry the Redis key prefix)."""

    actor_gpus: float = Field(default=1.0, ge=0)
    """GPUs each actor reserves: 1 gives one actor per GPU; 0 makes CPU actors (``cpu`` profile)."""

    actor_cpus: float = Field(default=1.0, ge=0)
    """CPUs each actor reserves (and the ONNX Runtime threads of a CPU actor's sessions)."""

    min_actors: int = Field(default=1, ge=1)
    """Actors kept even when the queues are idle."""

    max_actors: int = Field(default=1, ge=1)
    """Most actors the autoscaler starts (at most the cluster's GPUs for GPU actors)."""

    scale_up_wait_ms: float = Field(default=50.0, gt=0)
    """Add an actor when the 90th percentile queue wait over the last interval exceeds this."""

    scale_down_wait_ms: float = Field(default=5.0, ge=0)
    """Remove an actor when the 90th percentile queue wait stays below this ..."""

    scale_down_after_s: float = Field(default=60.0, gt=0)
    """... for this long."""

    scale_interval_s: float = Field(default=2.0, gt=0)
    """Window of queue waits the autoscaler looks at, and the least time between two changes."""

    retry_wait_s: float = Field(default=30.0, gt=0)
    """How long a batch whose actor died waits for another actor to hold its model before it is
    left in the queue for a later claim."""

    max_actor_deaths_per_batch: int = Field(default=3, ge=1)
    """A batch that took this many actors down with it is split and retried call by call."""

    @model_validator(mode="after")
    def _bounds(self) -> RaySettings:
        if self.max_actors < self.min_actors:
            raise ValueError("INFERBOX_RAY_MAX_ACTORS is below INFERBOX_RAY_MIN_ACTORS")
        return self
