"""Serving the API with gunicorn and uvicorn workers, configured from ``Settings``."""

from __future__ import annotations

import logging

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from inferbox import heap
from inferbox.config import Settings
from inferbox.logs import configure_logging
from inferbox.observability.exposition import child_exit, prepare_multiprocess_dir


class JsonGunicornLogger(glogging.Logger):
    """gunicorn's logger writing through inferbox's JSON handler instead of its own format."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        root = logging.getLogger()
        for logger in (self.error_log, self.access_log):
            logger.handlers = list(root.handlers)
            logger.propagate = False


class ApiServer(BaseApplication):
    """gunicorn with uvicorn workers; each worker process builds its own app after the fork.

    Metrics: every worker writes to one ``PROMETHEUS_MULTIPROC_DIR`` (prepared here, before
    any worker imports prometheus-client) and ``/metrics`` on the API port merges them all.
    """

    def __init__(self, settings: Settings, extra: dict[str, object] | None = None):
        self.settings = settings
        self.metrics_dir = prepare_multiprocess_dir()
        self.extra = extra or {}
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": self.settings.api_bind,
            "workers": self.settings.api_workers,
            "worker_class": "uvicorn_worker.UvicornWorker",
            # Requests wait on the queue, not the CPU: long calls must not look like hangs.
            "timeout": 120,
            "graceful_timeout": 30,
            "keepalive": 75,
            "control_socket_disable": True,
            # uvicorn reads X-Forwarded-For only from the proxy the API trusts for X-Real-IP.
            "forwarded_allow_ips": self.settings.trusted_proxies,
            "logger_class": JsonGunicornLogger,
            "accesslog": None,
            "child_exit": child_exit,
            **self.extra,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from inferbox.api.app import create_asgi

        configure_logging("api", self.settings.log_level, self.settings.log_format)
        app = create_asgi(self.settings)
        heap.settle()
        return app
