"""Settings of async jobs' completion webhooks (``INFERBOX_JOBS_WEBHOOK_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inferbox.config.base import SettingsGroup


class WebhookSettings(SettingsGroup):
    """Job webhooks.

    The completion webhooks of async jobs: how they are signed and retried, who sends them
    (the workers, or ``inferbox webhooks``) and how many at once, and where they may go."""

    jobs_webhook_secret: str = ""
    """HMAC-SHA256 key signing completion webhooks (``X-Inferbox-Signature``); empty: the
    webhooks go unsigned."""

    jobs_webhook_max_attempts: int = Field(default=8, ge=1)
    """Deliveries tried (with exponential backoff from 1 s up to 10 min) before giving up."""

    jobs_webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Longest wait for a receiver to accept the connection or send the next part of its answer
    (a whole delivery takes at most 30 s, however the receiver drips)."""

    jobs_webhook_concurrency: int = Field(default=8, ge=1, le=256)
    """Webhook deliveries in flight at once per sender: a slow receiver holds one of them, not
    the others. A sender claims no more due webhooks than it has free slots, so a claimed one
    never waits behind others (and no other sender takes it meanwhile)."""

    jobs_webhook_sender: Literal["worker", "separate"] = "worker"
    """Who delivers webhooks: ``worker``, every worker with jobs on (next to its job lane, apart
    from its reconciler); ``separate``, only ``inferbox webhooks`` processes (the appliance runs
    one, the one inferbox container with a way out), and the workers deliver none. Set it on the
    workers."""

    jobs_webhook_allow_private: bool = False
    """Whether webhooks may call private, loopback and link-local addresses. Off, a job cannot
    make the appliance call its own internal services (Redis, PostgreSQL, MinIO...)."""
