"""Synchronous inference load from threads, every answer recorded, and what the records show.

A ``Load`` runs ``concurrency`` threads, each with one keep-alive HTTPS client, posting the
same request until stopped (optionally paced to a total rate). Every call becomes a ``Call``:
when it started, how long it took, and its status (an HTTP status, or the name of the
exception when no answer came: a connection cut, or the client's own timeout).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.25] * 64}]}
"""One row for the ``mlp`` model."""

PLANNED = {200, 429, 503, 504}
"""Answers a caller may get while a dependency is down: a result, or a planned error."""


@dataclass(frozen=True, slots=True)
class Call:
    """One request: start (monotonic seconds), duration (seconds), status (int or error name)."""

    start: float
    duration: float
    status: int | str


@dataclass
class Load:
    """Closed-loop (or paced) load of ``POST {url}/v2/models/{model}/infer``."""

    url: str
    headers: dict[str, str]
    concurrency: int = 4
    rate: float | None = None
    """Total requests per second across threads; None: as fast as answers come."""
    verify: object = True
    timeout: float = 20.0
    """Client timeout: a call still unanswered after this is recorded as a hang."""
    model: str = "mlp"
    body: dict = field(default_factory=lambda: BODY)
    calls: list[Call] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        """Start the threads; returns self."""
        self._stop.clear()
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Call]:
        """Stop the threads (each finishes its call in hand) and return every call."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)
            assert not thread.is_alive(), "a load thread did not finish"
        self._threads.clear()
        return list(self.calls)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self._threads:
            self.stop()

    def _run(self, index: int) -> None:
        path = f"/v2/models/{self.model}/infer"
        interval = self.concurrency / self.rate if self.rate else 0.0
        next_at = time.monotonic() + interval * index / max(1, self.concurrency)
        with httpx.Client(
            base_url=self.url, headers=self.headers, verify=self.verify, timeout=self.timeout
        ) as client:
            while not self._stop.is_set():
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                        if self._stop.is_set():
                            break
                    next_at = max(next_at + interval, time.monotonic() - interval)
                started = time.monotonic()
                try:
                    status: int | str = client.post(path, json=self.body).status_code
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                call = Call(started, time.monotonic() - started, status)
                with self._lock:
                    self.calls.append(call)
                if isinstance(status, str):
                    self._stop.wait(0.05)  # a refused connection would otherwise spin


def statuses(calls: list[Call]) -> Counter:
    """How many calls ended with each status."""
    return Counter(call.status for call in calls)


def throughput(calls: list[Call], since: float, until: float) -> float:
    """Successful answers per second among calls that ended within [since, until)."""
    ok = sum(1 for c in calls if c.status == 200 and since <= c.start + c.duration < until)
    return ok / max(until - since, 1e-9)


def latency_quantile(calls: list[Call], q: float) -> float:
    """Quantile ``q`` of the successful calls' durations, in seconds."""
    durations = [c.duration for c in calls if c.status == 200]
    return float(np.quantile(durations, q)) if durations else float("nan")


def recovery_seconds(
    calls: list[Call], restored_at: float, baseline: float, fraction: float = 0.5
) -> float | None:
    """Seconds from ``restored_at`` until a one-second window first reaches ``fraction`` of
    ``baseline`` successful answers per second (None if it never does)."""
    ends = sorted(c.start + c.duration for c in calls if c.status == 200)
    step = 0.25
    t = restored_at
    last = ends[-1] if ends else restored_at
    while t + 1.0 <= last + step:
        count = sum(1 for end in ends if t <= end < t + 1.0)
        if count >= fraction * baseline:
            return t - restored_at
        t += step
    return None


def describe(calls: list[Call]) -> str:
    """One line for failure messages: counts by status and the slowest call."""
    slowest = max((c.duration for c in calls), default=0.0)
    return f"{len(calls)} calls, statuses {dict(statuses(calls))}, slowest {slowest:.2f} s"
