"""Per-key limits: a token bucket (rate) and a concurrency limit, checked in one Redis call.

``LIMIT_SCRIPT`` runs atomically in Redis with Redis's own clock, so every API process shares
one bucket and one set of in-flight slots per key:

- the bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a call takes one, and
  without one the answer is 429 with ``Retry-After`` = the time until a token is back;
- the in-flight set holds one member per running call, scored with its expiry; a call past
  ``max_concurrency`` gets 429 (``Retry-After: 1``). The slot is removed when the request
  ends; an API process that dies mid-request leaves slots that expire after ``slot_ttl_s``.

Nothing is consumed by a refused call. Keys without limits cost no Redis call at all. Keys
with limits (every key made over the API, by default) cost an ``EVALSHA`` before and a ``ZREM``
after: sent on the interactive lane's hot-path connection when one is given (hiredis-parsed,
pipelined with the enqueues of concurrent calls), not through redis-py, whose Python per
command cost more than the rest of a small call.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from inferbox.errors import TooManyRequests
from inferbox.keys import Keys
from inferbox.lanes.resp import RespConnection
from inferbox.security.keystore import KeyRecord

LIMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_concurrency = tonumber(ARGV[3])
local ttl_ms = tonumber(ARGV[5])
local tokens = 0
if rate > 0 then
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens < 1 then
    return {0, math.ceil((1 - tokens) * 1000 / rate), 1}
  end
end
if max_concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_concurrency then
    return {0, 1000, 2}
  end
  redis.call('ZADD', KEYS[2], now + ttl_ms, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
if rate > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
end
return {1, 0, 0}
"""
"""KEYS: bucket hash, in-flight sorted set. ARGV: rate per second (0: none), burst, max
concurrency (0: none), slot id, slot ttl in ms. Returns ``{1, 0, 0}`` when admitted, else
``{0, retry after ms, 1 (rate) or 2 (concurrency)}``."""


LIMIT_SHA = hashlib.sha1(LIMIT_SCRIPT.encode()).hexdigest()


class Limiter:
    """Applies a key's limits around a request: ``acquire`` before, ``release`` after.

    ``connection``: a hot-path connection (``InteractiveClient.commands``) for the two commands
    a limited call costs; without one they go through ``redis``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        slot_ttl_s: float = 120.0,
        connection: RespConnection | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.slot_ttl_ms = int(slot_ttl_s * 1000)
        self.script = redis.register_script(LIMIT_SCRIPT)
        self.connection = connection
        self._slots = (f"{os.getpid()}-{secrets.token_hex(3)}-{n}" for n in itertools.count())

    async def _limit(self, keys: list[str], args: list) -> list:
        if self.connection is None:
            return await self.script(keys=keys, args=args)
        try:
            return await self.connection.execute("EVALSHA", LIMIT_SHA, 2, *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # A Redis that restarted (or flushed its scripts) no longer has it: load it again.
            await self.connection.execute("SCRIPT", "LOAD", LIMIT_SCRIPT)
            return await self.connection.execute("EVALSHA", LIMIT_SHA, 2, *keys, *args)

    async def acquire(self, key: KeyRecord) -> str | None:
        """Admit one call of ``key`` or raise ``TooManyRequests``; returns the concurrency slot
        to give back to ``release`` (None when the key has no concurrency limit)."""
        if key.rate_per_s is None and key.max_concurrency is None:
            return None
        slot = next(self._slots)
        admitted, retry_ms, reason = await self._limit(
            [self.keys.rate_bucket(key.id), self.keys.concurrency(key.id)],
            [
                key.rate_per_s or 0,
                key.burst or max(1, round(key.rate_per_s or 1)),
                key.max_concurrency or 0,
                slot,
                self.slot_ttl_ms,
            ],
        )
        if not admitted:
            if reason == 1:
                message = f"rate limit of key {key.id} reached ({key.rate_per_s:g}/s)"
            else:
                message = f"key {key.id} already has {key.max_concurrency} requests in flight"
            raise TooManyRequests(message, retry_after=retry_ms / 1000)
        return slot if key.max_concurrency is not None else None

    async def release(self, key: KeyRecord, slot: str | None) -> None:
        """Give back a concurrency slot (no-op for None)."""
        if slot is None:
            return
        if self.connection is None:
            await self.redis.zrem(self.keys.concurrency(key.id), slot)
        else:
            await self.connection.execute("ZREM", self.keys.concurrency(key.id), slot)
