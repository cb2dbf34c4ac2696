"""The gateway certificate's expiry as a metric, for the "certificate close to expiry" alert.

nginx terminates TLS with a certificate made (and renewed) by ``scripts/certs``; the API
mounts the same file read-only and exports its ``notAfter`` as
``inferbox_tls_certificate_expiry_timestamp_seconds``. It is re-read every few minutes, so a
renewed certificate shows without a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from cryptography import x509
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

EXPIRY = Gauge(
    "inferbox_tls_certificate_expiry_timestamp_seconds",
    "Unix time at which the TLS certificate nginx serves expires (its notAfter).",
    ["path"],
    multiprocess_mode="max",
)


def expiry(path: Path) -> float:
    """The certificate's ``notAfter`` as Unix time (the first certificate of a PEM chain)."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.not_valid_after_utc.timestamp()


async def watch(path: Path, interval_s: float = 300.0) -> None:
    """Keep the gauge current until cancelled; a missing or unreadable file is logged once."""
    complained = False
    while True:
        try:
            EXPIRY.labels(str(path)).set(await asyncio.to_thread(expiry, path))
            complained = False
        except (OSError, ValueError) as exc:
            if not complained:
                log.warning("cannot read the TLS certificate", path=str(path), error=str(exc))
                complained = True
        await asyncio.sleep(interval_s)
