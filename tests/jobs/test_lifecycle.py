"""Idempotency, cancellation, listing, ownership, webhooks, retention, and bad requests."""

from __future__ import annotations

import http.server
import threading
import time
import uuid

import httpx
import pytest

from inferbox.jobs.webhooks import signature
from inferbox.registry.objects import ObjectStore
from tests.support.jobs import WEBHOOK_SECRET, long_job_body, wait_job
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def _objects(appliance) -> ObjectStore:
    env = appliance.env
    return ObjectStore(
        env["INFERBOX_S3_ENDPOINT"],
        env["INFERBOX_S3_ACCESS_KEY"],
        env["INFERBOX_S3_SECRET_KEY"],
        env["INFERBOX_S3_BUCKET"],
        secure=False,
        region=env["INFERBOX_S3_REGION"],
    )


def _job_objects(appliance, job_id: str) -> list[str]:
    return [k for k in _objects(appliance).object_keys() if k.startswith(f"jobs/{job_id}/")]


def _client_with(appliance, scopes: list[str]) -> httpx.Client:
    response = httpx.post(
        f"{appliance.url}/v1/keys",
        json={"name": f"k-{uuid.uuid4().hex[:6]}", "scopes": scopes},
        headers=appliance.headers,
    )
    assert response.status_code == 201, response.text
    return httpx.Client(
        base_url=appliance.url,
        timeout=30,
        headers={"Authorization": f"Bearer {response.json()['key']}"},
    )


