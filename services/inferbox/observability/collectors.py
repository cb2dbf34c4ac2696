"""Worker values read at scrape time rather than kept up to date on the hot path.

``WorkerCollector`` reports, for a running ``Worker``: which device it runs on, how many calls
wait in each queue it serves (``XLEN``: queued plus running, as the API's queue limit counts),
the bytes of the model files it holds resident, and the free space where it caches models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis
import structlog
from prometheus_client.core import GaugeMetricFamily

from inferbox.keys import LANES

log = structlog.get_logger(__name__)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the cache folder appears with the first model)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class WorkerCollector:
    """A prometheus-client collector over one worker process (a ``CatalogFollower``, local or
    on Ray: its id, its host's device and servers, its Redis client)."""

    def __init__(self, worker) -> None:
        self.worker = worker

    def collect(self):
        worker = self.worker
        info = GaugeMetricFamily(
            "inferbox_worker_info",
            "This worker's id and device (always 1).",
            labels=["worker", "device"],
        )
        info.add_metric([worker.id, str(worker.host.device)], 1)
        yield info

        served = [(key, server.spec) for key, server in list(worker.host.servers.items())]
        depth = GaugeMetricFamily(
            "inferbox_queue_depth",
            "Calls queued or running per served model version and lane (hi, lo).",
            labels=["model", "version", "lane"],
        )
        try:
            pipe = worker.client.pipeline(transaction=False)
            for (name, version), _ in served:
                for lane in LANES:
                    pipe.xlen(worker.keys.stream(name, version, lane))
            lengths = iter(pipe.execute())
            for (name, version), _ in served:
                for lane in LANES:
                    depth.add_metric([name, str(version), lane], next(lengths))
        except redis.RedisError as exc:
            log.warning("queue depth unavailable", error=str(exc))
        yield depth

        resident = GaugeMetricFamily(
            "inferbox_model_bytes",
            "Size of the model file of each version loaded in this worker.",
            labels=["model", "version"],
        )
        for (name, version), spec in served:
            resident.add_metric([name, str(version)], spec.size)
        yield resident

        path = _existing(Path(worker.settings.worker_cache_dir))
        usage = shutil.disk_usage(path)
        free = GaugeMetricFamily(
            "inferbox_disk_free_bytes",
            "Free bytes on the worker's model cache disk.",
            labels=["path"],
        )
        free.add_metric([str(path)], usage.free)
        yield free
        size = GaugeMetricFamily(
            "inferbox_disk_size_bytes", "Size of the worker's model cache disk.", labels=["path"]
        )
        size.add_metric([str(path)], usage.total)
        yield size
