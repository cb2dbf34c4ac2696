"""The registry's side of the response cache: retiring a version's stored answers.

Every stored answer carries its version's generation token (``Keys.cache_generation``) as it
was when the answer was computed, and a lookup reads the current token in the same round trip
as the entry: an entry whose token differs is never served. The registry writes a new random
token for the versions a change touches (unloaded, loaded, config changed, deleted, pushed), so
from that moment no API process serves their older answers, whatever its own copy of the
catalog says. Tokens are random and never reused, so a token evicted or lost with a cache
restart can never make an old entry valid again.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from inferbox.keys import Keys

log = structlog.get_logger(__name__)


class Generations:
    """Writes new generation tokens into the cache Redis."""

    def __init__(self, url: str, keys: Keys, timeout_s: float = 2.0) -> None:
        self.keys = keys
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def renew(self, model: str, versions: Iterable[int]) -> bool:
        """Give these versions new tokens: their stored answers are never served again.

        Never raises: with the cache Redis away the change still happens (False is returned
        and logged). Its entries cannot be served while it is away either; a version that was
        unloaded or deleted is refused before any lookup, and another file or config under
        the same number has other keys (``cache.key``).
        """
        names = [self.keys.cache_generation(model, version) for version in versions]
        if not names:
            return True
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.set(name, secrets.token_hex(8))
                await pipe.execute()
        except RedisError as exc:
            log.warning(
                "could not retire the response cache's entries",
                model=model,
                error=str(exc)[:300],
            )
            return False
        return True

    async def aclose(self) -> None:
        """Close the client."""
        await self.client.aclose()
