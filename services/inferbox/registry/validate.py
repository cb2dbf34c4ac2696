"""Check an uploaded ONNX file in a separate, resource-limited process (``validate_model``).

Every uploaded file is hostile until proven otherwise: parsing and checking it happens in a
child process of the same Python (``_validate_child``) with capped address space, CPU time and
open files, and a wall-clock timeout, so a file built to exhaust memory or loop forever costs a
rejected upload, never the API process. The child checks, in order: size, protobuf parse,
external-data references (always rejected, whatever the path), IR version and opset ranges,
operator domains, non-empty graph, declared dimensions, ``onnx.checker`` (full) and strict
shape inference, then reports the inputs and outputs.

``validate_model`` blocks for the child's lifetime (about half a second for small models): in
async code call it as ``await asyncio.to_thread(validate_model, path, limits)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec

import inferbox
from inferbox.errors import Unavailable
from inferbox.models.spec import TensorSpec
from inferbox.registry.errors import UnprocessableModel


def _import_roots() -> str:
    """The folders the child imports inferbox, onnx and msgspec from, as this process does:
    ``-I`` ignores PYTHONPATH, and these may live outside site-packages (a source checkout, or
    wheels unpacked into a folder)."""
    import onnx

    roots = dict.fromkeys(
        str(Path(module.__file__).resolve().parent.parent) for module in (inferbox, onnx, msgspec)
    )
    return os.pathsep.join(roots)


_PACKAGE_ROOTS = _import_roots()
_BOOT = (
    "import os, sys; sys.path[:0] = sys.argv.pop(1).split(os.pathsep); "
    "from inferbox.registry._validate_child import main; main()"
)


@dataclass(frozen=True)
class ValidationLimits:
    """What an uploaded model may be and what checking it may cost."""

    max_bytes: int = 2**31 - 1
    """Largest accepted file (protobuf itself stops at 2 GiB)."""
    memory_bytes: int = 1 << 30
    """Fixed part of the checking process's address-space limit (RLIMIT_AS)."""
    memory_per_file_byte: int = 6
    """Added to the limit per byte of the file: onnx holds about five copies while checking."""
    cpu_seconds: int = 60
    """CPU time limit of the checking process (RLIMIT_CPU)."""
    timeout_s: float = 120.0
    """Wall-clock limit; the process is killed after it."""
    min_ir_version: int = 3
    max_ir_version: int = 10
    min_opset: int = 7
    max_opset: int | None = None
    """Newest accepted default-domain opset; None: the newest the installed onnx knows."""
    max_dim: int = 2**31 - 1
    """Largest declared tensor dimension."""
    allowed_domains: tuple[str, ...] = field(default=("", "ai.onnx", "ai.onnx.ml"))
    """Operator domains a model may use; anything else is a custom op and rejected."""


@dataclass(frozen=True)
class ValidatedModel:
    """What the checks learnt about an accepted model."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    """Tensors with ``-1`` for dynamic dimensions (graph inputs that are initializers excluded)."""
    ir_version: int
    opsets: dict[str, int]
    """Imported opset per domain (``""`` is the default ONNX domain)."""
    network_isolated: bool = False
    """Whether the check ran without network (a network namespace of its own)."""


MAX_CONCURRENT = 2
"""Validations that run at once in one process; more wait for a slot (at most their timeout)."""
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT)


def validate_model(path: Path, limits: ValidationLimits | None = None) -> ValidatedModel:
    """Check ``path`` in a limited child process; ``UnprocessableModel`` (422) with the reason
    when the file is rejected, or when checking it crashed, timed out or ran out of resources."""
    limits = limits or ValidationLimits()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnprocessableModel(f"cannot read the file: {exc.strerror}") from None
    if size > limits.max_bytes:
        raise UnprocessableModel(f"the file is larger than {limits.max_bytes} bytes")
    command = [sys.executable, "-I", "-c", _BOOT, _PACKAGE_ROOTS]
    memory = limits.memory_bytes + limits.memory_per_file_byte * size
    settings = {**asdict(limits), "memory_bytes": memory}
    command += [json.dumps(settings), str(path)]
    # Nothing of the parent's environment (no credentials) reaches the child.
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    if not _SLOTS.acquire(timeout=limits.timeout_s):
        raise Unavailable(f"{MAX_CONCURRENT} models are being validated; retry later")
    try:
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            cwd="/",
            timeout=limits.timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise UnprocessableModel(
            f"validation took longer than {limits.timeout_s:g} s and was stopped"
        ) from None
    finally:
        _SLOTS.release()
    result = _last_json_line(proc.stdout)
    if result is None:
        raise UnprocessableModel(_crash_reason(proc.returncode, proc.stderr, limits, memory))
    if not result.get("ok"):
        raise UnprocessableModel(str(result.get("reason") or "rejected"))
    return ValidatedModel(
        inputs=msgspec.convert(result["inputs"], list[TensorSpec]),
        outputs=msgspec.convert(result["outputs"], list[TensorSpec]),
        ir_version=result["ir_version"],
        opsets=result["opsets"],
        network_isolated=bool(result.get("network_isolated")),
    )


def _last_json_line(stdout: bytes) -> dict | None:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _crash_reason(returncode: int, stderr: bytes, limits: ValidationLimits, memory: int) -> str:
    """Why the child gave no answer, in words an uploader can act on."""
    text = stderr.decode(errors="replace")
    if returncode == -signal.SIGXCPU:
        return f"validation exceeded the CPU time limit of {limits.cpu_seconds} s"
    if "MemoryError" in text or "bad_alloc" in text or returncode == -signal.SIGKILL:
        return f"validation exceeded the memory limit of {memory >> 20} MiB"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"the validator crashed ({name}) on this file; it is not accepted"
    return f"the validator failed (exit status {returncode}) on this file; it is not accepted"
