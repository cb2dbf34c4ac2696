"""The ``inferbox`` command: run the API or a worker, and manage the model catalog."""

from __future__ import annotations

import os
from pathlib import Path

import click
import redis

from inferbox.config import Settings
from inferbox.keys import Keys
from inferbox.logs import configure_logging


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """inferbox: ONNX models over the KServe V2 protocol, batched on resident workers."""
    ctx.obj = Settings()


@main.command()
@click.pass_obj
def api(settings: Settings) -> None:
    """Serve the HTTP API (gunicorn with uvicorn workers) on INFERBOX_API_BIND."""
    from inferbox.api.server import ApiServer

    configure_logging("api", settings.log_level, settings.log_format)
    ApiServer(settings).run()


@main.command()
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run a worker: load the catalog's models and serve their queues."""
    from inferbox.worker.main import Worker

    configure_logging("worker", settings.log_level, settings.log_format)
    # A worker is one process: its metrics live in memory even if the API's multiprocess
    # directory is set in a shared environment.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = Worker(settings)
    if settings.worker_metrics_port:
        from prometheus_client import REGISTRY, start_http_server

        from inferbox.observability.collectors import WorkerCollector
        from inferbox.observability.gpu import gpu_collector

        REGISTRY.register(WorkerCollector(worker))
        gpu = gpu_collector()
        if gpu is not None:
            REGISTRY.register(gpu)
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    worker.run()


@main.group()
def models() -> None:
    """The model catalog."""


@models.command("import")
@click.argument(
    "root", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.pass_obj
def import_models(settings: Settings, root: Path | None) -> None:
    """Import a Triton-layout repository (default: INFERBOX_MODEL_REPOSITORY)."""
    from inferbox.models.catalog import put_specs
    from inferbox.models.repository import scan_repository

    root = root or settings.model_repository
    if root is None:
        raise click.UsageError("give a folder or set INFERBOX_MODEL_REPOSITORY")
    configure_logging("cli", settings.log_level, "console")
    specs = scan_repository(
        root,
        max_batch_size=settings.default_max_batch_size,
        max_queue_size=settings.default_max_queue_size,
    )
    client = redis.Redis.from_url(settings.redis_url)
    if specs:
        put_specs(client, Keys(settings.key_prefix), specs)
    for spec in specs:
        state = f"error: {spec.error}" if spec.error else "ok"
        click.echo(f"{spec.name}/{spec.version}\t{state}")
    click.echo(f"imported {len(specs)} model version(s) from {root}")


if __name__ == "__main__":
    main()
