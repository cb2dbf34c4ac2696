"""``inferbox grpc``: one gRPC server process, or several sharing one port.

grpcio's Python server answers a call with about a core's worth of work in its own threads and
the process's event loop (docs/benchmarks.md), so one process serves what one core can. With
``INFERBOX_GRPC_PROCESSES`` above 1 this process starts that many server processes (spawned,
never forked: grpcio does not survive ``fork()``), each listening on ``INFERBOX_GRPC_BIND`` with
``SO_REUSEPORT`` so the kernel spreads connections over them, as gunicorn's workers share the
HTTP port. Their metrics are merged with prometheus-client's multiprocess mode and served by
this process on ``INFERBOX_GRPC_METRICS_PORT``. When one server process dies the others are
stopped and this one exits non-zero, for the supervisor (compose) to restart the whole group.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess

import structlog

from inferbox.config import Settings
from inferbox.logs import configure_logging
from inferbox.observability.exposition import MULTIPROC_ENV, prepare_multiprocess_dir

log = structlog.get_logger(__name__)


def _serve(reuse_port: bool) -> None:
    """One server process (its settings read from the environment, as the parent's were)."""
    import uvloop

    from inferbox.grpc.server import serve

    settings = Settings()
    configure_logging("grpc", settings.log_level, settings.log_format)
    # grpc.aio runs on uvloop: a third more calls per second than on asyncio's own loop here.
    uvloop.run(serve(settings, reuse_port=reuse_port))


def _metrics(settings: Settings) -> None:
    if not settings.grpc_metrics_port:
        return
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(
        settings.grpc_metrics_port, addr=settings.grpc_metrics_host, registry=registry
    )


def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT (one process), or supervise ``grpc_processes`` of them."""
    count = settings.grpc_processes
    if count <= 1:
        # One process: its metrics live in memory.
        os.environ.pop(MULTIPROC_ENV, None)
        _metrics(settings)
        _serve(reuse_port=False)
        return
    prepare_multiprocess_dir()  # before any child imports prometheus_client
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve, args=(True,), name=f"grpc-{i}") for i in range(count)
    ]
    for child in children:
        child.start()
    _metrics(settings)
    log.info("grpc server processes started", count=count, pids=[c.pid for c in children])
    stop = _StopSignals()
    while not stop.received and all(child.is_alive() for child in children):
        time.sleep(0.2)
    failed = [child for child in children if not child.is_alive()]
    _stop_all(children)
    if failed and not stop.received:
        log.error(
            "a grpc server process exited; stopping the others",
            pid=failed[0].pid,
            exit_code=failed[0].exitcode,
        )
        sys.exit(1)


class _StopSignals:
    """Catches SIGTERM and SIGINT from its creation on; ``received`` once either arrived (also
    while the server processes are being stopped: a stop asked for is no failure)."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._receive)
        signal.signal(signal.SIGINT, self._receive)

    def _receive(self, _signum, _frame) -> None:
        self.received = True


def _stop_all(children: list[BaseProcess]) -> None:
    """Stop every server process (killed when still alive 10 s later) and mark each dead for
    the merged metrics (its live gauges leave them)."""
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    from prometheus_client import multiprocess

    for child in children:
        multiprocess.mark_process_dead(child.pid)
