"""The worker process: a ``CatalogFollower`` over a ``LocalHost`` (sessions in this process)."""

from __future__ import annotations

import redis

from inferbox.config import Settings
from inferbox.worker.follower import CatalogFollower, VersionBook
from inferbox.worker.local import LocalHost
from inferbox.worker.model_cache import Fetcher


def local_worker(
    settings: Settings, client: redis.Redis | None = None, objects: Fetcher | None = None
) -> CatalogFollower:
    """The worker ``inferbox worker`` runs: it follows the catalog, keeps the versions it can
    hold resident in this process and reports them (``objects``: where model files come from)."""
    book = VersionBook(settings, client or redis.Redis.from_url(settings.redis_url))
    return CatalogFollower(settings, book, LocalHost(settings, book, objects))
