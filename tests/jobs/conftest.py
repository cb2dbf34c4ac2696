"""An appliance tuned for job tests: short leases and a fast reconciler, a webhook secret."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from inferbox.testing import onnx_models
from tests.conftest import running_appliance, wait_for

WEBHOOK_SECRET = "test-webhook-secret"
SLOW_WIDTH = 128
TERMINAL = ("succeeded", "failed", "cancelled", "expired")

# Short enough that the crash and redelivery tests take seconds, long enough to renew under load.
JOB_ENV = {
    "INFERBOX_JOBS_LEASE_S": "3",
    # One job at a time per worker, so a test can keep a job queued behind another.
    "INFERBOX_JOBS_THREADS": "1",
    "INFERBOX_JOBS_RECONCILE_S": "0.5",
    "INFERBOX_JOBS_REQUEUE_AFTER_S": "2",
    "INFERBOX_JOBS_WEBHOOK_SECRET": WEBHOOK_SECRET,
    # The tests' webhook receiver listens on 127.0.0.1.
    "INFERBOX_JOBS_WEBHOOK_ALLOW_PRIVATE": "true",
    "INFERBOX_WORKER_CAPACITY_SWEEP_S": "0",
}


@pytest.fixture(scope="session")
def jobs_repo(tmp_path_factory) -> Path:
    """The models job tests use; ``slow`` takes about a second per 1024 rows."""
    root = tmp_path_factory.mktemp("jobs-models")
    onnx_models.mlp(root / "mlp" / "1" / "model.onnx")
    onnx_models.add_sub(root / "add_sub" / "1" / "model.onnx")
    onnx_models.fixed_shape(root / "fixed" / "1" / "model.onnx")
    onnx_models.identity_all_types(root / "strings" / "1" / "model.onnx", types=["BYTES"])
    onnx_models.slow(root / "slow" / "1" / "model.onnx", size=SLOW_WIDTH, repeats=1000)
    (root / "slow" / "inferbox.json").write_text('{"max_batch_size": 1024, "instance_count": 1}')
    return root


@pytest.fixture(scope="session")
def jobs_appliance(redis_client, jobs_repo, tmp_path_factory, make_database, s3_endpoint):
    """API and one worker (job lane on) serving the job test models."""
    with running_appliance(
        redis_client,
        tmp_path_factory,
        make_database(),
        s3_endpoint,
        jobs_repo,
        ready=("mlp", "add_sub", "fixed", "slow", "strings"),
        **JOB_ENV,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def jobs_http(jobs_appliance) -> httpx.Client:
    """HTTP client to the jobs appliance with the admin key."""
    with httpx.Client(
        base_url=jobs_appliance.url, timeout=30, headers=jobs_appliance.headers
    ) as client:
        yield client


def wait_job(http: httpx.Client, job_id: str, timeout: float = 60, states=TERMINAL) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job is in one of ``states``; its last view."""
    seen: dict = {}

    def done():
        response = http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return seen["state"] in states

    try:
        wait_for(done, timeout, f"job {job_id} to reach {states}", interval=0.1)
    except AssertionError:
        raise AssertionError(f"job {job_id} stuck: {seen}") from None
    return seen


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
