"""ONNX Runtime sessions: provider choice, session options, warmup, and running a batch."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec, WarmupSample
from inferbox.protocol.datatypes import V2_TO_NUMPY
from inferbox.worker.batcher import batch_buckets

log = structlog.get_logger(__name__)

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def choose_providers(preferred: list[str], available: list[str]) -> list[str]:
    """Preferred providers that this ONNX Runtime build offers, in preference order.

    The CPU provider is always appended last so a model can load on a machine without a GPU.
    What a session really uses is read back from ``session.get_providers()`` after creation:
    the GPU build lists CUDA as available even where its libraries cannot load.
    """
    chosen = [p for p in preferred if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _default_provider_options(provider: str) -> dict[str, str]:
    match provider:
        case "CUDAExecutionProvider":
            # Grow the arena only by what is asked: the default power-of-two growth strands
            # GPU memory that other resident models could use, and the arena never shrinks.
            # HEURISTIC: ONNX Runtime's EXHAUSTIVE search benchmarks every convolution at each
            # batch size seen for the first time, and dynamic batching sees many (measured on
            # an H200: a ResNet-50's first run at a new batch size took 799 ms against 134 ms,
            # at the same speed once warm; docs/benchmarks.md).
            return {
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
            }
        case _:
            return {}


def provider_options(provider: str, config: ModelConfig) -> dict[str, str]:
    """ONNX Runtime options for ``provider``: inferbox's defaults, then the model's own
    ``provider_options`` for that provider (which win)."""
    return {**_default_provider_options(provider), **config.provider_options.get(provider, {})}


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that ONNX Runtime's CUDA provider links against from
    NVIDIA's wheels (``nvidia-cuda-runtime``, ``nvidia-cublas``, ``nvidia-cudnn-cu13``...), so a
    CUDA session finds them without ``LD_LIBRARY_PATH``. A no-op on the CPU build and where the
    libraries are absent: session creation then reports what it really got."""
    try:
        ort.preload_dlls()
    except (OSError, AttributeError) as exc:
        log.info("CUDA libraries not preloaded", error=str(exc))


SPIN_MIN_RUN_S = 0.00025
"""Below this warm batch-1 run time a CPU session's threads sleep when idle (automatic mode).

Where idle cores sleep deeply (a VM whose idle vCPUs halt at once), waking a sleeping thread
for each parallel operator made a 0.8 ms run take 1.3-1.4 ms after a few milliseconds of
idleness. Spinning threads avoid that for runs long enough to have several parallel
operators; a tiny model's many short runs would instead keep the threads spinning nearly all
the time, taking cores from the API and Redis (measured in docs/benchmarks.md).
"""


def _intra_op_threads(config: ModelConfig) -> int:
    # Every core for one session that the instances share: a lone call uses them all (c=1
    # latency), and under load each instance's calling thread keeps its own core busy anyway.
    return config.intra_op_threads or (os.cpu_count() or 1)


