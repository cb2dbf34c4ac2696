"""A model version's description: its tensors, its serving config, and where its file lives.

Specs are msgspec structs: they cross Redis as JSON and are read on every request, so decoding
them must be cheap.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import msgspec

from inferbox.config import DEFAULT_PROVIDERS
from inferbox.redaction import redact

PLATFORM = "onnx_onnxv1"
"""The platform name the V2 metadata reports (KServe's name for ONNX)."""

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class TensorSpec(msgspec.Struct, frozen=True):
    """One input or output: V2 datatype and full shape (``-1`` for a dynamic dimension)."""

    name: str
    datatype: str
    shape: list[int]
    reshape: list[int] | None = None
    """The shape the ONNX graph takes or gives when it differs from ``shape`` (Triton's
    ``reshape``): without the batch dimension when the model batches, like Triton's."""


class WarmupInput(msgspec.Struct, frozen=True):
    """One input of a warmup sample: zeros or random values of a fixed shape."""

    name: str
    datatype: str
    dims: list[int]
    random: bool = False


class WarmupSample(msgspec.Struct, frozen=True):
    """A warmup request run after loading (Triton's ``model_warmup``)."""

    name: str
    inputs: list[WarmupInput]
    batch_size: int = 0
    """Rows of the sample (0: the dims are the whole shape, for a model without batching)."""
    count: int = 1


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How a model version is served; defaults come from its ONNX graph."""

    max_batch_size: int = 0
    """Rows one batch may hold; 0 turns batching off (dimension 0 is then not a batch)."""
    max_queue_delay_microseconds: int = 0
    """How long a worker may wait for more requests to fill a batch (0: take what is queued)."""
    preferred_batch_size: list[int] = msgspec.field(default_factory=list)
    """Batch sizes worth waiting for; a batch reaching one runs at once."""
    max_queue_size: int = 2048
    """Queued plus running requests accepted before answering 503."""
    instance_count: int = 0
    """Threads (each with its own batch loop) serving this model in each worker; 0 picks one,
    except for a model without batching on a CPU worker, which gets two (as Triton does on a
    CPU) so that two calls can compute at once."""
    intra_op_threads: int = 0
    """ONNX Runtime intra-op threads of the session the instances share; 0 means one per CPU
    core. A lone call, or a batch, then computes on every core."""
    intra_op_spinning: bool | None = None
    """Whether idle intra-op threads spin instead of sleeping. None decides per version on a
    CPU-only session: on when a warm batch-1 run takes at least ``SPIN_MIN_RUN_S`` (waking
    sleeping threads is then a visible part of a call), off for shorter runs and on a GPU."""

    def instances(self, device: str) -> int:
        """How many batch loops serve this model on a worker running on ``device``.

        With batching, one loop takes everything queued as one batch and the session's thread
        per core spreads it over the cores: a second loop only splits the queue into smaller
        batches and doubles the per-batch work (measured in docs/benchmarks.md; on an H200 two
        loops on one CUDA session served a ResNet-50 at 554 rows/s against one loop's 1,213).
        """
        if self.instance_count:
            return self.instance_count
        return 2 if device == "cpu" and self.max_batch_size <= 0 else 1

    execution_providers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    """ONNX Runtime execution providers in preference order."""
    pad_batches: bool = False
    """Pad each batch with zero rows up to the next power of two (at most ``max_batch_size``),
    dropped from the answers, so the session only ever sees a few batch sizes, each warmed up
    at load. Alone it did not change a ResNet-50's throughput on an H200 (a cuDNN convolution
    pays its setup again whenever the batch size differs from its last run, and a few sizes
    still alternate; docs/benchmarks.md): ``bucket_sessions`` adds a session per size."""
    bucket_sessions: bool | None = None
    """Pad batches as ``pad_batches`` does and keep one session per batch size, so that each
    session only ever sees one shape. On CUDA a convolution re-plans whenever its input shape
    differs from its last run: batches of 8 and 16 rows in turn took 98 ms each on one session
    and 3.2 ms on a session per size, and a ResNet-50 served 1,349 rows/s at c=16 against 83
    (H200, docs/benchmarks.md). Costs a copy of the weights per size (``max_batch_size`` 128:
    eight sessions). None: on where the session runs on CUDA and the graph has convolutions
    (an encoder's matrix products showed no such cost)."""
    cuda_graphs: bool = False
    """Replay a captured CUDA graph per batch size instead of launching each kernel (implies
    ``bucket_sessions``; every tensor's shape must be fixed but the batch dimension). Ignored,
    with a warning, where the session runs on the CPU."""
    fp16: bool = False
    """Serve an FP16 copy of the model, made by the worker at load (ONNX Runtime's converter,
    inputs and outputs kept FP32) and checked against the FP32 model on random inputs (the
    largest relative error is logged). On an H200 a ResNet-50 ran 26% and a BERT-base 75%
    faster at batch 32, within 5e-4 and 2e-3 of the output scale (docs/benchmarks.md)."""
    io_binding: bool | None = None
    """Run batches through ONNX Runtime's I/O binding: inputs copied to the device once,
    outputs copied back together after the run. None: on where the session runs on CUDA."""
    provider_options: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    """ONNX Runtime options per execution provider, over inferbox's defaults, e.g.
    ``{"CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"}}`` (the GPU knobs and
    what each is worth are in docs/benchmarks.md)."""
    graph_optimization_level: str = "all"
    """ONNX Runtime graph optimizations: disable, basic, extended or all."""
    timeout_ms: int | None = None
    """Default deadline of a call to this model (the request's ``timeout`` wins)."""
    warmup: bool = True
    """Run one synthetic request after loading, before reporting ready."""
    pinned: bool = False
    """Never evicted to make room for other models."""
    job_retention_s: int | None = None
    """How long results of this model's async jobs are kept (a job's own ``retention_s`` wins;
    None: ``INFERBOX_JOBS_RETENTION_S``)."""
    default_priority_level: int = 0
    """Priority of a call that names none and whose key sets none (Triton's
    ``dynamic_batching.default_priority_level``; 0 and 1 are the high tier)."""
    warmup_samples: list[WarmupSample] = msgspec.field(default_factory=list)
    """Warmup requests run after loading, besides ``warmup`` (Triton's ``model_warmup``)."""
    response_cache: bool = False
    """Answer a call whose key (inputs, requested outputs, this exact version) was answered
    before from the cache Redis, without queueing it (Triton's ``response_cache``); needs
    ``INFERBOX_CACHE_URL``."""
    response_cache_per_key: bool = False
    """Keep this model's stored answers per API key instead of shared by every key allowed to
    call it (``INFERBOX_CACHE_PER_KEY`` does it for every model)."""
    response_cache_admit: Literal["always", "repeated"] = "always"
    """Which calls use the cache: ``always``, every call is looked up and every successful
    answer stored; ``repeated``, only inputs this API process has already seen lately (its last
    few hundred thousand), so a model whose inputs are mostly new pays a hash per call instead
    of two round trips to the cache Redis, and a repeated input is served from the cache from
    its third call in a process (its second stores it) or wherever another process stored it."""
    triton_config: dict | None = None
    """The model's config.pbtxt in Triton's JSON form, as Triton completes it; answered by
    ``/v2/models/{name}/config`` (with the live serving values) when present."""
    not_honoured: list[str] = msgspec.field(default_factory=list)
    """config.pbtxt fields set in the file that inferbox does not apply, by name."""


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One version of one model as the catalog holds it."""

    name: str
    version: int
    path: str
    sha256: str
    size: int
    inputs: list[TensorSpec] = msgspec.field(default_factory=list)
    outputs: list[TensorSpec] = msgspec.field(default_factory=list)
    config: ModelConfig = msgspec.field(default_factory=ModelConfig)
    error: str | None = None
    """Why the file could not be read as ONNX; such a version is never ready."""
    object_key: str | None = None
    """Key of the file in the object store; ``path`` is then only where it was uploaded from."""
    loaded: bool = True
    """Desired state: workers serve it (``load``) or drop it (``unload``)."""

    def input(self, name: str) -> TensorSpec | None:
        """The input called ``name``, if the model has one."""
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        return None


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _tensor_specs(values) -> list[TensorSpec]:
    from inferbox.protocol.datatypes import ONNX_ELEM_TO_V2

    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        datatype = ONNX_ELEM_TO_V2.get(tensor_type.elem_type)
        if datatype is None:
            raise ValueError(f"tensor {value.name!r} has an unsupported element type")
        shape = [
            dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
        ]
        specs.append(TensorSpec(name=value.name, datatype=datatype, shape=shape))
    return specs


def default_config(
    inputs: list[TensorSpec], outputs: list[TensorSpec], *, max_batch_size: int, max_queue_size: int
) -> ModelConfig:
    """Batch along dimension 0 only where every input and output has it dynamic."""
    tensors = [*inputs, *outputs]
    batchable = bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)
    return ModelConfig(
        max_batch_size=max_batch_size if batchable else 0, max_queue_size=max_queue_size
    )


def spec_from_onnx(
    name: str,
    version: int,
    path: Path,
    *,
    max_batch_size: int = 64,
    max_queue_size: int = 2048,
    config: ModelConfig | None = None,
) -> ModelSpec:
    """Describe a model file; an unreadable file yields a spec with ``error`` set, not an exception."""
    import onnx

    sha256, size = file_sha256(path)
    base = ModelSpec(name=name, version=version, path=str(path), sha256=sha256, size=size)
    try:
        # Weights are not needed to describe the graph's interface.
        model = onnx.load(str(path), load_external_data=False)
        initializers = {init.name for init in model.graph.initializer}
        inputs = _tensor_specs(v for v in model.graph.input if v.name not in initializers)
        outputs = _tensor_specs(model.graph.output)
        if not inputs or not outputs:
            raise ValueError("the graph declares no inputs or no outputs")
    except Exception as exc:  # onnx raises many types for a hostile or truncated file
        # Shown to callers (503s, readiness): onnx's text without the server's paths.
        return msgspec.structs.replace(base, error=f"not a valid ONNX model: {redact(str(exc))}")
    config = config or default_config(
        inputs, outputs, max_batch_size=max_batch_size, max_queue_size=max_queue_size
    )
    return msgspec.structs.replace(base, inputs=inputs, outputs=outputs, config=config)
