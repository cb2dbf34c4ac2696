"""Settings of logging, slow-request logs and the certificate expiry metric."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from inferbox.config.base import SettingsGroup


class ObservabilitySettings(SettingsGroup):
    """Logs and certificate expiry.

    What the processes tell their operators beyond metrics: log lines, slow requests, and when
    the certificate nginx serves expires."""

    log_level: str = "INFO"
    """Minimum level of log lines written (DEBUG, INFO, WARNING, ERROR)."""

    log_format: str = "json"
    """``json`` (one object per line, for Logstash) or ``console`` (for a person at a terminal)."""

    slow_request_ms: float = Field(default=1000.0, ge=0)
    """An inference request slower than this is logged ("slow request", with ``duration_ms``); 0: never."""

    tls_cert_file: Path | None = None
    """The certificate nginx serves (mounted read-only); its expiry is exported as
    ``inferbox_tls_certificate_expiry_timestamp_seconds`` for the expiry alert. Unset:
    not exported."""
