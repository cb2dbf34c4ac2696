"""The validator's child process: checks one ONNX file and prints one JSON line.

Run only by ``inferbox.registry.validate`` as ``python -I -c ... LIMITS_JSON PATH``. It limits
itself first (CPU time, open files, no core dumps), imports onnx, then caps its address space
before it reads a byte of the untrusted file. Whatever happens, the parent reads the last line
of stdout: ``{"ok": true, "inputs": [...], "outputs": [...], "ir_version": N, "opsets": {...}}``
or ``{"ok": false, "reason": "..."}``; no line at all means the process was killed.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def _limit(kind: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(kind, (soft, soft if hard is None else hard))


def _walk_graph(graph, where: str):
    """Yield (tensor, where) for every tensor in a graph, its nodes and its subgraphs."""
    for tensor in graph.initializer:
        yield tensor, f"initializer {tensor.name!r}"
    for sparse in graph.sparse_initializer:
        yield sparse.values, f"sparse initializer {sparse.values.name!r}"
        yield sparse.indices, f"sparse initializer {sparse.values.name!r}"
    yield from _walk_nodes(graph.node, where)


def _walk_nodes(nodes, where: str):
    for node in nodes:
        for attr in node.attribute:
            label = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
            if attr.HasField("t"):
                yield attr.t, label
            for tensor in attr.tensors:
                yield tensor, label
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, label
                yield attr.sparse_tensor.indices, label
            for sparse in attr.sparse_tensors:
                yield sparse.values, label
                yield sparse.indices, label
            if attr.HasField("g"):
                yield from _walk_graph(attr.g, where)
            for graph in attr.graphs:
                yield from _walk_graph(graph, where)


def _all_tensors(model):
    yield from _walk_graph(model.graph, "graph")
    for function in model.functions:
        yield from _walk_nodes(function.node, f"function {function.name!r}")


def _graph_names(graph, where: str):
    """Yield (text, where) for every name a graph carries, its subgraphs' included."""
    yield graph.name, f"{where} name"
    for value in (*graph.input, *graph.output, *graph.value_info):
        yield value.name, f"{where} value"
    for tensor in graph.initializer:
        yield tensor.name, f"{where} initializer"
    for sparse in graph.sparse_initializer:
        yield sparse.values.name, f"{where} sparse initializer"
    for node in graph.node:
        label = f"{where} node"
        for text in (node.name, node.op_type, node.domain, *node.input, *node.output):
            yield text, label
        for attr in node.attribute:
            yield attr.name, f"{label} attribute"
            if attr.HasField("g"):
                yield from _graph_names(attr.g, f"{where} subgraph")
            for sub in attr.graphs:
                yield from _graph_names(sub, f"{where} subgraph")


def _model_names(model):
    """Every name and label of a model that ONNX Runtime or onnx may print in a log line."""
    yield model.producer_name, "producer name"
    yield model.producer_version, "producer version"
    yield model.domain, "model domain"
    for prop in model.metadata_props:
        yield prop.key, "metadata key"
    yield from _graph_names(model.graph, "graph")


def _dims(value_info):
    tensor_type = value_info.type.tensor_type
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            yield dim.dim_value


class _Rejected(Exception):
    """The model is refused; ``check`` turns the message into ``{"ok": false, "reason": ...}``."""


def check(path: str, limits: dict) -> dict:
    """Validate the model file at ``path``; the result dict the parent expects."""
    try:
        model = _read_model(path, limits["max_bytes"])
        _check_no_external_data(model)
        _check_printable_names(model)
        _check_ir_version(model, limits)
        opsets = _check_opsets(model, limits)
        _check_no_custom_operators(model, set(limits["allowed_domains"]))
        inputs = _served_inputs(model.graph)
        _check_declared_dims(model, limits["max_dim"])
        _check_with_onnx(model, limits["max_dim"])
        return {
            "ok": True,
            "inputs": _specs(inputs),
            "outputs": _specs(model.graph.output),
            "ir_version": model.ir_version,
            "opsets": opsets,
        }
    except _Rejected as exc:
        return {"ok": False, "reason": str(exc)}


