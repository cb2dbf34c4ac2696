"""Prometheus metrics of the response cache.

Counted where the cache is used, by ``source``: ``infer`` (HTTP and gRPC calls, in the API
processes, merged across gunicorn workers) and ``job`` (async jobs' chunks, in the workers).
Lookups by result (``hit``, ``miss``, ``error``: the cache did not answer in time or is
unreachable, so the call went to the queue), inserts by result (``stored``, ``too_large``,
``stale``: computed by a worker still running another config of the version, ``error``), bytes stored and served, and the latency of lookups and inserts. The cache Redis's
own figures (evictions, memory, entries) are read at scrape time by ``CacheServerCollector``
in the worker.
"""

from __future__ import annotations

import redis
import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = structlog.get_logger(__name__)

LOOKUP_RESULTS = ("hit", "miss", "error")
INSERT_RESULTS = ("stored", "too_large", "stale", "error")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

LOOKUPS = Counter(
    "inferbox_cache_lookups_total",
    "Response cache lookups by result (hit, miss, error: not answered in time or unreachable) "
    "and source (infer: HTTP and gRPC calls; job: async job chunks).",
    ["model", "version", "source", "result"],
)
INSERTS = Counter(
    "inferbox_cache_inserts_total",
    "Answers offered to the response cache by result (stored, too_large, stale: computed "
    "under another config of the version, error: refused or unreachable) and source.",
    ["model", "version", "source", "result"],
)
STORED_BYTES = Counter(
    "inferbox_cache_stored_bytes_total",
    "Bytes of answers written to the response cache (entry size, headers included).",
    ["model", "version", "source"],
)
SERVED_BYTES = Counter(
    "inferbox_cache_served_bytes_total",
    "Output tensor bytes answered from the response cache.",
    ["model", "version", "source"],
)
LOOKUP_SECONDS = Histogram(
    "inferbox_cache_lookup_duration_seconds",
    "Time from sending a response cache lookup to its answer (timeouts excluded).",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
INSERT_SECONDS = Histogram(
    "inferbox_cache_insert_duration_seconds",
    "Time from sending an answer to the response cache to its acknowledgement.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)


class CacheMetrics:
    """The children of one source's metrics, resolved once per (model, version) and cached:
    lookups and inserts happen on the hot path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lookup_seconds = LOOKUP_SECONDS.labels(source)
        self.insert_seconds = INSERT_SECONDS.labels(source)
        self._lookups: dict[tuple[str, int, str], Counter] = {}
        self._inserts: dict[tuple[str, int, str], Counter] = {}
        self._bytes: dict[tuple[str, int], tuple[Counter, Counter]] = {}

    def lookup(self, model: str, version: int, result: str) -> None:
        """Count one lookup."""
        key = (model, version, result)
        child = self._lookups.get(key)
        if child is None:
            child = self._lookups[key] = LOOKUPS.labels(model, str(version), self.source, result)
        child.inc()

    def insert(self, model: str, version: int, result: str, size: int = 0) -> None:
        """Count one insert (and the bytes it stored)."""
        key = (model, version, result)
        child = self._inserts.get(key)
        if child is None:
            child = self._inserts[key] = INSERTS.labels(model, str(version), self.source, result)
        child.inc()
        if size:
            self._byte_counters(model, version)[0].inc(size)

    def served(self, model: str, version: int, size: int) -> None:
        """Count the output bytes of one hit."""
        self._byte_counters(model, version)[1].inc(size)

    def _byte_counters(self, model: str, version: int) -> tuple[Counter, Counter]:
        key = (model, version)
        children = self._bytes.get(key)
        if children is None:
            labels = (model, str(version), self.source)
            children = self._bytes[key] = (
                STORED_BYTES.labels(*labels),
                SERVED_BYTES.labels(*labels),
            )
        return children


class CacheServerCollector:
    """The cache Redis's own figures, read with ``INFO`` at scrape time: evictions, memory used
    and its limit, entries, and whether it answered (``inferbox_cache_up``)."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def collect(self):
        up = GaugeMetricFamily("inferbox_cache_up", "Whether the cache Redis answered INFO.")
        try:
            stats = self.client.info("stats")
            memory = self.client.info("memory")
            keyspace = self.client.info("keyspace")
        except redis.RedisError as exc:
            log.warning("reading the cache Redis's figures failed", error=str(exc)[:300])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        evictions = CounterMetricFamily(
            "inferbox_cache_evictions",
            "Entries the cache Redis evicted to stay within its maxmemory (since it started).",
        )
        evictions.add_metric([], stats.get("evicted_keys", 0))
        yield evictions
        expired = CounterMetricFamily(
            "inferbox_cache_expirations",
            "Entries the cache Redis dropped at their expiry (INFERBOX_CACHE_TTL_S).",
        )
        expired.add_metric([], stats.get("expired_keys", 0))
        yield expired
        used = GaugeMetricFamily(
            "inferbox_cache_memory_bytes", "Memory the cache Redis uses (used_memory)."
        )
        used.add_metric([], memory.get("used_memory", 0))
        yield used
        limit = GaugeMetricFamily(
            "inferbox_cache_memory_limit_bytes",
            "The cache Redis's maxmemory: beyond it, it evicts (0: no limit).",
        )
        limit.add_metric([], memory.get("maxmemory", 0))
        yield limit
        entries = GaugeMetricFamily(
            "inferbox_cache_keys", "Keys in the cache Redis (stored answers and generation tokens)."
        )
        entries.add_metric([], sum(db.get("keys", 0) for db in keyspace.values()))
        yield entries
