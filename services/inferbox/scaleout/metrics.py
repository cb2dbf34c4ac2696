"""Prometheus metrics of the Ray worker (beside the local worker's, which it exports too)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ACTORS = Gauge("inferbox_ray_actors", "Live Ray actors holding sessions for this Ray worker.")
ACTORS_TARGET = Gauge(
    "inferbox_ray_actors_target", "Actor count the autoscaler aims at (between min and max)."
)
QUEUE_WAIT_P90 = Gauge(
    "inferbox_ray_queue_wait_p90_seconds",
    "90th percentile queue wait over the autoscaler's last interval (what it decided on).",
)
SCALE_DECISIONS = Counter(
    "inferbox_ray_scale_decisions_total",
    "Autoscaler changes of the actor count, by direction (up, down).",
    ["direction"],
)
ACTOR_DEATHS = Counter(
    "inferbox_ray_actor_deaths_total", "Actors found dead (and replaced while below the target)."
)
BATCH_RETRIES = Counter(
    "inferbox_ray_batch_retries_total",
    "Batches sent again to another actor after theirs died.",
    ["model", "version"],
)
REPLICAS = Gauge(
    "inferbox_ray_replicas", "Actors holding each model version.", ["model", "version"]
)

for direction in ("up", "down"):
    SCALE_DECISIONS.labels(direction)