def _read_model(path: str, max_bytes: int):
    """Parse the file into a ModelProto, keeping at most one copy of its bytes alive."""
    import onnx
    from google.protobuf.message import DecodeError

    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > max_bytes:
            raise _Rejected(f"the file is larger than {max_bytes} bytes")
        data = handle.read()
    try:
        return onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        # Under the address-space cap protobuf reports a failed allocation as a parse error.
        if "alloc failed" in str(exc).lower():
            raise MemoryError(str(exc)) from exc
        raise _Rejected(f"not an ONNX protobuf (truncated or corrupt): {exc}") from exc
    finally:
        del data  # the only reference: parsing must not keep two copies alive


def _check_no_external_data(model) -> None:
    """Refuse tensors stored in side files: only one self-contained file is uploaded."""
    import onnx

    for tensor, where in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next(
                (e.value for e in tensor.external_data if e.key == "location"), "<unnamed>"
            )
            raise _Rejected(
                f"{where} references external data at {location!r}; external data is not"
                " accepted, upload one self-contained .onnx file"
            )


def _check_printable_names(model) -> None:
    """Refuse names with control characters.

    ONNX Runtime and onnx print names in their own (not JSON) log lines on stderr; a line break
    in a name would start a line of the uploader's choosing, which the log pipeline would read
    as one of the appliance's own JSON events.
    """
    for text, where in _model_names(model):
        if not text.isprintable():
            bad = next(c for c in text if not c.isprintable())
            raise _Rejected(
                f"a {where} contains the control character U+{ord(bad):04X} (names must be"
                " printable text)"
            )


def _check_ir_version(model, limits: dict) -> None:
    ir_min, ir_max = limits["min_ir_version"], limits["max_ir_version"]
    if not ir_min <= model.ir_version <= ir_max:
        raise _Rejected(f"IR version {model.ir_version} is outside the accepted {ir_min}..{ir_max}")


def _check_opsets(model, limits: dict) -> dict[str, int]:
    """The model's opset imports by domain ("" for the default one), each within its limits."""
    import onnx
    import onnx.helper

    allowed = set(limits["allowed_domains"])
    opsets: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain not in allowed:
            raise _Rejected(f"operator domain {opset.domain!r} is not accepted (custom operators)")
        opsets[domain] = opset.version
    if "" not in opsets:
        raise _Rejected("the model imports no default ONNX opset")
    op_min = limits["min_opset"]
    op_max = limits["max_opset"] or onnx.defs.onnx_opset_version()
    if not op_min <= opsets[""] <= op_max:
        raise _Rejected(f"opset {opsets['']} is outside the accepted {op_min}..{op_max}")
    ml_max = max(row[3] for row in onnx.helper.VERSION_TABLE)
    if opsets.get("ai.onnx.ml", 1) > ml_max:
        raise _Rejected(f"ai.onnx.ml opset {opsets['ai.onnx.ml']} is newer than {ml_max}")
    return opsets


def _check_no_custom_operators(model, allowed: set[str]) -> None:
    """Refuse model-local functions and nodes from domains outside the allowed ones."""
    if model.functions:
        function = model.functions[0]
        raise _Rejected(f"model-local function {function.domain}.{function.name} is not accepted")
    nodes_domains = {node.domain for node in model.graph.node} - allowed - {"ai.onnx"}
    if nodes_domains:
        raise _Rejected(f"operator domains {sorted(nodes_domains)} are not accepted")


def _served_inputs(graph) -> list:
    """The graph's inputs a caller feeds (initializers excluded); refuses an empty graph."""
    if not graph.node:
        raise _Rejected("the graph has no nodes")
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if not inputs or not graph.output:
        raise _Rejected("the graph declares no inputs or no outputs")
    return inputs


