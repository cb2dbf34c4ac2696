"""The Ray actor that holds ONNX Runtime sessions and runs batches on them.

One actor per GPU (``num_gpus=1``) or a CPU actor. It keeps sessions resident by
``(model, version)``, loads them from bytes the Ray worker ships through Ray's object store (so
a machine that joined the cluster needs no access to MinIO), and runs batches the Ray worker
assembled. Batching, replies and Redis stay in the Ray worker: the actor only computes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import msgspec
import numpy as np
import ray
import structlog

from inferbox.models.spec import ModelSpec
from inferbox.worker import memory
from inferbox.worker.runtime import LoadedModel, load_model, probe_device

log = structlog.get_logger(__name__)

CONTROL = "control"
"""Concurrency group of loads, unloads and pings: they never queue behind a long batch."""


class SessionHost:
    """Resident sessions of one actor; ``run`` is the only hot method."""

    def __init__(self, cache_dir: str, gpus: float, cpus: float):
        self.cache_dir = Path(cache_dir)
        self.cpus = cpus
        preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus else []
        self.device = probe_device(preferred)
        # NVML numbers devices physically; Ray hands this actor its own through CUDA_VISIBLE_DEVICES.
        gpu_ids = ray.get_gpu_ids() if gpus else []
        self.gpu_index = int(gpu_ids[0]) if gpu_ids else 0
        self.models: dict[tuple[str, int], LoadedModel] = {}
        self.running = 0

    @ray.method(concurrency_group=CONTROL)
    def info(self) -> dict:
        """Where this actor runs and on what device."""
        context = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": context.get_node_id(),
            "device": self.device,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "running": self.running,
        }

    @ray.method(concurrency_group=CONTROL)
    def load(self, spec: ModelSpec, blob: bytes) -> dict:
        """Write the model file (checked by sha256) to this machine's cache, load and warm it.

        Returns what the Ray worker books: the output names, the providers really used, the
        memory the version took on this actor's device, and the load time.
        """
        path = self._store(spec, blob)
        if self.device == "cpu" and not spec.config.intra_op_threads:
            # The actor's CPU reservation is its share of the cores: use exactly that many threads.
            config = msgspec.structs.replace(
                spec.config, intra_op_threads=max(1, int(self.cpus or 1))
            )
            spec = msgspec.structs.replace(spec, config=config)
        before = self._memory()
        model = load_model(spec, path=path)
        key = (spec.name, spec.version)
        self.models[key] = model
        size = max(self._memory() - before, spec.size)
        return {
            "output_names": model.output_names,
            "providers": model.providers,
            "size": size,
            "load_seconds": model.load_seconds,
        }

    @ray.method(concurrency_group=CONTROL)
    def unload(self, name: str, version: int) -> bool:
        """Drop a session; True if it was resident."""
        return self.models.pop((name, version), None) is not None

    @ray.method(concurrency_group=CONTROL)
    def resident(self) -> list[tuple[str, int]]:
        """The versions this actor holds."""
        return list(self.models)

    def run(
        self, name: str, version: int, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> tuple:
        """``("ok", names, arrays)``, or ``("error", exception class name, message)``.

        Errors travel as plain values: ONNX Runtime's exception classes are pybind types that
        do not survive pickling, and the Ray worker needs the class to answer 400 or 500.
        """
        model = self.models.get((name, version))
        if model is None:
            return ("error", "NotResident", f"{name} version {version} is not loaded here")
        self.running += 1
        try:
            names, results = model.run(feeds, outputs)
        except Exception as exc:
            return ("error", type(exc).__name__, str(exc))
        finally:
            self.running -= 1
        return ("ok", names, results)

    def _store(self, spec: ModelSpec, blob: bytes) -> Path:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != spec.sha256:
            raise ValueError(f"model file sha256 {digest} differs from the catalog's {spec.sha256}")
        target = self.cache_dir / f"{spec.sha256}.onnx"
        if not (target.is_file() and target.stat().st_size == len(blob)):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.part")
            partial.write_bytes(blob)
            partial.rename(target)
        return target

    def _memory(self) -> int:
        if self.device == "cuda":
            used = memory.device_used(self.gpu_index)
            if used is not None:
                return used
        return memory.process_rss()


def actor_class(gpus: float, cpus: float):
    """``SessionHost`` as a Ray actor class reserving ``gpus`` GPUs and ``cpus`` CPUs.

    Runs go one at a time (the default group); loads and pings go beside them. Ray does not
    restart a dead actor (``max_restarts=0``): the pool replaces it and reloads its models.
    """
    return ray.remote(
        num_gpus=gpus,
        num_cpus=cpus,
        max_restarts=0,
        max_concurrency=1,
        concurrency_groups={CONTROL: 2},
    )(SessionHost)
