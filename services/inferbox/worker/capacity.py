"""A version's capacity card: latency and throughput by batch size, measured on the worker.

After a version becomes ready the worker runs a short, bounded sweep (batch sizes 1, 2, 4, ...
up to ``max_batch_size``) on synthetic inputs and keeps the curve with the version. From the
curve, ``models.capacity.propose`` suggests ``max_batch_size`` and
``max_queue_delay_microseconds`` for a latency target.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from inferbox.models.capacity import CapacityCard, CapacityPoint
from inferbox.models.spec import TensorSpec
from inferbox.protocol.datatypes import V2_TO_NUMPY
from inferbox.worker.runtime import feeds_bytes, synthetic_shape


def _shape(tensor: TensorSpec, rows: int, batched: bool) -> list[int]:
    return synthetic_shape(tensor, rows if batched else None)


def _inputs(tensors: list[TensorSpec], rows: int, batched: bool) -> dict[str, np.ndarray]:
    feeds = {}
    for tensor in tensors:
        shape = _shape(tensor, rows, batched)
        if tensor.datatype == "BYTES":
            feeds[tensor.name] = np.full(shape, "", dtype=object)
        else:
            feeds[tensor.name] = np.zeros(shape, dtype=V2_TO_NUMPY[tensor.datatype])
    return feeds


def batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... and ``max_batch_size`` itself (just 1 when batching is off)."""
    if max_batch_size <= 1:
        return [1]
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def sweep(
    run,
    inputs: list[TensorSpec],
    max_batch_size: int,
    *,
    device: str,
    memory_bytes: int,
    seconds_per_size: float = 0.25,
    max_runs: int = 50,
    max_input_bytes: int | None = None,
) -> CapacityCard:
    """Measure ``run(feeds)`` at each batch size, bounded by time and by run count.

    Each size gets ``seconds_per_size`` (at least one timed run); the sweep stops before a
    size once the whole budget (``seconds_per_size`` per size) is spent, so a slow model
    yields a shorter curve rather than a long stall, and before a size whose inputs would
    take more than ``max_input_bytes``.
    """
    points = []
    sizes = batch_sizes(max_batch_size)
    sweep_end = time.perf_counter() + seconds_per_size * len(sizes)
    batched = max_batch_size > 0
    for size in sizes:
        if points and time.perf_counter() > sweep_end:
            break
        needed = feeds_bytes([(_shape(t, size, batched), t.datatype) for t in inputs])
        if max_input_bytes is not None and needed > max_input_bytes:
            break
        feeds = _inputs(inputs, size, batched)
        run(feeds)  # the first run of a new shape allocates; keep it out of the figures
        timings: list[float] = []
        budget_end = time.perf_counter() + seconds_per_size
        while len(timings) < max_runs and (not timings or time.perf_counter() < budget_end):
            started = time.perf_counter()
            run(feeds)
            timings.append(time.perf_counter() - started)
        timings.sort()
        p50 = statistics.median(timings)
        p95 = timings[min(len(timings) - 1, int(len(timings) * 0.95))]
        points.append(CapacityPoint(size, p50 * 1000, p95 * 1000, size / p50 if p50 else 0.0))
    return CapacityCard(
        points=points, device=device, memory_bytes=memory_bytes, measured_at=time.time()
    )
