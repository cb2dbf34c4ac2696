"""Nothing accepted is lost: a worker killed mid-job, Redis losing the queue, and interactive
calls going first while a job runs."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psycopg
import pytest

from tests.jobs.test_lifecycle import X, _job_objects
from tests.support.appliance import running_appliance
from tests.support.jobs import JOB_ENV, SLOW_WIDTH, long_job_body, slow_body, wait_job
from tests.support.processes import start_inferbox, stop_process
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def bare(redis_client, jobs_repo, tmp_path_factory, make_database, s3_endpoint):
    """An appliance whose own worker serves models but runs no jobs: the tests start (and
    kill) the job-running workers themselves."""
    with (
        running_appliance(
            redis_client,
            tmp_path_factory,
            make_database(),
            s3_endpoint,
            jobs_repo,
            ready=("mlp", "slow"),
            **{**JOB_ENV, "INFERBOX_JOBS_ENABLED": "false"},
        ) as running,
        httpx.Client(base_url=running.url, timeout=30, headers=running.headers) as http,
    ):
        yield running, http


def _job_worker(appliance, name: str, tmp_path, **extra: str):
    env = {
        **appliance.env,
        **extra,
        "INFERBOX_JOBS_ENABLED": "true",
        "INFERBOX_WORKER_ID": name,
        "INFERBOX_WORKER_METRICS_PORT": "0",
    }
    return start_inferbox(["worker"], env, tmp_path / f"{name}.log")


def _ledger(appliance, job_ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(appliance.env["INFERBOX_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT id::text, state, attempts, lease_owner, result_key FROM jobs"
            " WHERE id::text = ANY(%s)",
            (job_ids,),
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_a_worker_killed_mid_job_loses_nothing(bare, tmp_path):
    appliance, http = bare
    workers = {name: _job_worker(appliance, name, tmp_path) for name in ("jobs-a", "jobs-b")}
    try:
        body, headers = long_job_body(http, 8)
        slow = [
            http.post("/v2/models/slow/jobs", content=body, headers=headers).json()["job_id"]
            for _ in range(2)
        ]
        quick = [http.post("/v2/models/mlp/jobs", json=X).json()["job_id"] for _ in range(10)]
        jobs = slow + quick

        def victim_job():
            for job_id, (state, _, owner, _) in _ledger(appliance, slow).items():
                if (
                    state == "running"
                    and owner in workers
                    and http.get(f"/v1/jobs/{job_id}").json()["progress"] > 0
                ):
                    return job_id, owner
            return None

        victim_id, victim = wait_for(victim_job, 60, "a slow job to make progress")
        os.kill(workers[victim].pid, signal.SIGKILL)
        assert _ledger(appliance, [victim_id])[victim_id][0] == "running"
        killed_at = time.monotonic()
        for job_id in jobs:
            job = wait_job(http, job_id, timeout=90)
            assert job["state"] == "succeeded", job
        # Retried by the live worker well within the promised bound (60 s).
        assert time.monotonic() - killed_at < 60
        ledger = _ledger(appliance, jobs)
        assert ledger[victim_id][1] == 2  # its first run died with the worker
        for job_id, (state, _, _, result_key) in ledger.items():
            assert state == "succeeded"
            # Exactly one recorded result per job, and it is stored.
            assert result_key in _job_objects(appliance, job_id)
            assert http.get(f"/v1/jobs/{job_id}/result").status_code == 200
    finally:
        for proc in workers.values():
            stop_process(proc)


def test_jobs_survive_redis_losing_the_queue(bare, tmp_path):
    appliance, http = bare
    # No job worker runs: the jobs wait on the RQ queue.
    jobs = [http.post("/v2/models/mlp/jobs", json=X).json()["job_id"] for _ in range(5)]
    redis = appliance.redis
    queue = f"rq:queue:{appliance.keys.prefix}.jobs"
    assert redis.llen(queue) == 5
    # Redis loses everything of ours (a restart without persistence, a flush).
    doomed = [queue, *redis.scan_iter(f"{appliance.keys.prefix}:*")]
    for transport_id in redis.lrange(queue, 0, -1):
        doomed.append(f"rq:job:{transport_id.decode()}")
    redis.delete(*doomed)
    assert redis.llen(queue) == 0
    worker = _job_worker(appliance, "jobs-c", tmp_path)
    try:
        for job_id in jobs:
            job = wait_job(http, job_id, timeout=60)
            assert job["state"] == "succeeded" and job["attempts"] == 1, job
    finally:
        stop_process(worker)


def test_a_delivery_taken_by_a_worker_that_died_is_made_again(bare, tmp_path):
    appliance, http = bare
    job_id = http.post("/v2/models/mlp/jobs", json=X).json()["job_id"]
    redis = appliance.redis
    queue = f"rq:queue:{appliance.keys.prefix}.jobs"
    (transport_id,) = [
        t.decode() for t in redis.lrange(queue, 0, -1) if t.decode().startswith(job_id)
    ]
    # A worker popped the delivery and died before RQ marked it started: RQ still says queued.
    assert redis.lrem(queue, 1, transport_id) == 1
    assert redis.hget(f"rq:job:{transport_id}", "status") == b"queued"
    worker = _job_worker(appliance, "jobs-h", tmp_path)
    try:
        job = wait_job(http, job_id, timeout=60)
        assert job["state"] == "succeeded" and job["attempts"] == 1, job
    finally:
        stop_process(worker)


def test_a_stopping_worker_hands_its_job_back(bare, tmp_path):
    appliance, http = bare
    first = _job_worker(appliance, "jobs-d", tmp_path)
    body, headers = long_job_body(http, 6)
    job_id = http.post("/v2/models/slow/jobs", content=body, headers=headers).json()["job_id"]
    wait_job(http, job_id, states=("running",))
    stop_process(first)  # SIGTERM: the job goes back to the queue, its attempt not counted
    assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    second = _job_worker(appliance, "jobs-e", tmp_path)
    try:
        job = wait_job(http, job_id, timeout=60)
        assert job["state"] == "succeeded" and job["attempts"] == 1, job
    finally:
        stop_process(second)


def test_interactive_calls_go_before_job_chunks(bare, tmp_path):
    appliance, http = bare
    body, headers = slow_body(1024)
    started = time.monotonic()
    assert http.post("/v2/models/slow/infer", content=body, headers=headers).status_code == 200
    batch_s = time.monotonic() - started
    worker = _job_worker(appliance, "jobs-f", tmp_path)
    try:
        big, big_headers = long_job_body(http, 12, least_chunks=12)
        job_id = http.post("/v2/models/slow/jobs", content=big, headers=big_headers).json()[
            "job_id"
        ]
        wait_for(
            lambda: appliance.redis.xlen(appliance.keys.stream("slow", 1, "lo")) >= 3,
            60,
            "job chunks to queue up",
        )
        started = time.monotonic()
        small = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, SLOW_WIDTH],
                    "data": [0.0] * SLOW_WIDTH,
                }
            ]
        }
        assert http.post("/v2/models/slow/infer", json=small).status_code == 200
        waited = time.monotonic() - started
        # Behind the queued chunks it would wait three batches or more; first in line, at
        # most the batch already running.
        assert waited < 2 * batch_s + 0.5, (waited, batch_s)
        http.delete(f"/v1/jobs/{job_id}")
    finally:
        stop_process(worker)


def test_a_short_job_does_not_wait_for_a_long_one(bare, tmp_path):
    appliance, http = bare
    worker = _job_worker(appliance, "jobs-g", tmp_path, INFERBOX_JOBS_THREADS="2")
    try:
        body, headers = long_job_body(http, 8)
        long_id = http.post("/v2/models/slow/jobs", content=body, headers=headers).json()["job_id"]
        wait_job(http, long_id, states=("running",))
        short_id = http.post("/v2/models/mlp/jobs", json=X).json()["job_id"]
        assert wait_job(http, short_id, timeout=30)["state"] == "succeeded"
        assert http.get(f"/v1/jobs/{long_id}").json()["state"] == "running"
        assert wait_job(http, long_id, timeout=90)["state"] == "succeeded"
    finally:
        stop_process(worker)