def _check_declared_dims(model, max_dim: int) -> None:
    """Refuse declared value and tensor dimensions outside ``0..max_dim``."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in _dims(value):
            if not 0 <= dim <= max_dim:
                raise _Rejected(f"tensor {value.name!r} declares dimension {dim} (limit {max_dim})")
    for tensor, where in _all_tensors(model):
        if any(not 0 <= d <= max_dim for d in tensor.dims):
            raise _Rejected(f"{where} declares dimensions {list(tensor.dims)} (limit {max_dim})")


def _check_with_onnx(model, max_dim: int) -> None:
    """Run onnx's full checker and strict shape inference; inferred dimensions stay in limits."""
    import onnx.checker
    import onnx.shape_inference

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.shape_inference.InferenceError as exc:  # full_check runs shape inference too
        raise _Rejected(f"shape inference failed: {_first_line(exc)}") from exc
    except onnx.checker.ValidationError as exc:
        raise _Rejected(f"onnx.checker: {_first_line(exc)}") from exc
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise _Rejected(f"shape inference failed: {_first_line(exc)}") from exc
    for value in inferred.graph.value_info:
        for dim in _dims(value):
            if not 0 <= dim <= max_dim:
                raise _Rejected(f"tensor {value.name!r} infers dimension {dim} (limit {max_dim})")


def _specs(values) -> list[dict]:
    """The V2 name, datatype and shape (-1 for a dynamic dimension) of each value."""
    from inferbox.protocol.datatypes import ONNX_ELEM_TO_V2

    out = []
    for value in values:
        tensor_type = value.type.tensor_type
        datatype = ONNX_ELEM_TO_V2.get(tensor_type.elem_type)
        if not value.type.HasField("tensor_type") or datatype is None:
            raise _Rejected(f"tensor {value.name!r} has a type inferbox cannot serve")
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        out.append({"name": value.name, "datatype": datatype, "shape": shape})
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _isolate_network() -> bool:
    """Leave the parent's network: a new user and network namespace holding only a loopback
    that is down. Possible where unprivileged user namespaces are allowed (not under Docker's
    default seccomp profile); True when done."""
    import ctypes

    clone_newuser, clone_newnet = 0x10000000, 0x40000000
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(clone_newuser | clone_newnet) == 0
    except (OSError, AttributeError):
        return False


def main() -> None:
    """Entry point: ``argv[1]`` is the limits JSON, ``argv[2]`` the model path."""
    isolated = _isolate_network()  # first: unshare needs a single-threaded process
    limits = json.loads(sys.argv[1])
    _limit(resource.RLIMIT_CORE, 0)
    # SIGXCPU at the soft limit, SIGKILL a second later should it be caught.
    _limit(resource.RLIMIT_CPU, limits["cpu_seconds"], limits["cpu_seconds"] + 1)
    _limit(resource.RLIMIT_NOFILE, 64)
    # Trusted imports happen before the memory cap.
    import onnx.checker
    import onnx.shape_inference  # noqa: F401
    from google.protobuf.message import EncodeError

    import inferbox.protocol.datatypes  # noqa: F401

    reason = f"validation exceeded the memory limit of {limits['memory_bytes'] >> 20} MiB"
    out_of_memory = (json.dumps({"ok": False, "reason": reason}) + "\n").encode()
    _limit(resource.RLIMIT_AS, limits["memory_bytes"])
    try:
        result = check(sys.argv[2], limits)
    except (MemoryError, EncodeError):  # onnx.checker reports a failed allocation as EncodeError
        os.write(1, out_of_memory)
        os._exit(3)
    except Exception as exc:  # an unexpected failure inside onnx is a rejection, not a crash
        result = {"ok": False, "reason": f"validation failed: {type(exc).__name__}: {exc}"[:600]}
    result["network_isolated"] = isolated
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
