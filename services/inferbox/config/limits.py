"""Settings bounding what one inference call may ask for and an API process may hold queued."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class LimitsSettings(SettingsGroup):
    """Limits of one call.

    What one inference call may ask for (its body, its tensors, its deadline) and what an API
    process may hold queued for the workers; a call beyond them is refused."""

    default_timeout_ms: int = Field(default=30_000, gt=0)
    """Deadline of a synchronous call when neither the request nor the model config sets one."""

    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request body the API reads; larger bodies get 413."""

    max_tensor_rank: int = Field(default=8, gt=0)
    """Most dimensions one input tensor may declare."""

    max_tensor_dim: int = Field(default=16_777_216, gt=0)
    """Largest single dimension an input tensor may declare."""

    max_tensor_elements: int = Field(default=16_777_216, gt=0)
    """Most elements one input tensor may hold."""

    max_bytes_elements: int = Field(default=1_048_576, gt=0)
    """Most elements one BYTES input may hold: each is a Python object while it is decoded and
    checked (about 1 s of CPU per million), so they get their own, lower bound."""

    max_queued_bytes: int = Field(default=1 << 30, gt=0)
    """Tensor bytes one API process may have queued for the workers and not yet answered
    (503 beyond): with ``api_workers`` this bounds what the queues hold in Redis."""
