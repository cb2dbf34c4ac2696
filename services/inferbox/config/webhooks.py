"""Settings of async jobs' completion webhooks (``INFERBOX_JOBS_WEBHOOK_*``)."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class WebhookSettings(SettingsGroup):
    """Job webhooks.

    The completion webhooks of async jobs: how they are signed and retried, and where they may
    go."""

    jobs_webhook_secret: str = ""
    """HMAC-SHA256 key signing completion webhooks (``X-Inferbox-Signature``); empty: the
    webhooks go unsigned."""

    jobs_webhook_max_attempts: int = Field(default=8, ge=1)
    """Deliveries tried (with exponential backoff from 1 s up to 10 min) before giving up."""

    jobs_webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Time limit of one webhook delivery."""

    jobs_webhook_allow_private: bool = False
    """Whether webhooks may call private, loopback and link-local addresses. Off, a job cannot
    make the appliance call its own internal services (Redis, PostgreSQL, MinIO...)."""
