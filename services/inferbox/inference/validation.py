"""Checking a decoded V2 request against the model it is for, before anything is queued."""

from __future__ import annotations

from inferbox.errors import BadRequest
from inferbox.lanes.wire import TensorMeta
from inferbox.models.spec import ModelSpec
from inferbox.protocol.codec import InferRequest, TensorLimits
from inferbox.protocol.datatypes import deserialize_bytes_tensor


def tensor_limits(settings) -> TensorLimits:
    """The request size limits a ``Settings`` object sets."""
    return TensorLimits(
        max_rank=settings.max_tensor_rank,
        max_dim=settings.max_tensor_dim,
        max_elements=settings.max_tensor_elements,
        max_bytes_elements=settings.max_bytes_elements,
    )


def check_declared(inputs: list[tuple[str, str, list[int]]], spec: ModelSpec) -> None:
    """Names, datatypes and ranks a request declares (``peek_inputs``), against the model,
    before any tensor data is decoded: a body the model cannot take costs no decoding."""
    expected = {tensor.name: tensor for tensor in spec.inputs}
    for name, datatype, shape in inputs:
        tensor_spec = expected.get(name)
        if tensor_spec is None:
            raise BadRequest(
                f"unknown input {name!r} for model {spec.name!r}; expected {sorted(expected)}"
            )
        if datatype != tensor_spec.datatype:
            raise BadRequest(
                f"input {name!r} has datatype {datatype}, the model expects {tensor_spec.datatype}"
            )
        if len(shape) != len(tensor_spec.shape):
            raise BadRequest(
                f"input {name!r} has shape {shape}, the model expects "
                f"{len(tensor_spec.shape)} dimensions {tensor_spec.shape}"
            )


# Every inference call runs this: written flat on purpose, as helpers would add calls per request.
def check_request(  # noqa: C901
    request: InferRequest, spec: ModelSpec, *, batch_limit: bool = True
) -> tuple[list[TensorMeta], list[bytes], list[str] | None]:
    """Inputs in the model's order (metadata and raw bytes) and the output names asked for.

    Raises ``BadRequest`` naming the first problem: a missing or unknown input, a datatype,
    rank or dimension that does not fit, a batch larger than ``max_batch_size``, BYTES that are
    not UTF-8 (ONNX string tensors), or an unknown output. Without ``batch_limit`` (jobs,
    which run in chunks) any batch of at least one row is accepted.
    """
    given = {tensor.name: tensor for tensor in request.inputs}
    expected = {tensor.name for tensor in spec.inputs}
    unknown = [name for name in given if name not in expected]
    if unknown:
        raise BadRequest(
            f"unknown input {unknown[0]!r} for model {spec.name!r}; expected {sorted(expected)}"
        )
    max_batch = spec.config.max_batch_size
    largest = max_batch if batch_limit else 2**62
    metas: list[TensorMeta] = []
    raws: list[bytes] = []
    batch_rows: int | None = None
    for tensor_spec in spec.inputs:
        tensor = given.get(tensor_spec.name)
        if tensor is None:
            raise BadRequest(f"missing input {tensor_spec.name!r}")
        name = tensor.name
        if tensor.datatype != tensor_spec.datatype:
            raise BadRequest(
                f"input {name!r} has datatype {tensor.datatype}, "
                f"the model expects {tensor_spec.datatype}"
            )
        shape = list(tensor.shape)
        if len(shape) != len(tensor_spec.shape):
            raise BadRequest(
                f"input {name!r} has shape {shape}, the model expects "
                f"{len(tensor_spec.shape)} dimensions {tensor_spec.shape}"
            )
        for axis, (dim, want) in enumerate(zip(shape, tensor_spec.shape, strict=True)):
            if want >= 0 and dim != want:
                raise BadRequest(
                    f"input {name!r} has shape {shape}, the model expects {tensor_spec.shape} "
                    f"(dimension {axis} must be {want})"
                )
        if max_batch > 0:
            rows = shape[0]
            if rows < 1 or rows > largest:
                raise BadRequest(
                    f"input {name!r} has a batch of {rows}; this model takes 1 to {max_batch}"
                    if batch_limit
                    else f"input {name!r} has an empty batch"
                )
            if batch_rows is not None and rows != batch_rows:
                raise BadRequest("inputs disagree on the batch size (dimension 0)")
            batch_rows = rows
        if tensor.datatype == "BYTES":
            try:
                for item in deserialize_bytes_tensor(tensor.raw):
                    item.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"input {name!r}: BYTES elements must be UTF-8 text") from None
        metas.append(TensorMeta(name, tensor.datatype, shape))
        raws.append(tensor.raw)
    outputs = None
    if request.outputs is not None:
        known = {tensor.name for tensor in spec.outputs}
        outputs = []
        for output in request.outputs:
            if output.name not in known:
                raise BadRequest(
                    f"unknown output {output.name!r} for model {spec.name!r}; "
                    f"the model has {sorted(known)}"
                )
            outputs.append(output.name)
    return metas, raws, outputs
