"""Serving ``/metrics``: prometheus-client's multiprocess mode for the API's gunicorn workers.

Each gunicorn worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``; whichever
worker answers ``/metrics`` merges all of them, so a scrape sees the whole API. The directory
must be known before ``prometheus_client`` is first imported (it picks its value class at
import time), so the gunicorn master prepares it before anything else; the master's
``child_exit`` hook marks a dead worker's gauges as gone.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory; call before importing metrics.

    An operator-given directory is emptied of stale ``*.db`` files (from a previous run);
    otherwise a fresh temporary one is made and removed when the process that made it exits.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="inferbox-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    owner = os.getpid()

    def remove() -> None:
        # Forked gunicorn workers inherit atexit handlers: only the master removes the files.
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def child_exit(_server, worker) -> None:
    """gunicorn hook: drop the live-gauge samples of a worker process that has exited."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)


def render() -> tuple[bytes, str]:
    """The text exposition of every API process (or of this process outside multiprocess mode)."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
