"""Settings a model's serving config falls back on where it names no value of its own."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class ModelDefaultsSettings(SettingsGroup):
    """Model defaults.

    What a model's serving config falls back on where it names no value of its own."""

    default_max_batch_size: int = Field(default=64, ge=0)
    """Batch size limit given to models whose dimension 0 is dynamic."""

    default_max_queue_size: int = Field(default=2048, gt=0)
    """Queued plus running requests a model accepts before answering 503."""
