"""The Triton model repository layout (``<root>/<name>/<version>/model.onnx``).

A model folder may hold Triton's ``config.pbtxt`` (read with Triton's own message definitions,
see ``triton_config``: names, datatypes, dims, batching, instances, version policy, warmup...)
and our ``inferbox.json``: serving config (any subset of ``ModelConfig``'s fields) for what
Triton's format has no field for, applied after config.pbtxt to every version of that model.
Other files are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from inferbox.models import triton_config
from inferbox.models.spec import ModelConfig, ModelSpec, spec_from_onnx

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CONFIG_FILE = "inferbox.json"
DEFAULT_MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class RepositoryEntry:
    """One model file found in a repository, or why a folder was skipped."""

    name: str
    version: int
    path: Path | None
    config: dict | None = None
    problem: str | None = None
    triton_config: str | None = None
    """The text of the model's config.pbtxt, when it has one."""
    selected: bool = True
    """Whether config.pbtxt's ``version_policy`` serves this version (others stay unloaded)."""


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


def _triton(model_dir: Path):
    """(text, parsed message, problem) of the folder's config.pbtxt; all None without one."""
    path = model_dir / triton_config.CONFIG_FILE
    if not path.is_file():
        return None, None, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        proto = triton_config.parse(text)
        triton_config.check_platform(proto)
    except triton_config.TritonConfigError as exc:
        return text, None, str(exc)
    return text, proto, None


def list_repository(root: Path) -> list[RepositoryEntry]:
    """Every model version under ``root`` in name and version order, with skipped folders."""
    entries: list[RepositoryEntry] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not MODEL_NAME.match(model_dir.name):
            entries.append(RepositoryEntry(model_dir.name, 0, None, problem="invalid model name"))
            continue
        config, problem = _config(model_dir)
        text, proto, triton_problem = _triton(model_dir)
        if triton_problem:
            entries.append(RepositoryEntry(model_dir.name, 0, None, problem=triton_problem))
            continue
        filename = (proto.default_model_filename if proto else "") or DEFAULT_MODEL_FILE
        found = [
            (int(p.name), p / filename)
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / filename).is_file()
        ]
        found.sort()
        selected = triton_config.selected_versions(proto, [v for v, _ in found])
        for version, model_file in found:
            entries.append(
                RepositoryEntry(
                    model_dir.name,
                    version,
                    model_file,
                    config,
                    problem,
                    triton_config=text,
                    selected=version in selected,
                )
            )
    return entries


def apply_configs(
    spec: ModelSpec, triton_text: str | None, overrides: dict | None
) -> tuple[ModelSpec, str | None]:
    """``spec`` (read from the ONNX graph) with config.pbtxt then ``inferbox.json`` applied,
    or the message saying why they do not fit the graph."""
    inputs, outputs, fields = spec.inputs, spec.outputs, {}
    if triton_text is not None:
        try:
            serving = triton_config.serving_from_triton(
                triton_config.parse(triton_text),
                spec.name,
                spec.inputs,
                spec.outputs,
                default_max_batch_size=spec.config.max_batch_size,
            )
        except triton_config.TritonConfigError as exc:
            return spec, str(exc)
        inputs, outputs, fields = serving.inputs, serving.outputs, serving.config
    try:
        config = msgspec.convert(
            {**msgspec.structs.asdict(spec.config), **fields, **(overrides or {})}, ModelConfig
        )
    except msgspec.ValidationError as exc:
        return spec, f"invalid {CONFIG_FILE}: {exc}"
    return msgspec.structs.replace(spec, inputs=inputs, outputs=outputs, config=config), None


def scan_repository(
    root: Path, *, max_batch_size: int = 64, max_queue_size: int = 2048
) -> list[ModelSpec]:
    """Specs read straight from the files (no registry): valid names only, configs applied,
    versions outside config.pbtxt's version policy unloaded."""
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
        elif not spec.error:
            spec, problem = apply_configs(spec, entry.triton_config, entry.config)
            if problem:
                spec = msgspec.structs.replace(spec, error=problem)
        specs.append(msgspec.structs.replace(spec, loaded=entry.selected))
    return specs
