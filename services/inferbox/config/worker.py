"""Settings of an inference worker (``INFERBOX_WORKER_*``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field

from inferbox.config.base import SettingsGroup

DEFAULT_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
"""Execution providers a worker prefers when ``INFERBOX_WORKER_PROVIDERS`` names none."""


class WorkerSettings(SettingsGroup):
    """Workers.

    An inference worker's name and execution providers, how it polls the queues and reports to
    Redis, and how it loads, measures and evicts models within its memory."""

    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Name of this worker as a Redis consumer and in status; unique per process."""

    worker_providers: list[str] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    """Execution providers in preference order (a JSON list), intersected with what ONNX
    Runtime offers."""

    worker_require_cuda: bool = False
    """Refuse to start (exit non-zero) unless sessions really run on CUDA: a GPU worker never
    serves on the CPU silently."""

    worker_cache_dir: Path = Path("/tmp/inferbox-cache")
    """Where a worker keeps local copies of model files."""

    worker_metrics_port: int = Field(default=0, ge=0)
    """Port of the worker's Prometheus ``/metrics`` endpoint (0 turns it off); ``inferbox
    webhooks`` serves its own metrics on it too."""

    worker_metrics_host: str = "127.0.0.1"
    """Address the worker's ``/metrics`` endpoint listens on (``0.0.0.0`` inside a container)."""

    worker_block_ms: int = Field(default=1000, gt=0)
    """Longest a worker thread blocks on an empty queue before checking for shutdown and claims."""

    worker_claim_idle_ms: int = Field(default=5000, gt=0)
    """A queued entry delivered to a worker and not acknowledged for this long is claimed by another."""

    worker_heartbeat_s: float = Field(default=2.0, gt=0)
    """How often a worker refreshes its liveness and model status in Redis."""

    worker_status_ttl_s: float = Field(default=10.0, gt=0)
    """After this long without a heartbeat a worker's models count as not ready."""

    worker_sync_s: float = Field(default=1.0, gt=0)
    """How often a worker compares the catalog with what it has loaded."""

    worker_memory_budget_bytes: int = Field(default=0, ge=0)
    """Memory resident models may take in this worker (device memory on a GPU, RSS on a CPU);
    least-recently-used idle models are evicted beyond it. 0: no limit."""

    worker_local_model_paths: bool = False
    """Serve catalog entries that name a file on the worker's disk rather than a stored model
    file (tests and development only): the catalog is in Redis, and a worker that obeyed it
    would load any file it can read."""

    worker_warmup_max_bytes: int = Field(default=1 << 30, gt=0)
    """Most bytes of inputs one synthetic run at load may allocate (the warm-up, Triton's
    warm-up samples, padded batch sizes, the capacity sweep). A version whose warm-up needs more
    fails to load with that reason, and the sweep stops below it: an uploaded model's fixed
    dimensions or samples could otherwise ask for any amount of memory. What ONNX Runtime
    allocates inside a run is bounded by the container's memory limit only."""

    worker_capacity_sweep_s: float = Field(default=0.1, ge=0)
    """Time per batch size of the capacity sweep run after a version loads (0: no sweep)."""

    worker_recycle_factor: float = Field(default=3.0, ge=0)
    """Restart (drain, re-exec, reload) when the worker's memory exceeds this many times its
    baseline plus its models' measured sizes; ONNX Runtime's arenas never shrink. 0: never."""
