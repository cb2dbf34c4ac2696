"""``inferbox jobs ...`` against the running appliance, as a user would type it."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.paths import INFERBOX
from tests.support.processes import run_cli

pytestmark = pytest.mark.integration


def _env(appliance) -> dict[str, str]:
    return {**appliance.env, "INFERBOX_URL": appliance.url}


def test_submit_wait_result_with_a_file(jobs_appliance, tmp_path):
    env = _env(jobs_appliance)
    x = np.random.default_rng(9).standard_normal((500, 64)).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    done = subprocess.run(
        [INFERBOX, "jobs", "submit", "mlp", "--file", str(tmp_path / "rows.npy"), "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["rows_done"] == 500
    assert "uploaded 500 rows" in done.stderr and f"job {job['id'][:8]}" in done.stderr
    run_cli(["jobs", "result", job["id"], "--out", str(tmp_path / "out.npz")], env)
    with np.load(tmp_path / "out.npz") as out:
        session = ort.InferenceSession(str(jobs_appliance.model_repo / "mlp/1/model.onnx"))
        np.testing.assert_allclose(out["y"], session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
    listing = run_cli(["jobs", "ls", "--model", "mlp", "--state", "succeeded"], env)
    assert job["id"] in listing and "100%" in listing
    status = json.loads(run_cli(["jobs", "status", job["id"]], env))
    assert status["state"] == "succeeded"


def test_submit_inputs_then_wait_and_cancel(jobs_appliance, tmp_path):
    env = _env(jobs_appliance)
    np.save(tmp_path / "x.npy", np.ones((2, 64), np.float32))
    accepted = json.loads(
        run_cli(
            [
                "jobs",
                "submit",
                "mlp",
                "--input",
                f"x={tmp_path / 'x.npy'}",
                "--idempotency-key",
                "cli-1",
                "--retention",
                "1h",
            ],
            env,
        )
    )
    again = json.loads(
        run_cli(
            [
                "jobs",
                "submit",
                "mlp",
                "--input",
                f"x={tmp_path / 'x.npy'}",
                "--idempotency-key",
                "cli-1",
            ],
            env,
        )
    )
    assert again["job_id"] == accepted["job_id"]
    job = json.loads(run_cli(["jobs", "wait", accepted["job_id"], "--timeout", "60s"], env))
    assert job["state"] == "succeeded"
    result = json.loads(run_cli(["jobs", "result", accepted["job_id"]], env))
    assert result["y"]["shape"] == [2, 10]
    # Cancelling a finished job is refused, with the reason.
    done = subprocess.run(
        [INFERBOX, "jobs", "cancel", accepted["job_id"]], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "409" in done.stderr and "already succeeded" in done.stderr
    done = subprocess.run(
        [INFERBOX, "jobs", "submit", "mlp"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "give --input" in done.stderr
