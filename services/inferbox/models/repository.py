"""The Triton model repository layout (``<root>/<name>/<version>/model.onnx``).

Other files are ignored, except ours: ``<root>/<name>/inferbox.json`` holds serving config
(any subset of ``ModelConfig``'s fields) applied to every version of that model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from inferbox.models.spec import ModelConfig, ModelSpec, spec_from_onnx

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CONFIG_FILE = "inferbox.json"


@dataclass(frozen=True)
class RepositoryEntry:
    """One ``model.onnx`` found in a repository, or why a folder was skipped."""

    name: str
    version: int
    path: Path | None
    config: dict | None = None
    problem: str | None = None


def _config(model_dir: Path) -> tuple[dict | None, str | None]:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None, None
    try:
        config = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as exc:
        return None, f"invalid {CONFIG_FILE}: {exc}"
    if not isinstance(config, dict):
        return None, f"invalid {CONFIG_FILE}: not a JSON object"
    return config, None


def list_repository(root: Path) -> list[RepositoryEntry]:
    """Every model version under ``root`` in name and version order, with skipped folders."""
    entries: list[RepositoryEntry] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not MODEL_NAME.match(model_dir.name):
            entries.append(RepositoryEntry(model_dir.name, 0, None, problem="invalid model name"))
            continue
        config, problem = _config(model_dir)
        versions = sorted(
            (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0),
            key=lambda p: int(p.name),
        )
        for version_dir in versions:
            model_file = version_dir / "model.onnx"
            if model_file.is_file():
                entries.append(
                    RepositoryEntry(
                        model_dir.name, int(version_dir.name), model_file, config, problem
                    )
                )
    return entries


def scan_repository(
    root: Path, *, max_batch_size: int = 64, max_queue_size: int = 2048
) -> list[ModelSpec]:
    """Specs read straight from the files (no registry): valid names only, config applied."""
    specs = []
    for entry in list_repository(root):
        if entry.path is None:
            continue
        spec = spec_from_onnx(
            entry.name,
            entry.version,
            entry.path.resolve(),
            max_batch_size=max_batch_size,
            max_queue_size=max_queue_size,
        )
        if entry.problem:
            spec = msgspec.structs.replace(spec, error=entry.problem)
        elif entry.config and not spec.error:
            try:
                config = msgspec.convert(
                    {**msgspec.structs.asdict(spec.config), **entry.config}, ModelConfig
                )
            except msgspec.ValidationError as exc:
                spec = msgspec.structs.replace(spec, error=f"invalid {CONFIG_FILE}: {exc}")
            else:
                spec = msgspec.structs.replace(spec, config=config)
        specs.append(spec)
    return specs
