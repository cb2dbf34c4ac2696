"""Async jobs through a fault: what was accepted must end, once, with its result.

A probe submits jobs before the fault and while it lasts (a submission refused during the fault
must be a planned 503, never a 5xx of another kind), then, after the repair, waits for every
accepted job to end and checks the ledger: each ended ``succeeded`` exactly once with one
recorded result, which the API serves.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import psycopg

JOB_BOUND_S = 60.0
"""Every accepted job ends within this long of the repair (lease + redelivery + running)."""


def _body() -> dict:
    rows = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [512, 64], "data": rows.ravel().tolist()}
    return {"inputs": [tensor]}


class JobProbe:
    """Submits jobs around a fault and checks what became of them."""

    def __init__(self, client: httpx.Client, conninfo: str):
        self.client = client
        self.conninfo = conninfo
        self.accepted: list[str] = []
        self.refused: dict[int, int] = {}
        self.body = _body()

    def submit(self, count: int) -> None:
        """Submit ``count`` jobs (512 rows of mlp each: eight chunks); note what was answered."""
        for _ in range(count):
            try:
                response = self.client.post("/v2/models/mlp/jobs", json=self.body, timeout=15)
            except httpx.HTTPError:
                self.refused[-1] = self.refused.get(-1, 0) + 1
                continue
            if response.status_code == 202:
                self.accepted.append(response.json()["job_id"])
            else:
                self.refused[response.status_code] = self.refused.get(response.status_code, 0) + 1

    def settle(self) -> dict:
        """Wait for every accepted job to end; check each ended once with one result."""
        deadline = time.monotonic() + JOB_BOUND_S
        started = time.monotonic()
        rows: dict[str, tuple] = {}
        while time.monotonic() < deadline:
            rows = self._ledger()
            if all(rows.get(j, ("queued",))[0] not in ("queued", "running") for j in self.accepted):
                break
            time.sleep(0.5)
        waited = time.monotonic() - started
        assert set(rows) == set(self.accepted), "an accepted job has no row"
        open_jobs = {j: r for j, r in rows.items() if r[0] in ("queued", "running")}
        assert not open_jobs, f"jobs not ended {JOB_BOUND_S} s after the repair: {open_jobs}"
        for job_id, (state, attempts, result_key, error) in rows.items():
            assert state == "succeeded", (job_id, state, attempts, error)
            assert result_key is not None
            response = self._result(job_id)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["shape"] == [512, 10]
        refused_unplanned = {k: v for k, v in self.refused.items() if k not in (503, 504, -1)}
        assert not refused_unplanned, f"job submissions answered {refused_unplanned}"
        return {
            "jobs_accepted": len(self.accepted),
            "jobs_refused": {str(k): v for k, v in self.refused.items()},
            "jobs_retried": sum(1 for r in rows.values() if r[1] > 1),
            "jobs_ended_after_s": round(waited, 2),
        }

    def _result(self, job_id: str) -> httpx.Response:
        # Right after a repair the API may still answer a planned 503 for a moment.
        deadline = time.monotonic() + 15
        while True:
            response = self.client.get(f"/v1/jobs/{job_id}/result", timeout=15)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(0.5)

    def _ledger(self) -> dict[str, tuple]:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=3) as conn:
                found = conn.execute(
                    "SELECT id::text, state, attempts, result_key, error FROM jobs"
                    " WHERE id::text = ANY(%s)",
                    (self.accepted,),
                ).fetchall()
        except psycopg.OperationalError:
            return {}
        return {row[0]: row[1:] for row in found}