def _session_options(config: ModelConfig, spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization_level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Sequential execution: the inter-op pool is never used.
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.intra_op_num_threads = _intra_op_threads(config)
    return options


def spinning_pays(providers: list[str], warm_run_s: float) -> bool:
    """Whether a session really running on ``providers`` (``session.get_providers()``), whose
    warm batch-1 run takes ``warm_run_s``, should keep spinning intra-op threads.

    Only a session on the CPU provider alone: a GPU session's intra-op threads serve just the
    operators left on the CPU, and would spin for nothing after every run.
    """
    return providers[0] == "CPUExecutionProvider" and warm_run_s >= SPIN_MIN_RUN_S


DEFAULT_WARMUP_MAX_BYTES = 1 << 30
"""Bytes of inputs one synthetic run at load may allocate unless the worker says otherwise
(``Settings.worker_warmup_max_bytes``)."""


class WarmupTooLarge(ValueError):
    """A synthetic run at load (warm-up, a warm-up sample, a padded batch size) would allocate
    more input bytes than the worker allows: the version fails to load instead."""


def _element_bytes(datatype: str) -> int:
    # A BYTES element of a synthetic run is a pointer to one shared empty string.
    return 8 if datatype == "BYTES" else V2_TO_NUMPY[datatype].itemsize


def synthetic_shape(tensor: TensorSpec, rows: int | None = None) -> list[int]:
    """The shape a synthetic run gives ``tensor``: dynamic dimensions 1, the first ``rows``."""
    shape = [1 if dim < 0 else dim for dim in tensor.shape]
    if rows is not None and shape:
        shape[0] = rows
    return shape


def feeds_bytes(shapes: list[tuple[list[int], str]]) -> int:
    """Bytes the arrays of these ``(shape, datatype)`` inputs take (Python ints: no overflow)."""
    total = 0
    for shape, datatype in shapes:
        count = 1
        for dim in shape:
            count *= max(dim, 0)
        total += count * _element_bytes(datatype)
    return total


def check_warmup(spec: ModelSpec, max_bytes: int) -> None:
    """Raise ``WarmupTooLarge`` before anything is allocated when a synthetic run of ``spec``
    at load would need more than ``max_bytes`` of inputs (a fixed input shape, a warm-up sample
    or a padded batch size can name any size; an uploaded model is not trusted to be small)."""
    config = spec.config
    runs: list[tuple[str, list[tuple[list[int], str]]]] = []
    if config.warmup:
        runs.append(("warm-up", [(synthetic_shape(t), t.datatype) for t in spec.inputs]))
        if config.pad_batches and config.max_batch_size > 0:
            rows = config.max_batch_size
            runs.append(
                (
                    f"warm-up of the padded batch size {rows}",
                    [(synthetic_shape(t, rows), t.datatype) for t in spec.inputs],
                )
            )
    for sample in config.warmup_samples:
        shapes = [
            ([sample.batch_size, *i.dims] if sample.batch_size else list(i.dims), i.datatype)
            for i in sample.inputs
        ]
        runs.append((f"warm-up sample {sample.name!r}", shapes))
    for what, shapes in runs:
        needed = feeds_bytes(shapes)
        if needed > max_bytes:
            raise WarmupTooLarge(
                f"{what} needs {needed} bytes of inputs, more than this worker allows at load"
                f" ({max_bytes}, INFERBOX_WORKER_WARMUP_MAX_BYTES); give the model smaller"
                " fixed dimensions or warm-up samples, or turn warm-up off"
            )


def _warmup_array(tensor: TensorSpec, rows: int | None = None) -> np.ndarray:
    """Zeros (empty strings) of ``tensor``'s shape, dynamic dimensions 1, the first ``rows``."""
    shape = synthetic_shape(tensor, rows)
    if tensor.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=V2_TO_NUMPY[tensor.datatype])


