"""The serving processes: ``inferbox api``, ``grpc``, ``worker``, ``ray-worker`` and
``webhooks``."""

from __future__ import annotations

import os

import click

from inferbox.config import Settings
from inferbox.logs import configure_logging


@click.command("api")
@click.pass_obj
def api(settings: Settings) -> None:
    """Serve the HTTP API (gunicorn with uvicorn workers) on INFERBOX_API_BIND."""
    from inferbox.api.server import ApiServer

    configure_logging("api", settings.log_level, settings.log_format)
    ApiServer(settings).run()


@click.command("grpc")
@click.pass_obj
def grpc_server(settings: Settings) -> None:
    """Serve the Open Inference Protocol over gRPC on INFERBOX_GRPC_BIND."""
    from inferbox.grpc.processes import run

    configure_logging("grpc", settings.log_level, settings.log_format)
    run(settings)


@click.command("worker")
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run a worker: load the catalog's models and serve their queues."""
    from inferbox.worker.main import local_worker

    configure_logging("worker", settings.log_level, settings.log_format)
    # A worker is one process: its metrics live in memory even if the API's multiprocess
    # directory is set in a shared environment.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from inferbox.registry.wiring import object_store
    from inferbox.worker.runtime import CudaUnavailable

    try:
        running = local_worker(settings, objects=object_store(settings))
    except CudaUnavailable as exc:
        # Before the metrics port opens: the container exits and its healthcheck never passes.
        raise click.ClickException(str(exc)) from None
    _serve_metrics(settings, running, gpu=True)
    running.run()


@click.command("ray-worker")
@click.pass_obj
def ray_worker(settings: Settings) -> None:
    """Run the Ray worker: serve the queues with sessions held by Ray actors.

    Joins the cluster at INFERBOX_RAY_ADDRESS; actors reserve INFERBOX_RAY_ACTOR_GPUS GPUs
    each (0: CPU actors), between INFERBOX_RAY_MIN_ACTORS and INFERBOX_RAY_MAX_ACTORS.
    """
    # Imported here: Ray is an optional extra, and only this command needs it.
    from inferbox.registry.wiring import object_store
    from inferbox.scaleout import driver
    from inferbox.scaleout.settings import RaySettings

    configure_logging("ray-worker", settings.log_level, settings.log_format)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ray_settings = RaySettings()
    driver.connect(ray_settings)
    running = driver.ray_worker(settings, ray_settings, objects=object_store(settings))
    # The driver holds no GPU: its actors' GPUs are exported by the nodes' own workers.
    _serve_metrics(settings, running, gpu=False)
    running.run()


@click.command("webhooks")
@click.pass_obj
def webhooks(settings: Settings) -> None:
    """Deliver async jobs' completion webhooks, apart from the workers.

    Run it where webhooks may go out, with INFERBOX_JOBS_WEBHOOK_SENDER=separate on the workers
    (which then deliver none). Needs only INFERBOX_DATABASE_URL (a role made with ``inferbox db
    app-role --component webhooks``) and the webhook settings; its metrics are on
    INFERBOX_WORKER_METRICS_PORT (0: none).
    """
    import asyncio

    from inferbox.jobs.sender import serve

    configure_logging("webhooks", settings.log_level, settings.log_format)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    asyncio.run(serve(settings))


def _serve_metrics(settings: Settings, running, *, gpu: bool) -> None:
    """A worker's metrics on ``worker_metrics_port`` (none when 0): its own, the GPUs' with
    ``gpu``, and the response cache Redis's (memory, evictions) where there is one."""
    if not settings.worker_metrics_port:
        return
    from prometheus_client import REGISTRY, start_http_server

    from inferbox.observability.collectors import WorkerCollector
    from inferbox.observability.gpu import gpu_collector

    REGISTRY.register(WorkerCollector(running))
    devices = gpu_collector() if gpu else None
    if devices is not None:
        REGISTRY.register(devices)
    if settings.cache_url:
        from inferbox.observability.cache_metrics import CacheServerCollector

        REGISTRY.register(CacheServerCollector(settings.cache_url))
    start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
