"""``inferbox ray-worker``: the worker variant whose batches run on Ray actors."""

from __future__ import annotations

import os

import click

from inferbox.config import Settings
from inferbox.logs import configure_logging


def register(main: click.Group) -> None:
    """Add the ``ray-worker`` command to the ``inferbox`` CLI."""

    @main.command("ray-worker")
    @click.pass_obj
    def ray_worker(settings: Settings) -> None:
        """Run the Ray worker: serve the queues with sessions held by Ray actors.

        Joins the cluster at INFERBOX_RAY_ADDRESS; actors reserve INFERBOX_RAY_ACTOR_GPUS GPUs
        each (0: CPU actors), between INFERBOX_RAY_MIN_ACTORS and INFERBOX_RAY_MAX_ACTORS.
        """
        # Imported here: Ray is an optional extra, and only this command needs it.
        from inferbox.registry.wiring import object_store
        from inferbox.scaleout.driver import RayWorker, connect
        from inferbox.scaleout.settings import RaySettings

        configure_logging("ray-worker", settings.log_level, settings.log_format)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        ray_settings = RaySettings()
        connect(ray_settings)
        worker = RayWorker(settings, ray_settings, objects=object_store(settings))
        if settings.worker_metrics_port:
            from prometheus_client import REGISTRY, start_http_server

            from inferbox.observability.collectors import WorkerCollector

            REGISTRY.register(WorkerCollector(worker))
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        worker.run()
