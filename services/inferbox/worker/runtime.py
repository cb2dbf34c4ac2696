"""ONNX Runtime sessions: provider choice, session options, warmup, and running a batch."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec, WarmupSample
from inferbox.protocol.datatypes import V2_TO_NUMPY
from inferbox.worker.batcher import batch_buckets, padded
from inferbox.worker.model_cache import fp16_copies

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
        # Padded batch sizes are warmed up to the largest: with pad_batches, bucket_sessions
        # (None may turn it on, on CUDA) and cuda_graphs.
        padded = config.pad_batches or config.bucket_sessions is not False or config.cuda_graphs
        if padded and config.max_batch_size > 0:
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


Runner = Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]
"""Runs a session once: the named outputs of one feed, in order."""


def plain_runner(session: ort.InferenceSession) -> Runner:
    """``session.run``: inputs from host memory, outputs back in host memory."""
    return session.run


def bound_runner(
    session: ort.InferenceSession,
    device: str = "cuda",
    host_outputs: frozenset[str] = frozenset(),
) -> Runner:
    """A runner through I/O binding: each input copied to the device once, outputs left on the
    ``device`` (``cuda``, or ``cpu`` for a session on the CPU) until the run ends and then
    copied back together (``host_outputs``, the string outputs, stay on the host). On an H200 this ran a ResNet-50 at batch 32 49% faster than
    ``session.run`` in-process (docs/benchmarks.md)."""

    def run(names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cpu" if name in host_outputs else device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run


class GraphRunner:
    """A CUDA-graph session for one fixed shape: its inputs and outputs live in device buffers
    bound once; a run refreshes the inputs in place and replays the captured graph (+69% at
    batch 1 for a ResNet-50 on an H200). One run at a time: the buffers are shared."""

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: dict[str, tuple[list[int], np.dtype]],
        outputs: dict[str, tuple[list[int], np.dtype]],
        device: str = "cuda",
    ):
        self.session = session
        self.binding = session.io_binding()
        self.inputs = {}
        for name, (shape, dtype) in inputs.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype.type, device, 0)
            self.binding.bind_ortvalue_input(name, value)
            self.inputs[name] = value
        self.outputs = {}
        for name, (shape, dtype) in outputs.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype.type, device, 0)
            self.binding.bind_ortvalue_output(name, value)
            self.outputs[name] = value
        self.lock = threading.Lock()

    def __call__(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            for name, array in feeds.items():
                self.inputs[name].update_inplace(np.ascontiguousarray(array))
            self.session.run_with_iobinding(self.binding)
            return [self.outputs[name].numpy() for name in names]


@dataclass
class LoadedModel:
    """A resident model version: its session (one per batch size with ``bucket_sessions``)."""

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
    runner: Runner | None = None
    """How a batch runs on ``session``: ``session.run``, or through I/O binding on CUDA."""
    runners: dict[int, Runner] = field(default_factory=dict)
    """Batch size -> the runner of the session kept for that size alone (``bucket_sessions``)."""
    io_binding: bool = False
    """Whether batches run through I/O binding."""
    sessions: list[ort.InferenceSession] = field(default_factory=list)
    """Every session of the version (the bucket sessions too), kept alive while it serves."""
    fp16_error: float | None = None
    """With ``fp16``: the copy's largest error against the FP32 model, relative to the output."""
    graphs: bool = False
    """Whether batches replay CUDA graphs (``cuda_graphs`` on a session that runs on CUDA)."""
    graph_session: ort.InferenceSession | None = None
    """The CUDA-graph session of a model without batching (its one fixed shape)."""

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None):
        """Run once; ``outputs`` None means all outputs, in the model's order. A batch is
        padded up to its bucket (``pad_batches``) and the padding dropped from the results."""
        names = outputs or self.output_names
        if self.input_reshape:
            feeds = {name: self._shaped(name, a, self.input_reshape) for name, a in feeds.items()}
        runner = self.runner or self.session.run
        rows = 0
        if self.buckets and feeds:
            rows = len(next(iter(feeds.values())))
            size = next((b for b in self.buckets if b >= rows), rows)
            if rows and size != rows:
                feeds = padded(feeds, rows, [size])
            runner = self.runners.get(size, runner)
        results = runner(names, feeds)
        if rows:
            results = [r[:rows] if r.ndim and r.shape[0] > rows else r for r in results]
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


