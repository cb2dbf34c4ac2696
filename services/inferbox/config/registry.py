"""Settings of the model registry: uploads, their checks, the folder models are imported from."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from inferbox.config.base import SettingsGroup


class RegistrySettings(SettingsGroup):
    """Model registry.

    How an uploaded model file is received and checked, and the folder that
    ``inferbox models import`` reads."""

    model_repository: Path | None = None
    """A Triton-layout folder (``<name>/<version>/model.onnx``) that ``inferbox models import``
    reads when given no folder (``scripts/stack up`` imports it). Unset: none."""

    max_model_bytes: int = Field(default=2 * 1024**3, gt=0)
    """Largest model file accepted by upload (413 beyond)."""

    upload_dir: Path = Path("/tmp/inferbox-uploads")
    """Where uploads are spooled while they are checked (on the API's disk, not in memory)."""

    validation_memory_bytes: int = Field(default=1 << 30, gt=0)
    """Address space given to the process that checks an upload, plus six bytes per file byte."""

    validation_timeout_s: float = Field(default=120.0, gt=0)
    """Wall-clock limit of the upload check."""
