"""``inferbox webhooks``, the webhook sender on its own: two of them against one real ledger,
with the sender's own database role, a slow receiver and a fast one."""

from __future__ import annotations

import http.server
import os
import threading
import time
import uuid

import httpx
import psycopg
import pytest

from inferbox.jobs.store import JobStore, NewJob
from inferbox.jobs.webhooks import signature
from inferbox.registry.migrate import migrate_sync
from inferbox.registry.roles import apply_app_role
from inferbox.registry.store import create_pool
from tests.support.jobs import WEBHOOK_SECRET
from tests.support.processes import free_port, start_inferbox, stop_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SLOW_S = 4.0


@pytest.fixture
def ledger(make_database):
    """A migrated database (the owner's conninfo) and a role made for the webhook sender."""
    owner = make_database()
    migrate_sync(owner)
    role = f"ibwebhooks_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    apply_app_role(owner, role, password, "webhooks")
    yield owner, f"{owner} user={role} password={password}"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def receiver():
    """A receiver on 127.0.0.1: ``/slow/...`` answers after ``SLOW_S``, anything else at once.
    Yields its port and every request as (path, headers, body, arrived, answered)."""
    seen: list[tuple[str, dict, bytes, float, float]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            arrived = time.monotonic()
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/slow/"):
                time.sleep(SLOW_S)
            with lock:
                seen.append((self.path, dict(self.headers), body, arrived, time.monotonic()))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


async def _finished_jobs(owner: str, urls: list[str]) -> list[str]:
    """Jobs that ended (failed while queued), each with a webhook due now, in ``urls`` order."""
    ids = []
    async with create_pool(owner, max_size=1) as pool:
        store = JobStore(pool)
        for url in urls:
            job, _ = await store.create(
                NewJob(
                    id=uuid.uuid4(),
                    model="m",
                    version=1,
                    kind="request",
                    input_key="k",
                    max_attempts=1,
                    webhook_url=url,
                    retention_s=600,
                )
            )
            assert await store.fail(job.id, None, "given up")
            ids.append(str(job.id))
    return ids


def _sender_env(conninfo: str, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBOX_")}
    return {
        **env,
        "INFERBOX_DATABASE_URL": conninfo,
        "INFERBOX_JOBS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # The receiver listens on 127.0.0.1.
        "INFERBOX_JOBS_WEBHOOK_ALLOW_PRIVATE": "true",
        "INFERBOX_JOBS_WEBHOOK_CONCURRENCY": "4",
        "INFERBOX_JOBS_RECONCILE_S": "0.2",
        "INFERBOX_WORKER_METRICS_PORT": str(metrics_port),
        "INFERBOX_LOG_FORMAT": "console",
    }


def _delivered_count(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith('inferbox_job_webhooks_total{outcome="delivered"}'):
            return float(line.split()[-1])
    return -1


async def test_separate_senders_deliver_each_webhook_once_and_slow_receivers_hold_no_one(
    ledger, receiver, tmp_path
):
    owner, conninfo = ledger
    port, seen = receiver
    slow = await _finished_jobs(owner, [f"http://127.0.0.1:{port}/slow/{i}" for i in range(3)])
    fast = await _finished_jobs(owner, [f"http://127.0.0.1:{port}/fast/{i}" for i in range(20)])
    ports = [free_port(), free_port()]
    senders = [
        start_inferbox(["webhooks"], _sender_env(conninfo, p), tmp_path / f"webhooks{i}.log")
        for i, p in enumerate(ports)
    ]
    try:
        wait_for(lambda: len(seen) == 23, 30, "every webhook to be delivered")
        # Each sender has 4 slots: the 3 slow receivers hold 3 of them (the oldest jobs are
        # claimed first), and the 20 fast ones went through the others before any slow answer.
        slow_answers = [answered for path, *_, answered in seen if path.startswith("/slow/")]
        fast_arrivals = [arrived for path, _, _, arrived, _ in seen if path.startswith("/fast/")]
        assert max(fast_arrivals) < min(slow_answers)
        # Two senders on one ledger: every job announced once, signed.
        announced = [body for *_, body, _, _ in seen]
        assert sorted(p for p, *_ in seen) == sorted(
            [f"/slow/{i}" for i in range(3)] + [f"/fast/{i}" for i in range(20)]
        )
        for job_id in slow + fast:
            assert sum(job_id.encode() in body for body in announced) == 1, job_id
        for _, headers, body, _, _ in seen:
            expected = signature(WEBHOOK_SECRET, headers["X-Inferbox-Timestamp"], body)
            assert headers["X-Inferbox-Signature"] == expected
        # Recorded by the senders (as their own role), counted on their /metrics.
        with psycopg.connect(owner, autocommit=True) as conn:

            def outcomes() -> list[tuple]:
                query = "SELECT webhook_state, webhook_attempts, count(*) FROM jobs GROUP BY 1, 2"
                return conn.execute(query).fetchall()

            wait_for(lambda: outcomes() == [("delivered", 1, 23)], 10, "the outcomes recorded")
        wait_for(lambda: sum(_delivered_count(p) for p in ports) == 23, 10, "both senders' metrics")
    finally:
        for proc in senders:
            stop_process(proc)
    assert [proc.returncode for proc in senders] == [0, 0], [
        (tmp_path / f"webhooks{i}.log").read_text() for i in range(2)
    ]
