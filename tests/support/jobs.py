"""Job tests' helpers: the tuned settings, waiting for a job, slow-model bodies of a length."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import tritonclient.http as triton_http

from tests.support.waiting import wait_for

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


def slow_body(rows: int) -> tuple[bytes, dict]:
    """A binary ``/infer`` (or job) body of ``rows`` rows for the slow model, and its headers."""
    x = np.full((rows, SLOW_WIDTH), 0.01, np.float32)
    tensor = triton_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    out = triton_http.InferRequestedOutput("y", binary_data=True)
    body, size = triton_http.InferenceServerClient.generate_request_body([tensor], outputs=[out])
    return body, {"Inference-Header-Content-Length": str(size)}


_CHUNK_S: dict[str, float] = {}


def chunk_seconds(http: httpx.Client) -> float:
    """Seconds one full chunk (1024 rows) of the slow model takes on this machine, measured once
    per appliance: tests that must catch a job mid-run size it by this, not by a guess."""
    key = str(http.base_url)
    if key not in _CHUNK_S:
        body, headers = slow_body(1024)
        timings = []
        for _ in range(2):  # the first call may pay for a warm-up
            started = time.monotonic()
            response = http.post("/v2/models/slow/infer", content=body, headers=headers)
            assert response.status_code == 200, response.text
            timings.append(time.monotonic() - started)
        _CHUNK_S[key] = max(min(timings), 0.02)
    return _CHUNK_S[key]


def long_job_body(http: httpx.Client, seconds: float, least_chunks: int = 4) -> tuple[bytes, dict]:
    """A slow-model job body that takes about ``seconds`` to run here (at least
    ``least_chunks`` chunks), so a test can act on it while it runs on any machine."""
    chunks = max(least_chunks, math.ceil(seconds / chunk_seconds(http)))
    return slow_body(chunks * 1024)
