"""An appliance serving the Triton repository of ``tests/triton/repository.py``, imported as a
Triton user would (``inferbox models import``), with the gRPC server beside the HTTP API."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.support.appliance import running_appliance
from tests.support.gateway import make_certs, running_gateway
from tests.support.processes import free_port, run_cli, start_inferbox, stop_process
from tests.support.triton import SERVED, TritonAppliance
from tests.support.waiting import wait_for
from tests.triton.repository import write_triton_repository


@pytest.fixture(scope="session")
def gateway_certs(tmp_path_factory) -> Path:
    """Certificates for nginx in front of the Triton appliance (as ``tests/gateway`` makes)."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def triton_gateway(triton_appliance, tmp_path_factory, gateway_certs):
    """nginx in front of the Triton appliance: HTTPS and gRPC (HTTP/2) on one TLS port."""
    upstream = triton_appliance.appliance.url.removeprefix("http://")
    with running_gateway(
        upstream,
        tmp_path_factory.mktemp("grpc-gateway"),
        gateway_certs,
        grpc_upstream=triton_appliance.grpc_url,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory):
    return write_triton_repository(tmp_path_factory.mktemp("triton-repo"))


@pytest.fixture(scope="session")
def triton_appliance(
    redis_client, tmp_path_factory, make_database, s3_endpoint, triton_repo, cache_redis
):
    with running_appliance(
        redis_client,
        tmp_path_factory,
        make_database(),
        s3_endpoint,
        None,
        INFERBOX_CACHE_URL=cache_redis.url,
    ) as appliance:
        report = run_cli(["models", "import", str(triton_repo)], appliance.env)
        grpc_port, metrics_port = free_port(), free_port()
        env = {
            **appliance.env,
            "INFERBOX_GRPC_BIND": f"127.0.0.1:{grpc_port}",
            "INFERBOX_GRPC_METRICS_PORT": str(metrics_port),
            # Two server processes on one port, their metrics merged (as in the appliance).
            "INFERBOX_GRPC_PROCESSES": "2",
        }
        grpc_proc = start_inferbox(["grpc"], env, appliance.logs / "grpc.log")
        auth = appliance.headers

        def ready():
            assert grpc_proc.poll() is None, f"the gRPC server exited; logs in {appliance.logs}"
            try:
                socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
            except OSError:
                return False
            return all(
                httpx.get(f"{appliance.url}/v2/models/{name}/ready", headers=auth).status_code
                == 200
                for name in SERVED
            )

        try:
            wait_for(ready, 60, "the Triton repository's models to be ready", interval=0.2)
            yield TritonAppliance(
                appliance,
                f"127.0.0.1:{grpc_port}",
                report,
                triton_repo,
                f"http://127.0.0.1:{metrics_port}/metrics",
            )
        finally:
            grpc_proc.terminate()
            stop_process(grpc_proc)
