"""Settings of the API and gRPC servers: where they listen and how many processes serve."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class ApiSettings(SettingsGroup):
    """API and gRPC servers.

    Where they listen, how many processes serve, how many large bodies each decodes at once and
    how long it trusts what it has read of the catalog."""

    api_bind: str = "127.0.0.1:8000"
    """Address gunicorn listens on (``host:port``); nginx is the only public door."""

    api_workers: int = Field(default=2, ge=1)
    """Number of gunicorn (uvicorn) worker processes."""

    grpc_bind: str = "127.0.0.1:8001"
    """Address ``inferbox grpc`` (the Open Inference Protocol over gRPC) listens on
    (``host:port``, plaintext HTTP/2); nginx passes gRPC calls on the HTTPS port to it."""

    grpc_processes: int = Field(default=1, ge=1, le=64)
    """gRPC server processes sharing ``grpc_bind`` (``SO_REUSEPORT``); each serves about what
    one core can."""

    grpc_metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the gRPC server's own ``/metrics`` (the API's request metrics, for its calls);
    0: none."""

    grpc_metrics_host: str = "127.0.0.1"
    """Address that port listens on (``0.0.0.0`` in the appliance, for Prometheus)."""

    max_concurrent_decodes: int = Field(default=1, gt=0)
    """Large request bodies (256 KiB and up) decoded at once per API process, each in a thread
    so the event loop keeps serving; more wait their turn (this bounds their memory too)."""

    status_cache_s: float = Field(default=0.5, ge=0)
    """How long an API process trusts its cached copy of a model's catalog entry and readiness."""
