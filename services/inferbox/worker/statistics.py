"""Triton's per-version inference statistics, counted by the worker that runs the batches.

A ``VersionStatistics`` per served version counts what ``ModelStatistics`` (gRPC) and
``GET /v2/models/{m}/stats`` (HTTP) answer: requests that succeeded and failed with their
time from queueing to answer, time in the queue, session time (``compute_infer``) and the
time to split a batch's outputs into answers (``compute_output``), per request and per executed
batch size. The heartbeat publishes a snapshot of each into Redis; the API adds up the
workers' snapshots (``frontend.statistics``). Counting is a few additions under a lock per
batch, not per call.
"""

from __future__ import annotations

import threading
import time

import msgspec


class Duration(msgspec.Struct):
    """A count and the nanoseconds they took (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0

    def add(self, count: int, ns: int) -> None:
        """Count ``count`` more, taking ``ns`` in all."""
        self.count += count
        self.ns += ns


class BatchDurations(msgspec.Struct):
    """Executions of one batch size (Triton's ``InferBatchStatistics``)."""

    batch_size: int
    compute_input: Duration = msgspec.field(default_factory=Duration)
    compute_infer: Duration = msgspec.field(default_factory=Duration)
    compute_output: Duration = msgspec.field(default_factory=Duration)


class Snapshot(msgspec.Struct):
    """One worker's counts for one version (published by its heartbeat)."""

    last_inference: int = 0
    """Milliseconds since the epoch of the last batch answered (0: none yet)."""
    inference_count: int = 0
    """Rows (or requests without a batch dimension) answered."""
    execution_count: int = 0
    """Batches run."""
    success: Duration = msgspec.field(default_factory=Duration)
    fail: Duration = msgspec.field(default_factory=Duration)
    queue: Duration = msgspec.field(default_factory=Duration)
    compute_input: Duration = msgspec.field(default_factory=Duration)
    compute_infer: Duration = msgspec.field(default_factory=Duration)
    compute_output: Duration = msgspec.field(default_factory=Duration)
    batches: dict[int, BatchDurations] = msgspec.field(default_factory=dict)


class VersionStatistics:
    """The counts of one version in this worker, updated by its batch threads."""

    def __init__(self) -> None:
        self._counts = Snapshot()
        self._lock = threading.Lock()

    def batch(
        self, rows: int, waits_ns: list[int], latencies_ns: list[int], infer_ns: int, output_ns: int
    ) -> None:
        """A batch answered: ``rows`` in all, one queue wait and one queue-to-answer latency per
        request, ``infer_ns`` in the session and ``output_ns`` splitting its outputs."""
        calls = len(latencies_ns)
        with self._lock:
            counts = self._counts
            counts.last_inference = int(time.time() * 1000)
            counts.inference_count += rows
            counts.execution_count += 1
            counts.success.add(calls, sum(latencies_ns))
            counts.queue.add(calls, sum(waits_ns))
            # Triton counts a batch's compute once for every request in it.
            counts.compute_input.add(calls, 0)
            counts.compute_infer.add(calls, infer_ns * calls)
            counts.compute_output.add(calls, output_ns * calls)
            sized = counts.batches.get(rows)
            if sized is None:
                sized = counts.batches[rows] = BatchDurations(batch_size=rows)
            sized.compute_input.add(1, 0)
            sized.compute_infer.add(1, infer_ns)
            sized.compute_output.add(1, output_ns)

    def failed(self, latencies_ns: list[int]) -> None:
        """Requests answered with an error, each after its queue-to-answer latency."""
        with self._lock:
            self._counts.fail.add(len(latencies_ns), sum(latencies_ns))

    def snapshot(self) -> bytes:
        """The counts so far, encoded for Redis."""
        with self._lock:
            return msgspec.json.encode(self._counts)
