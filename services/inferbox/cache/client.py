"""The hot path's side of the response cache: one lookup before a call is queued, one insert
after it is answered.

A lookup is one ``MGET`` of the version's generation token and the entry, on a pipelined
connection of the lanes' own kind (``lanes.resp``): commands of concurrent calls leave in one
write and hiredis parses the replies. It never fails a call and never holds it much longer than
``cache_timeout_ms``: past it the call goes to the queue as if the cache had missed. When the
connection fails (or a few lookups in a row time out) calls skip the cache for
``cache_retry_s`` while it is reconnected in the background, so a cache that is down costs
calls nothing at all. An insert is a ``SET`` sent without waiting for its answer (a done
callback counts it); an entry carries the generation token read by the lookup, so an answer
computed while its version was being unloaded or changed is never served.

This runs for every call of an opted-in model, so it is written for the cost measured on the
tiny model (docs/benchmarks.md): commands are packed as bytes directly, a version's key names
are built once per spec object, the waits share one timer, metrics are counted locally and
flushed once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from inferbox.cache.entry import GENERATION_BYTES, decode_entry, encode_entry
from inferbox.cache.key import admission_token, entry_digest, version_identity, version_tag
from inferbox.keys import Keys
from inferbox.lanes.resp import RespConnection, pack
from inferbox.lanes.wire import TensorMeta
from inferbox.models.spec import ModelSpec
from inferbox.observability.cache_metrics import CacheMetrics

log = structlog.get_logger(__name__)

HIT = "hit"
MISS = "miss"
TIMEOUTS_BEFORE_PAUSE = 3
"""Lookups in a row that time out before calls skip the cache for ``retry_s``."""
OFF_LOOP_BYTES = 256 * 1024
"""Inputs from this size up are hashed in a thread (hashlib lets go of the GIL)."""
GRACE_S = 0.001
"""How long past its timeout a lookup still takes an answer that is already here."""
METRICS_FLUSH_S = 1.0
SEEN_KEYS = 200_000
"""Keys a process remembers for ``response_cache_admit: repeated`` (per generation of two)."""


class CacheTimeout(Exception):
    """The cache did not answer within its timeout."""


class Probe:
    """One call's lookup: its entry key, the generation it read, and the stored outputs on a
    hit. ``state`` is what the ``X-Inferbox-Cache`` header says (``hit`` or ``miss``)."""

    __slots__ = ("generation", "key", "outputs", "spec", "state", "version")

    def __init__(self, spec: ModelSpec, version: _Version, key: bytes) -> None:
        self.spec = spec
        self.version = version
        self.key = key
        self.generation: bytes | None = None
        self.outputs: tuple[list[TensorMeta], list[memoryview]] | None = None
        self.state = MISS


class _Version:
    """What the hot path needs of one spec object, made once: its key names and its tag."""

    __slots__ = ("entry_prefix", "generation_key", "get_generation", "identity", "spec", "tag")

    def __init__(self, spec: ModelSpec, keys: Keys) -> None:
        self.spec = spec
        self.entry_prefix = keys.cache_entry(spec.name, spec.version, "").encode()
        self.generation_key = keys.cache_generation(spec.name, spec.version).encode()
        self.get_generation = b"*3\r\n$4\r\nMGET\r\n$%d\r\n%b\r\n" % (
            len(self.generation_key),
            self.generation_key,
        )
        self.tag = version_tag(spec)
        self.identity = hash(version_identity(spec))


class ResponseCache:
    """Lookups and inserts of one process (``source``: ``infer`` or ``job``) on the cache Redis."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        source: str,
        timeout_s: float = 0.05,
        retry_s: float = 1.0,
        max_entry_bytes: int = 1 << 20,
        ttl_s: int = 3600,
        per_key: bool = False,
    ) -> None:
        self.keys = keys
        self.source = source
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.max_entry_bytes = max_entry_bytes
        self.expiry = b"$2\r\nPX\r\n$%d\r\n%d\r\n" % (len(str(ttl_s * 1000)), ttl_s * 1000)
        self.ttl_s = ttl_s
        self.per_key = per_key
        self.metrics = CacheMetrics(source)
        self.conn = RespConnection(url)
        self._versions: dict[int, _Version] = {}
        self._seen = _Seen(SEEN_KEYS)
        self._paused_until = 0.0
        self._timeouts = 0
        self._connecting: asyncio.Task | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task | None = None
        self._closed = False
        # Lookups waiting for an answer, oldest first (they all have the same timeout), and
        # the one timer that fails those past it.
        self._waiting: deque[tuple[float, asyncio.Future]] = deque()
        self._sweep: asyncio.TimerHandle | None = None

    @classmethod
    def from_settings(cls, settings, keys: Keys, source: str) -> ResponseCache | None:
        """The cache ``Settings`` describe; None without ``INFERBOX_CACHE_URL``."""
        if not settings.cache_url:
            return None
        return cls(
            settings.cache_url,
            keys,
            source=source,
            timeout_s=settings.cache_timeout_ms / 1000,
            retry_s=settings.cache_retry_s,
            max_entry_bytes=settings.cache_max_entry_bytes,
            ttl_s=settings.cache_ttl_s,
            per_key=settings.cache_per_key,
        )

    # --- the connection -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (bounded: a cache that is away only means calls skip it for now) and start
        flushing the metrics."""
        self._flusher = asyncio.create_task(self._flush_metrics(), name="cache-metrics")
        await self._connect()

    async def close(self) -> None:
        """Close the connection (later lookups miss) and flush the metrics."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for task in (self._connecting, self._flusher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.conn.close()
        self.metrics.flush()

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            self.metrics.flush()

    def _usable(self) -> bool:
        """Whether a lookup may be sent now; reconnects in the background when it may not."""
        lost = self.conn.lost
        if lost is not None and not lost.done():
            return True
        if self._closed or self._connecting is not None or time.monotonic() < self._paused_until:
            return False
        self._connecting = asyncio.ensure_future(self._connect())
        return False

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self.conn.connect(), timeout=max(self.timeout_s, 1.0))
        except (TimeoutError, RedisError, OSError) as exc:
            # A connection cut off during its handshake must not be used half-authenticated.
            self.conn.close()
            self._pause(f"cannot connect: {exc}")
        else:
            self._timeouts = 0
            self.conn.lost.add_done_callback(self._reconnect)
            if self._paused_until:
                log.info("response cache reachable again", source=self.source)
            self._paused_until = 0.0
        finally:
            self._connecting = None

    def _pause(self, why: str) -> None:
        """Skip the cache for ``retry_s`` and drop the connection (pending waits fail)."""
        if time.monotonic() >= self._paused_until:
            log.warning(
                "response cache unavailable; calls skip it for a while",
                source=self.source,
                error=why[:300],
                retry_s=self.retry_s,
            )
        self._paused_until = time.monotonic() + self.retry_s
        self.conn.close()
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(self.retry_s + 0.01, self._reconnect)

    def _reconnect(self, _lost=None) -> None:
        """Connect again in the background once a connection is lost or a pause ends, without
        waiting for a call to do it: a process that saw no call during an outage must not make
        its first call after it miss."""
        if not self._closed:
            self._usable()

    # --- lookups and inserts -------------------------------------------------------------------

    def _version(self, spec: ModelSpec) -> _Version:
        version = self._versions.get(id(spec))
        if version is None or version.spec is not spec:
            if len(self._versions) >= 4096:
                self._versions.clear()
            version = self._versions[id(spec)] = _Version(spec, self.keys)
        return version

    def namespace(self, spec: ModelSpec, key_id: str | None) -> str:
        """The entry namespace of a call: its API key's id when entries are kept per key."""
        if key_id and (self.per_key or spec.config.response_cache_per_key):
            return key_id
        return ""

    async def lookup(
        self,
        spec: ModelSpec,
        metas: list[TensorMeta],
        raws: list[bytes],
        outputs: list[str] | None,
        key_id: str | None = None,
    ) -> Probe:
        """Look a call up; ``probe.outputs`` holds the stored answer on a hit. Never raises for
        the cache's own trouble (that is a miss, counted as ``error``)."""
        namespace = self.namespace(spec, key_id)
        version = self._version(spec)
        small = sum(len(raw) for raw in raws) < OFF_LOOP_BYTES
        digest = None
        if not small:  # hashed off the loop (hashlib lets go of the GIL)
            digest = await asyncio.to_thread(entry_digest, spec, metas, raws, outputs, namespace)
        if spec.config.response_cache_admit == "repeated":
            # A new input costs a cheap hash and a set lookup: no SHA-256, no round trip.
            if small:
                token = admission_token(version.identity, namespace, raws)
            else:
                token = int(digest[:16], 16)
            if not self._seen.check(token):
                self.metrics.lookup(spec.name, spec.version, "new")
                return Probe(spec, version, b"")
        if digest is None:
            digest = entry_digest(spec, metas, raws, outputs, namespace)
        key = version.entry_prefix + digest.encode()
        probe = Probe(spec, version, key)
        if not self._usable():
            self.metrics.lookup(spec.name, spec.version, "error")
            return probe
        started = time.perf_counter()
        try:
            future = self.conn.send_packed(
                [version.get_generation, b"$%d\r\n%b\r\n" % (len(key), key)]
            )
            self._wait(future)
            generation, value = await future
        except (CacheTimeout, RedisError) as exc:
            self._lookup_failed(spec, exc)
            return probe
        seconds = time.perf_counter() - started
        self._timeouts = 0
        self._take_answer(probe, generation, value, seconds)
        return probe

    def _lookup_failed(self, spec: ModelSpec, exc: CacheTimeout | RedisError) -> None:
        """Count a lookup the cache did not answer; skip the cache for a while after a broken
        connection or a few timeouts in a row."""
        if isinstance(exc, CacheTimeout):
            self._timeouts += 1
            if self._timeouts >= TIMEOUTS_BEFORE_PAUSE:
                self._pause(f"{self._timeouts} lookups in a row took over {self.timeout_s}s")
        elif isinstance(exc, RedisConnectionError):
            self._pause(str(exc))
        # Any other RedisError: answering but not serving (LOADING after a restart, a refused
        # AUTH...); the call just misses.
        self.metrics.lookup(spec.name, spec.version, "error")

    def _take_answer(
        self, probe: Probe, generation: bytes | None, value: bytes | None, seconds: float
    ) -> None:
        """Put the cache's answer on ``probe`` (the generation to store under, the outputs on a
        hit) and count the lookup a hit or a miss."""
        spec = probe.spec
        if generation is None:
            # No token yet (a version never cached, or the cache restarted or evicted it):
            # propose one and store this answer under it. Had another process (or the
            # registry) set one first, the entry carries a token that is not current and is
            # never served: fresh random tokens can only ever make an entry unservable.
            probe.generation = secrets.token_hex(GENERATION_BYTES // 2).encode()
            self._send_quietly("SET", probe.version.generation_key, probe.generation, "NX")
        elif len(generation) == GENERATION_BYTES:
            probe.generation = generation
            if value is not None:
                stored = decode_entry(value, generation)
                if stored is not None:
                    probe.outputs = stored
                    probe.state = HIT
                    self.metrics.lookup(spec.name, spec.version, HIT, seconds)
                    self.metrics.served(spec.name, spec.version, sum(len(r) for r in stored[1]))
                    return
        self.metrics.lookup(spec.name, spec.version, MISS, seconds)

    def store(self, probe: Probe, metas: list[TensorMeta], raws: list, spec_tag: str) -> None:
        """Offer a successful answer to the cache (not waited for); ``spec_tag`` is the reply's
        (``ReplyHeader.spec_tag``).

        Not stored: an answer larger than ``max_entry_bytes``; one computed by a worker that ran
        another spec than the key names (a config change in progress: ``stale``); one whose
        lookup did not reach the cache.
        """
        spec = probe.spec
        if probe.generation is None:
            return
        if spec_tag != probe.version.tag:
            self.metrics.insert(spec.name, spec.version, "stale")
            return
        if sum(len(raw) for raw in raws) > self.max_entry_bytes:
            self.metrics.insert(spec.name, spec.version, "too_large")
            return
        value = encode_entry(probe.generation, metas, raws)
        key = probe.key
        head = b"*%d\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n" % (
            5 if self.ttl_s else 3,
            len(key),
            key,
            len(value),
        )
        parts = [head, value, b"\r\n" + self.expiry if self.ttl_s else b"\r\n"]
        try:
            self.conn.send_packed(parts, _Stored(self.metrics, spec, len(value)))
        except RedisError:
            self.metrics.insert(spec.name, spec.version, "error")

    # --- waiting -------------------------------------------------------------------------------

    def _wait(self, future: asyncio.Future) -> None:
        """Fail ``future`` with ``CacheTimeout`` unless answered within the timeout.

        One timer for all waits (a timer per lookup costs more than the lookup's own Python):
        they share a timeout, so they expire in the order they were sent.
        """
        loop = asyncio.get_running_loop()
        self._waiting.append((loop.time() + self.timeout_s, future))
        if self._sweep is None:
            self._sweep = loop.call_at(self._waiting[0][0], self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        late = []
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _, future = waiting.popleft()
            if not future.done():
                late.append(future)
        if late:
            # A process that was not scheduled for a while runs its due timers before it
            # reads its sockets (uvloop runs timers first in each turn): an answer that
            # arrived in time would be thrown away. Fail the waits only after one more turn
            # has read what came in.
            loop.call_later(GRACE_S, _fail_all, late)
        self._sweep = loop.call_at(waiting[0][0], self._expire) if waiting else None

    def _send_quietly(self, *command) -> None:
        """Send a command whose answer nobody waits for (its error, if any, is dropped)."""
        with contextlib.suppress(RedisError):
            self.conn.send_packed(pack(*command), _Ignored())


class _Seen:
    """The inputs a process has seen lately, for ``response_cache_admit: repeated``: two sets
    of up to ``size`` 64-bit tokens, the older dropped when the newer fills (a few MB)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.new: set[int] = set()
        self.old: set[int] = set()

    def check(self, token: int) -> bool:
        """Whether ``token`` (``admission_token``) was seen before; remembers it either way."""
        if token in self.new:
            return True
        seen = token in self.old
        if len(self.new) >= self.size:
            self.old, self.new = self.new, set()
        self.new.add(token)
        return seen


class _Ignored:
    """Takes a reply nobody waits for (``RespConnection.send_packed``'s ``waiter``)."""

    __slots__ = ()

    def done(self) -> bool:
        return False

    def set_result(self, reply) -> None:
        pass

    def set_exception(self, error) -> None:
        pass


class _Stored(_Ignored):
    """Counts an insert when Redis answers it: no future and no loop callback per insert."""

    __slots__ = ("metrics", "size", "spec", "started")

    def __init__(self, metrics: CacheMetrics, spec: ModelSpec, size: int) -> None:
        self.metrics, self.spec, self.size = metrics, spec, size
        self.started = time.perf_counter()

    def set_result(self, reply) -> None:
        seconds = time.perf_counter() - self.started
        self.metrics.insert(self.spec.name, self.spec.version, "stored", self.size, seconds)

    def set_exception(self, error) -> None:
        # A full cache Redis that cannot evict enough (OOM), or the connection lost.
        self.metrics.insert(self.spec.name, self.spec.version, "error")


def _fail_all(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(CacheTimeout())