def fp16_copy(path: Path, sha256: str) -> Path:
    """An FP16 copy of the model at ``path`` (FP32 inputs and outputs kept), made once: beside
    it, or in the temporary folder where its folder is read-only."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for target in fp16_copies(path, sha256):
        if target.exists():
            return target
        converted = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            onnx.save(converted, str(partial))
            os.replace(partial, target)  # whole or not at all, for a worker that loads it next
            return target
        except OSError:
            continue
    raise OSError(f"no writable folder for the FP16 copy of {path}")


def fp16_error(full: Path, half: LoadedModel, runs: int = 2) -> float | None:
    """The largest error of ``half``'s outputs against the FP32 model at ``full`` on random
    inputs (batch 1, dynamic dimensions 1), relative to each output's largest magnitude; None
    for a model whose tensors are reshaped (Triton's ``reshape``)."""
    if half.input_reshape or half.output_reshape:
        return None
    reference = ort.InferenceSession(str(full), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(runs):
        feeds = {}
        for tensor in half.spec.inputs:
            zeros = _warmup_array(tensor)
            if zeros.dtype.kind == "f":
                zeros = rng.standard_normal(zeros.shape).astype(zeros.dtype)
            feeds[tensor.name] = zeros
        names, got = half.run(feeds)
        expected = reference.run(names, feeds)
        for a, b in zip(expected, got, strict=True):
            if a.dtype.kind == "f" and a.size:
                scale = float(np.abs(a).max()) or 1.0
                worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


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
    full = Path(path or spec.path)
    if config.fp16:
        path = fp16_copy(full, spec.sha256)
    model, warm_run_ms = _create_warm(spec, path, wanted, spinning, auto)
    _warm_buckets(model, spec)
    if config.fp16:
        model.fp16_error = fp16_error(full, model)
        log.info("serving an FP16 copy", model=spec.name, max_rel_error=model.fp16_error)
    _run_warmup_samples(model, config.warmup_samples)
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


def _create_warm(
    spec: ModelSpec, path: Path | None, wanted: list[str], spinning: bool, auto: bool
) -> tuple[LoadedModel, float | None]:
    """The model's session, run once on zeros when the config asks for a warm-up; with
    ``auto`` (spinning chosen automatically) that run is timed and the session created again
    with the other setting when the guess was wrong. Also the timed run in ms (None untimed)."""
    model = _create(spec, path, wanted, spinning)
    if not spec.config.warmup:
        return model, None
    feeds = {t.name: _warmup_array(t) for t in spec.inputs}
    model.run(feeds)
    if not auto:
        return model, None
    run_s = _warm_run_seconds(model, feeds)
    if spinning_pays(model.providers, run_s) != model.spinning:
        # The guess was wrong: load again (a small model, or a GPU fallen back to CPU).
        del model
        model = _create(spec, path, wanted, spinning=not spinning)
        model.run(feeds)
    return model, round(run_s * 1000, 3)


def _warm_buckets(model: LoadedModel, spec: ModelSpec) -> None:
    """Every bucket once (a CUDA graph twice more: its first run allocates, the second
    captures), so that no call pays a first run."""
    if not (model.buckets and spec.config.warmup):
        return
    runs = 3 if model.graphs else 1
    for size in model.buckets:
        for _ in range(runs):
            model.run({t.name: _warmup_array(t, size) for t in spec.inputs})


def _run_warmup_samples(model: LoadedModel, samples: list[WarmupSample]) -> None:
    """Run the config's warm-up samples (Triton's ``model_warmup``), each ``count`` times."""
    if not samples:
        return
    rng = np.random.default_rng(0)
    for sample in samples:
        feeds = _sample_feeds(sample, rng)
        for _ in range(max(sample.count, 1)):
            model.run(feeds)


def _session(
    spec: ModelSpec, path: Path | None, providers: list[str], spinning: bool, graph: bool = False
) -> ort.InferenceSession:
    def options(provider: str) -> dict[str, str]:
        chosen = provider_options(provider, spec.config)
        if graph and provider == "CUDAExecutionProvider":
            chosen["enable_cuda_graph"] = "1"
        return chosen

    return ort.InferenceSession(
        str(path or spec.path),
        sess_options=_session_options(spec.config, spinning),
        providers=[(p, options(p)) for p in providers],
    )


def _create(spec: ModelSpec, path: Path | None, providers: list[str], spinning: bool):
    config = spec.config
    session = _session(spec, path, providers, spinning)
    batched = config.max_batch_size > 0
    served = {t.name for t in spec.outputs}
    model = LoadedModel(
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
        sessions=[session],
    )
    on_cuda = model.providers[0] == "CUDAExecutionProvider"
    strings = {t.name for t in spec.inputs if t.datatype == "BYTES"}
    # I/O binding by default where the session runs on CUDA; string inputs stay on the host
    # and take session.run.
    model.io_binding = (on_cuda if config.io_binding is None else config.io_binding) and not strings
    model.graphs = config.cuda_graphs and on_cuda
    if config.cuda_graphs and not on_cuda:
        log.warning("cuda_graphs asks for CUDA; this session runs on the CPU", model=spec.name)
    model.runner = _runner(model, session, on_cuda)
    per_size = config.bucket_sessions
    if per_size is None:
        per_size = on_cuda and batched and has_convolutions(path or spec.path)
    if batched and (config.pad_batches or per_size or config.cuda_graphs):
        model.buckets = batch_buckets(config.max_batch_size)
    if batched and (per_size or config.cuda_graphs):
        for size in model.buckets:
            if size == model.buckets[-1] and not model.graphs:
                bucket = session  # the largest batches keep the first session
            else:
                bucket = _session(spec, path, providers, spinning, graph=model.graphs)
                model.sessions.append(bucket)
            model.runners[size] = (
                _graph_runner(model, bucket, size)
                if model.graphs
                else _runner(model, bucket, on_cuda)
            )
    elif model.graphs:
        model.graph_session = _session(spec, path, providers, spinning, graph=True)
        model.sessions.append(model.graph_session)
        model.runner = _graph_runner(model, model.graph_session, None)
    return model


CONVOLUTIONS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})


