"""Prometheus metrics of the API processes (aggregated across gunicorn workers on scrape).

The inference route records one counter increment and one histogram observation per request,
through children resolved once per (model, version, status) and cached; rejections and the
other routes are off the hot path. In-flight requests are counted in a plain integer and copied
into a gauge once a second (``InflightSampler``) instead of touching the gauge per request.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Counter, Gauge, Histogram

from inferbox.errors import InferboxError

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)

REQUESTS = Counter(
    "inferbox_requests_total",
    "HTTP requests the API answered, by route, model, version and status (499: client left).",
    ["route", "model", "version", "status"],
)
REQUEST_SECONDS = Histogram(
    "inferbox_request_duration_seconds",
    "Time from a request reaching the API to its answer, by route, model and version.",
    ["route", "model", "version"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "inferbox_requests_in_flight",
    "Inference requests inside the API processes (sampled every second).",
    multiprocess_mode="livesum",
)
JOBS_SUBMITTED = Counter(
    "inferbox_jobs_submitted_total",
    "Async jobs accepted (202) by the API, by model.",
    ["model"],
)
REJECTION_REASONS = (
    "auth",
    "rate_limit",
    "queue_full",
    "deadline",
    "not_ready",
    "unavailable",
    "too_large",
    "bad_request",
    "not_found",
)
REJECTIONS = Counter(
    "inferbox_rejections_total",
    "Inference requests refused or not answered in time, by reason.",
    ["reason"],
)
for _reason in REJECTION_REASONS:
    # Present from the start (at zero), so rates and alerts see every reason.
    REJECTIONS.labels(_reason)

INFER_ROUTE = "infer"
_BY_STATUS = {
    401: "auth",
    403: "auth",
    429: "rate_limit",
    504: "deadline",
    413: "too_large",
    400: "bad_request",
    405: "bad_request",
    404: "not_found",
}


def rejection_reason(exc: InferboxError) -> str | None:
    """The rejection reason of an error answer; None for failures that are not rejections."""
    if exc.status == 503:
        if "queue is full" in exc.message:
            return "queue_full"
        return "not_ready" if "not ready" in exc.message else "unavailable"
    return _BY_STATUS.get(exc.status)


class InferMetrics:
    """The inference route's counter and histogram children, resolved once per label set."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple] = {}

    def record(self, model: str, version: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its latency."""
        key = (model, version, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                REQUESTS.labels(INFER_ROUTE, model, version, str(status)),
                REQUEST_SECONDS.labels(INFER_ROUTE, model, version),
            )
        children[0].inc()
        children[1].observe(seconds)


def record_route(route: str, status: int, seconds: float) -> None:
    """Count a request to a route other than inference (health, metadata, docs)."""
    REQUESTS.labels(route, "", "", str(status)).inc()
    REQUEST_SECONDS.labels(route, "", "").observe(seconds)


class InflightSampler:
    """Copies a live request count into ``IN_FLIGHT`` every ``interval`` seconds."""

    def __init__(self, read, interval: float = 1.0) -> None:
        self.read = read
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            IN_FLIGHT.set(self.read())
            await asyncio.sleep(self.interval)

    async def start(self, _app=None) -> None:
        """Start sampling (a Litestar ``on_startup`` hook)."""
        self._task = asyncio.create_task(self._run(), name="inflight-sampler")

    async def stop(self, _app=None) -> None:
        """Stop sampling (a Litestar ``on_shutdown`` hook)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
