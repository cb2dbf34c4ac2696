"""Import a Triton-layout model repository (``<root>/<name>/<version>/model.onnx``).

Other files are ignored, except ours: ``<root>/<name>/inferbox.json`` holds a ``ModelConfig``
(any subset of its fields) applied to every version of that model.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import structlog

from inferbox.models.spec import ModelConfig, ModelSpec, spec_from_onnx

log = structlog.get_logger(__name__)

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CONFIG_FILE = "inferbox.json"


def _config_for(model_dir: Path, spec: ModelSpec, base: ModelConfig) -> ModelSpec:
    path = model_dir / CONFIG_FILE
    if not path.is_file() or spec.error:
        return spec
    try:
        overrides = msgspec.json.decode(path.read_bytes(), type=dict)
        merged = msgspec.convert(
            {**msgspec.structs.asdict(base), **overrides}, ModelConfig, strict=True
        )
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return msgspec.structs.replace(spec, error=f"invalid {CONFIG_FILE}: {exc}")
    return msgspec.structs.replace(spec, config=merged)


def scan_repository(
    root: Path, *, max_batch_size: int = 64, max_queue_size: int = 2048
) -> list[ModelSpec]:
    """Specs of every model version under ``root``; bad names and folders are skipped, logged."""
    specs: list[ModelSpec] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not MODEL_NAME.match(model_dir.name):
            log.warning("skipping folder with an invalid model name", folder=str(model_dir))
            continue
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            model_file = version_dir / "model.onnx"
            if not version_dir.name.isdigit() or int(version_dir.name) < 1:
                continue
            if not model_file.is_file():
                continue
            spec = spec_from_onnx(
                model_dir.name,
                int(version_dir.name),
                model_file.resolve(),
                max_batch_size=max_batch_size,
                max_queue_size=max_queue_size,
            )
            specs.append(_config_for(model_dir, spec, spec.config))
    return specs