def has_convolutions(path: str | Path) -> bool:
    """Whether the ONNX graph at ``path`` (its main graph; weights not read) has convolutions."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in CONVOLUTIONS for node in graph.node)


def _runner(model: LoadedModel, session: ort.InferenceSession, on_cuda: bool) -> Runner:
    if not model.io_binding:
        return plain_runner(session)
    strings = frozenset(t.name for t in model.spec.outputs if t.datatype == "BYTES")
    return bound_runner(session, "cuda" if on_cuda else "cpu", strings)


def graph_shapes(
    spec: ModelSpec, rows: int | None
) -> tuple[dict[str, tuple[list[int], np.dtype]], dict[str, tuple[list[int], np.dtype]]]:
    """The fixed shapes (as the graph sees them) and dtypes of a CUDA-graph session's inputs
    and outputs for batches of ``rows`` (None: a model without batching); ``ValueError`` naming
    the tensor whose shape is not fixed."""

    def fixed(tensor: TensorSpec) -> tuple[list[int], np.dtype]:
        if tensor.reshape is not None:
            dims = list(tensor.reshape)  # Triton's reshape leaves the batch dimension out
        else:
            dims = list(tensor.shape[1:] if rows else tensor.shape)
        if any(d < 0 for d in dims) or tensor.datatype == "BYTES":
            raise ValueError(
                f"cuda_graphs needs tensors of fixed shape and numeric type; {tensor.name!r} is "
                f"{tensor.datatype} {tensor.shape}"
            )
        return ([rows, *dims] if rows else dims), np.dtype(V2_TO_NUMPY[tensor.datatype])

    return {t.name: fixed(t) for t in spec.inputs}, {t.name: fixed(t) for t in spec.outputs}


def _graph_runner(model: LoadedModel, session: ort.InferenceSession, rows: int | None):
    inputs, outputs = graph_shapes(model.spec, rows)
    served = {name: outputs[name] for name in model.output_names}
    return GraphRunner(session, inputs, served)


def _warm_run_seconds(model: LoadedModel, feeds: dict[str, np.ndarray], runs: int = 5) -> float:
    """The fastest of a few batch-1 runs (the first ones allocate and are not typical)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        model.run(feeds)
        best = min(best, time.perf_counter() - started)
    return best