def test_idempotency_key_returns_the_same_job(jobs_appliance, jobs_http):
    key = f"order-{uuid.uuid4().hex}"
    first = jobs_http.post("/v2/models/mlp/jobs", json=X, headers={"Idempotency-Key": key})
    again = jobs_http.post("/v2/models/mlp/jobs", json=X, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    # The same Idempotency-Key from another API key is another job.
    with _client_with(jobs_appliance, ["jobs"]) as other:
        third = other.post("/v2/models/mlp/jobs", json=X, headers={"Idempotency-Key": key})
        assert third.status_code == 202 and third.json()["job_id"] != first.json()["job_id"]
        # ... and one key cannot see another's jobs.
        assert other.get(f"/v1/jobs/{first.json()['job_id']}").status_code == 404
        listed = other.get("/v1/jobs").json()["jobs"]
        assert [job["id"] for job in listed] == [third.json()["job_id"]]
    assert wait_job(jobs_http, first.json()["job_id"])["state"] == "succeeded"
    # Only one request object was kept for the repeated submission.
    assert _job_objects(jobs_appliance, first.json()["job_id"]) != []


def test_scopes(jobs_appliance):
    with _client_with(jobs_appliance, ["infer"]) as infer_only:
        assert infer_only.post("/v2/models/mlp/jobs", json=X).status_code == 403
        assert infer_only.get("/v1/jobs").status_code == 403
        assert infer_only.post("/v2/models/mlp/infer", json=X).status_code == 200
    with _client_with(jobs_appliance, ["jobs"]) as jobs_only:
        assert jobs_only.post("/v2/models/mlp/jobs", json=X).status_code == 202
    assert httpx.post(f"{jobs_appliance.url}/v2/models/mlp/jobs", json=X).status_code == 401


def test_listing_pages_through_every_job(jobs_appliance):
    with _client_with(jobs_appliance, ["jobs"]) as client:
        submitted = {client.post("/v2/models/mlp/jobs", json=X).json()["job_id"] for _ in range(5)}
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/jobs", params=params).json()
            seen += [job["id"] for job in page["jobs"]]
            pages += 1
            cursor = page["next"]
            if cursor is None:
                break
        assert pages == 3 and len(seen) == 5 and set(seen) == submitted
        for job_id in submitted:
            wait_job(client, job_id)
        done = client.get("/v1/jobs", params={"state": "succeeded", "model": "mlp"}).json()
        assert {job["id"] for job in done["jobs"]} == submitted
        assert client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"] == []


def test_cancel_queued_and_running_jobs(jobs_appliance, jobs_http):
    body, headers = long_job_body(jobs_http, 8)
    running = jobs_http.post("/v2/models/slow/jobs", content=body, headers=headers).json()
    queued = jobs_http.post("/v2/models/mlp/jobs", json=X).json()  # behind it (one job at a time)
    job = wait_job(jobs_http, running["job_id"], states=("running",))
    assert jobs_http.get(f"/v1/jobs/{queued['job_id']}").json()["state"] == "queued"
    assert jobs_http.get(queued["result_url"]).status_code == 409

    response = jobs_http.delete(f"/v1/jobs/{queued['job_id']}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    wait_for(
        lambda: jobs_http.get(f"/v1/jobs/{running['job_id']}").json()["progress"] > 0,
        30,
        "the slow job to make progress",
    )
    started = time.monotonic()
    response = jobs_http.delete(f"/v1/jobs/{running['job_id']}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    # The worker notices at its next lease renewal and takes its chunks off the queue.
    stream = jobs_appliance.keys.stream("slow", 1, "lo")
    wait_for(lambda: jobs_appliance.redis.xlen(stream) == 0, 15, "the chunks to be withdrawn")
    follow = jobs_http.post("/v2/models/mlp/jobs", json=X).json()
    assert wait_job(jobs_http, follow["job_id"], timeout=30)["state"] == "succeeded"
    assert time.monotonic() - started < 20

    for job_id in (queued["job_id"], running["job_id"]):
        job = jobs_http.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled", job
        assert jobs_http.get(f"/v1/jobs/{job_id}/result").status_code == 409
        assert jobs_http.delete(f"/v1/jobs/{job_id}").status_code == 409
        assert not any(
            ".result" in k or "/result" in k for k in _job_objects(jobs_appliance, job_id)
        )
    assert jobs_http.get(f"/v1/jobs/{queued['job_id']}").json()["attempts"] == 0


class _Receiver(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(type(self).answers.pop(0) if type(self).answers else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_signed_and_retried(jobs_appliance, jobs_http):
    _Receiver.answers = [500]  # the first delivery fails; the retry succeeds
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        body = {**X, "parameters": {"webhook_url": url}}
        job_id = jobs_http.post("/v2/models/mlp/jobs", json=body).json()["job_id"]
        assert wait_job(jobs_http, job_id)["state"] == "succeeded"
        wait_for(lambda: len(_Receiver.received) >= 2, 30, "the webhook to be retried")
        job = wait_for(
            lambda: (
                (j := jobs_http.get(f"/v1/jobs/{job_id}").json())["webhook"]["state"] == "delivered"
                and j
            ),
            10,
            "the delivery to be recorded",
        )
        assert job["webhook"]["attempts"] == 2
    finally:
        server.shutdown()
        server.server_close()
    headers, payload = _Receiver.received[-1]
    assert headers["X-Inferbox-Signature"] == signature(
        WEBHOOK_SECRET, headers["X-Inferbox-Timestamp"], payload
    )
    assert b'"state":"succeeded"' in payload and job_id.encode() in payload


def test_expired_results_are_removed(jobs_appliance, jobs_http):
    body = {**X, "parameters": {"retention_s": 1}}
    job_id = jobs_http.post("/v2/models/mlp/jobs", json=body).json()["job_id"]
    assert wait_job(jobs_http, job_id)["state"] == "succeeded"
    assert len(_job_objects(jobs_appliance, job_id)) == 2  # request and result
    assert wait_job(jobs_http, job_id, timeout=15, states=("expired",))["state"] == "expired"
    assert jobs_http.get(f"/v1/jobs/{job_id}/result").status_code == 410
    wait_for(lambda: _job_objects(jobs_appliance, job_id) == [], 10, "the objects to go")


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/v2/models/mlp/jobs", {"content": b"{nope"}, 400, ""),
        ("/v2/models/nope/jobs", {"json": X}, 404, "unknown model"),
        ("/v2/models/mlp/versions/9/jobs", {"json": X}, 404, "unknown version"),
        (
            "/v2/models/mlp/jobs",
            {"json": {"inputs": [{**X["inputs"][0], "name": "z"}]}},
            400,
            "unknown input",
        ),
        (
            "/v2/models/mlp/jobs",
            {"json": {"inputs": [{**X["inputs"][0], "shape": [1, 63]}]}},
            400,
            "",
        ),
        (
            "/v2/models/mlp/jobs",
            {"content": b"{}", "headers": {"Inference-Header-Content-Length": "x"}},
            400,
            "must be an integer",
        ),
        (
            "/v2/models/mlp/jobs",
            {"json": X, "headers": {"Idempotency-Key": "k" * 201}},
            400,
            "Idempotency-Key",
        ),
        (
            "/v2/models/mlp/jobs",
            {"json": {**X, "parameters": {"webhook_url": "file:///etc/passwd"}}},
            400,
            "webhook_url",
        ),
        (
            "/v2/models/mlp/jobs",
            {"json": {**X, "parameters": {"retention_s": 0}}},
            400,
            "retention_s",
        ),
    ],
)
def test_bad_submissions_create_no_job(jobs_appliance, path, kwargs, status, message):
    with _client_with(jobs_appliance, ["jobs"]) as client:
        response = client.post(path, **kwargs)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert client.get("/v1/jobs").json()["jobs"] == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/jobs/not-a-uuid", 404),
        (f"/v1/jobs/{uuid.uuid4()}", 404),
        (f"/v1/jobs/{uuid.uuid4()}/result", 404),
        ("/v1/jobs?state=bogus", 400),
        ("/v1/jobs?limit=0", 400),
        ("/v1/jobs?limit=1000", 400),
        ("/v1/jobs?cursor=%%%", 400),
        ("/v1/jobs/inputs/in_nope", 404),
    ],
)
def test_bad_lookups(jobs_http, path, status):
    response = jobs_http.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_retention_per_model(jobs_appliance, jobs_http):
    config = "/v1/models/add_sub/versions/1/config"
    response = jobs_http.patch(config, json={"job_retention_s": 2})
    assert response.status_code == 200, response.text
    assert jobs_http.patch(config, json={"job_retention_s": 0}).status_code == 400
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    try:
        job_id = wait_for(
            lambda: jobs_http.post("/v2/models/add_sub/jobs", json=body).json().get("job_id"),
            30,
            "add_sub to take jobs again after its reload",
        )
        job = wait_job(jobs_http, job_id)
        assert job["state"] == "succeeded", job
        # The model's retention applies: 2 s, not the appliance's week.
        assert wait_job(jobs_http, job_id, timeout=20, states=("expired",))["state"] == "expired"
    finally:
        jobs_http.patch(config, json={"job_retention_s": None})