def _sample_feeds(sample: WarmupSample, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The inputs of one of Triton's ``model_warmup`` samples (zeros or random values)."""
    feeds = {}
    for item in sample.inputs:
        shape = [sample.batch_size, *item.dims] if sample.batch_size else list(item.dims)
        dtype = V2_TO_NUMPY[item.datatype]
        if item.datatype == "BYTES":
            value = np.full(shape, "", dtype=object)
        elif not item.random:
            value = np.zeros(shape, dtype=dtype)
        elif dtype.kind == "f":
            value = rng.random(shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, shape).astype(dtype)
        else:
            value = rng.integers(0, 100, shape).astype(dtype)
        feeds[item.name] = value
    return feeds


@dataclass
class LoadedModel:
    """A resident session for one model version."""

    spec: ModelSpec
    session: ort.InferenceSession
    providers: list[str]
    load_seconds: float
    output_names: list[str] = field(default_factory=list)
    spinning: bool = False
    """Whether the session's idle intra-op threads spin."""
    buckets: list[int] = field(default_factory=list)
    """Batch sizes every batch is padded up to (empty: no padding); see ``pad_batches``."""
    input_reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Inputs the graph takes in another shape than clients send (Triton's ``reshape``)."""
    output_reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Outputs clients receive in another shape than the graph gives."""
    batched: bool = False

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None):
        """Run once; ``outputs`` None means all outputs, in the model's order."""
        names = outputs or self.output_names
        if self.input_reshape:
            feeds = {name: self._shaped(name, a, self.input_reshape) for name, a in feeds.items()}
        results = self.session.run(names, feeds)
        if self.output_reshape:
            results = [
                self._shaped(name, a, self.output_reshape)
                for name, a in zip(names, results, strict=True)
            ]
        return names, results

    def _shaped(self, name: str, array: np.ndarray, shapes: dict) -> np.ndarray:
        shape = shapes.get(name)
        if shape is None:
            return array
        return array.reshape((array.shape[0], *shape) if self.batched else shape)


class CudaUnavailable(RuntimeError):
    """CUDA was required (a GPU worker) but a session here does not run on it."""


def probe_device(preferred: list[str], require_cuda: bool = False) -> str:
    """``cuda`` if a session on a one-node graph really runs on CUDA here, else ``cpu``;
    with ``require_cuda``, raises :class:`CudaUnavailable` instead of falling back to the CPU."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    wanted = choose_providers(preferred, ort.get_available_providers())
    if "CUDAExecutionProvider" in wanted:
        preload_cuda_libraries()
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=wanted)
        used = session.get_providers()
    except Exception as exc:  # a broken CUDA install raises here rather than falling back
        log.warning("execution provider probe failed", error=str(exc))
        used = ["CPUExecutionProvider"]
    device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
    if device == "cpu" and require_cuda:
        raise CudaUnavailable(
            "CUDA was required (INFERBOX_WORKER_REQUIRE_CUDA) but a session here runs on "
            f"{used}: no GPU visible, or the driver or CUDA libraries do not load "
            "(ONNX Runtime's error above says which); this worker will not serve on the CPU"
        )
    if device == "cpu" and "CUDAExecutionProvider" in preferred:
        log.warning("no usable CUDA device: models run on the CPU", providers=used)
    return device


def load_model(
    spec: ModelSpec,
    available: list[str] | None = None,
    path: Path | None = None,
    warmup_max_bytes: int = DEFAULT_WARMUP_MAX_BYTES,
) -> LoadedModel:
    """Create the session for ``spec`` (read from ``path`` when given), then warm it up;
    raises on a file that will not load, and ``WarmupTooLarge`` (before creating anything) when
    a warm-up run would take more than ``warmup_max_bytes`` of inputs. The worker's instances
    share this one session."""
    if spec.error:
        raise ValueError(spec.error)
    check_warmup(spec, warmup_max_bytes)
    started = time.perf_counter()
    config = spec.config
    available = ort.get_available_providers() if available is None else available
    wanted = choose_providers(config.execution_providers, available)
    if "CUDAExecutionProvider" in wanted:
        preload_cuda_libraries()
    auto = config.intra_op_spinning is None and config.warmup and _intra_op_threads(config) > 1
    # First guess for automatic mode from the preference list; what the session really runs on
    # decides below (the GPU build lists CUDA as available even where it cannot load).
    spinning = wanted[0] == "CPUExecutionProvider" if auto else bool(config.intra_op_spinning)
    model = _create(spec, path, wanted, spinning)
    warm_run_ms = None
    if config.warmup:
        feeds = {t.name: _warmup_array(t) for t in spec.inputs}
        model.run(feeds)
        if auto:
            run_s = _warm_run_seconds(model, feeds)
            warm_run_ms = round(run_s * 1000, 3)
            if spinning_pays(model.providers, run_s) != model.spinning:
                # The guess was wrong: load again (a small model, or a GPU fallen back to CPU).
                del model
                model = _create(spec, path, wanted, spinning=not spinning)
                model.run(feeds)
    if config.pad_batches and config.max_batch_size > 0:
        model.buckets = batch_buckets(config.max_batch_size)
        if config.warmup:
            for size in model.buckets:
                model.run({t.name: _warmup_array(t, size) for t in spec.inputs})
    if config.warmup_samples:
        rng = np.random.default_rng(0)
        for sample in config.warmup_samples:
            feeds = _sample_feeds(sample, rng)
            for _ in range(max(sample.count, 1)):
                model.run(feeds)
    model.load_seconds = time.perf_counter() - started
    log.info(
        "model loaded",
        model=spec.name,
        version=spec.version,
        providers=model.providers,
        requested_providers=wanted,
        spinning=model.spinning,
        warm_run_ms=warm_run_ms,
        duration_ms=round(model.load_seconds * 1000, 1),
    )
    return model


def _create(spec: ModelSpec, path: Path | None, providers: list[str], spinning: bool):
    session = ort.InferenceSession(
        str(path or spec.path),
        sess_options=_session_options(spec.config, spinning),
        providers=[(p, provider_options(p, spec.config)) for p in providers],
    )
    batched = spec.config.max_batch_size > 0
    served = {t.name for t in spec.outputs}
    return LoadedModel(
        spec=spec,
        session=session,
        providers=session.get_providers(),
        load_seconds=0.0,
        # A config.pbtxt that declares outputs serves only those (as Triton does).
        output_names=[o.name for o in session.get_outputs() if not served or o.name in served],
        spinning=spinning,
        input_reshape={t.name: tuple(t.reshape) for t in spec.inputs if t.reshape is not None},
        # Clients get the declared dims back (batch dimension kept when batching).
        output_reshape={
            t.name: tuple(t.shape[1:] if batched else t.shape)
            for t in spec.outputs
            if t.reshape is not None
        },
        batched=batched,
    )


def _warm_run_seconds(model: LoadedModel, feeds: dict[str, np.ndarray], runs: int = 5) -> float:
    """The fastest of a few batch-1 runs (the first ones allocate and are not typical)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        model.run(feeds)
        best = min(best, time.perf_counter() - started)
    return best
