"""An appliance tuned for job tests: short leases and a fast reconciler, a webhook secret."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from inferbox.testing import onnx_models
from tests.support.appliance import running_appliance
from tests.support.jobs import JOB_ENV, SLOW_WIDTH


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
