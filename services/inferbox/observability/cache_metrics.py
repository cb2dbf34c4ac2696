"""Prometheus metrics of the response cache.

Counted where the cache is used, by ``source``: ``infer`` (HTTP and gRPC calls, in the API
processes, merged across gunicorn workers) and ``job`` (async jobs' chunks, in the workers).
Lookups by result (``hit``, ``miss``, ``error``: the cache did not answer in time or is
unreachable, so the call went to the queue; ``new``: not looked up, an input a process sees
for the first time under ``response_cache_admit: repeated``), inserts by result (``stored``, ``too_large``,
``stale``: computed by a worker still running another config of the version, ``error``), bytes stored and served, and the latency of lookups and inserts. The cache Redis's
own figures (evictions, memory, entries) are read at scrape time by ``CacheServerCollector``
in the worker.
"""

from __future__ import annotations

import bisect

import redis
import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = structlog.get_logger(__name__)

LOOKUP_RESULTS = ("hit", "miss", "error", "new")
INSERT_RESULTS = ("stored", "too_large", "stale", "error")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

LOOKUPS = Counter(
    "inferbox_cache_lookups_total",
    "Response cache lookups by result (hit, miss, error: not answered in time or unreachable, "
    "new: not looked up, an input first seen under response_cache_admit=repeated) and source "
    "(infer: HTTP and gRPC calls; job: async job chunks).",
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
    """One source's counts, kept in plain numbers on the hot path and added to the Prometheus
    metrics by ``flush`` (``ResponseCache`` calls it every second and when it closes).

    A lookup and an insert would otherwise cost seven updates of prometheus-client's
    multiprocess values (a locked write into a memory-mapped file each): about a third of the
    cache's own cost per call, measured on the tiny model.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._counts: dict[tuple[Counter, tuple[str, str, str, str] | tuple[str, str, str]], float]
        self._counts = {}
        self._lookup_seconds = _Latencies(LOOKUP_SECONDS.labels(source))
        self._insert_seconds = _Latencies(INSERT_SECONDS.labels(source))

    def _add(self, metric: Counter, labels: tuple, amount: float = 1) -> None:
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + amount

    def lookup(self, model: str, version: int, result: str, seconds: float | None = None) -> None:
        """Count one lookup (and its latency when it was answered)."""
        self._add(LOOKUPS, (model, version, result))
        if seconds is not None:
            self._lookup_seconds.observe(seconds)

    def insert(
        self, model: str, version: int, result: str, size: int = 0, seconds: float | None = None
    ) -> None:
        """Count one insert (the bytes it stored, its latency when it was answered)."""
        self._add(INSERTS, (model, version, result))
        if size:
            self._add(STORED_BYTES, (model, version), size)
        if seconds is not None:
            self._insert_seconds.observe(seconds)

    def served(self, model: str, version: int, size: int) -> None:
        """Count the output bytes of one hit."""
        self._add(SERVED_BYTES, (model, version), size)

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics."""
        counts, self._counts = self._counts, {}
        for (metric, labels), amount in counts.items():
            model, version, *rest = labels
            metric.labels(model, str(version), self.source, *rest).inc(amount)
        self._lookup_seconds.flush()
        self._insert_seconds.flush()


class _Latencies:
    """Observations of one histogram child, bucketed locally and added in one go."""

    def __init__(self, child) -> None:
        self.child = child
        self.bounds = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def flush(self) -> None:
        if not any(self.counts):
            return
        # prometheus-client's Histogram keeps one value per bucket and the sum; observe()
        # adds to them one observation at a time, this adds a second's worth at once.
        for bucket, count in zip(self.child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)
        self.child._sum.inc(self.total)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0


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
