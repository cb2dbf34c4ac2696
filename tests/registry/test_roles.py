"""The application's database role can run the appliance but cannot rewrite its audit log."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from inferbox.client import InferboxClient
from inferbox.jobs.store import JobStore, NewJob
from inferbox.registry.migrate import migrate_sync
from inferbox.registry.roles import apply_app_role
from inferbox.registry.store import create_pool
from inferbox.security.audit import AuditLog
from inferbox.security.keystore import KeyStore
from inferbox.testing import onnx_models
from tests.support.appliance import running_appliance
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def app_conninfo(make_database):
    owner = make_database()
    migrate_sync(owner)
    role = f"ibrole_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    apply_app_role(owner, role, password)
    apply_app_role(owner, role, password)  # idempotent
    yield owner, f"{owner} user={role} password={password}"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


async def test_the_app_role_serves_keys_and_audit(app_conninfo):
    _, app = app_conninfo
    async with create_pool(app, max_size=2) as pool:
        store = KeyStore(pool)
        record, _ = await store.create(name="as app", scopes=["infer"])
        assert (await store.revoke(record.id)).revoked_at is not None
        assert len(await store.cache_secret()) == 32
        audit = AuditLog(pool, None, None)
        await audit.record(actor="system", action="test", target="x", outcome="ok")
        assert [e.action for e in await audit.query(action="test")] == ["test"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'someone'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_log_no_update_or_delete ON audit_log",
        "DROP TABLE audit_log",
        "UPDATE instance_secrets SET value = value",
        "CREATE TABLE planted (x int)",
        "COPY audit_log TO PROGRAM 'true'",
        "SET session_replication_role = replica",
    ],
)
def test_the_app_role_cannot_rewrite_the_audit_log(app_conninfo, statement):
    _, app = app_conninfo
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (actor, action, outcome) VALUES ('a', 'b', 'ok')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_the_appliance_runs_as_the_app_role(
    app_conninfo, redis_client, tmp_path_factory, s3_endpoint, model_repo, tmp_path
):
    """API and worker with the application role: serve, upload, alias, keys, audit, jobs."""
    _, app = app_conninfo
    with running_appliance(
        redis_client, tmp_path_factory, app, s3_endpoint, model_repo, ready=("mlp",)
    ) as appliance:
        with InferboxClient(appliance.url, api_key=appliance.api_key, timeout=30) as client:
            client.push(onnx_models.mlp(tmp_path / "m.onnx", seed=7), "as-app", alias="live")
            created = client.create_key("as app", ["infer"])
            client.revoke_key(created["id"])
            assert client.audit(limit=10)["entries"]
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
        answer = httpx.post(
            f"{appliance.url}/v2/models/mlp/infer", json=body, headers=appliance.headers
        )
        assert answer.status_code == 200, answer.text
        job = httpx.post(
            f"{appliance.url}/v2/models/mlp/jobs", json=body, headers=appliance.headers
        )
        assert job.status_code == 202, job.text
        status = job.json()["status_url"]
        wait_for(
            lambda: (
                httpx.get(f"{appliance.url}{status}", headers=appliance.headers).json()["state"]
                == "succeeded"
            ),
            60,
            "the job to succeed as the app role",
        )


@pytest.fixture
def component_roles(make_database):
    owner = make_database()
    migrate_sync(owner)
    made = {}
    for component in ("grpc", "worker", "webhooks"):
        role = f"ib{component}_{uuid.uuid4().hex[:8]}"
        password = uuid.uuid4().hex
        apply_app_role(owner, role, password, component)
        apply_app_role(owner, role, password, component)  # idempotent
        made[component] = (role, f"{owner} user={role} password={password}")
    yield owner, {component: url for component, (_, url) in made.items()}
    with psycopg.connect(owner, autocommit=True) as conn:
        for role, _ in made.values():
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize(
    ("component", "statement"),
    [
        ("worker", "SELECT * FROM api_keys"),
        ("worker", "SELECT * FROM audit_log"),
        ("worker", "INSERT INTO audit_log (actor, action, outcome) VALUES ('a', 'b', 'ok')"),
        ("worker", "SELECT * FROM instance_secrets"),
        ("worker", "SELECT * FROM models"),
        ("worker", "INSERT INTO jobs (id) VALUES (gen_random_uuid())"),
        ("worker", "DELETE FROM jobs"),
        ("worker", "UPDATE job_inputs SET rows = 0"),
        ("grpc", "UPDATE api_keys SET scopes = '{admin}'"),
        (
            "grpc",
            "INSERT INTO api_keys (id, secret_hash, name, scopes) VALUES ('a', 'b', 'c', '{}')",
        ),
        ("grpc", "UPDATE models SET name = name"),
        ("grpc", "SELECT * FROM jobs"),
        ("grpc", "DELETE FROM audit_log"),
        ("grpc", "UPDATE instance_secrets SET value = value"),
        # The webhook sender, the one part with a way out: its jobs' webhook columns only.
        ("webhooks", "UPDATE jobs SET webhook_url = 'http://elsewhere.example/'"),
        ("webhooks", "UPDATE jobs SET state = 'succeeded'"),
        ("webhooks", "UPDATE jobs SET result_key = 'x'"),
        ("webhooks", "DELETE FROM jobs"),
        ("webhooks", "INSERT INTO jobs (id) VALUES (gen_random_uuid())"),
        ("webhooks", "SELECT * FROM job_inputs"),
        ("webhooks", "SELECT * FROM api_keys"),
        ("webhooks", "SELECT * FROM audit_log"),
        ("webhooks", "SELECT * FROM models"),
        ("webhooks", "SELECT * FROM instance_secrets"),
    ],
)
def test_each_component_reaches_only_its_own_tables(component_roles, component, statement):
    _, urls = component_roles
    with (
        psycopg.connect(urls[component], autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


async def test_the_grpc_role_reads_keys_marks_them_used_and_audits(component_roles):
    owner, urls = component_roles
    async with create_pool(owner, max_size=1) as pool:
        record, _ = await KeyStore(pool).create(name="for grpc", scopes=["infer"])
    async with create_pool(urls["grpc"], max_size=2) as pool:
        store = KeyStore(pool)
        assert (await store.get(record.id)).name == "for grpc"
        await store.touch([record.id])
        assert len(await store.cache_secret()) == 32
        await AuditLog(pool, None, None).record(
            actor="anonymous", action="auth.failure", target=None, outcome="denied"
        )


async def test_the_webhooks_role_claims_deliveries_and_records_them(component_roles):
    owner, urls = component_roles
    async with create_pool(owner, max_size=1) as pool:
        store = JobStore(pool)
        job, _ = await store.create(
            NewJob(
                id=uuid.uuid4(),
                model="m",
                version=1,
                kind="request",
                input_key="k",
                max_attempts=1,
                webhook_url="https://hooks.example/",
                retention_s=60,
            )
        )
        assert await store.fail(job.id, None, "given up")
    async with create_pool(urls["webhooks"], max_size=2) as pool:
        store = JobStore(pool)
        assert [j.id for j in await store.due_webhooks(8, hold_s=60)] == [job.id]
        assert await store.due_webhooks(8) == []  # claimed: no other sender takes it
        await store.webhook_outcome(job.id, delivered=False, error="answered 500", retry_in_s=0)
        assert [j.webhook_attempts for j in await store.due_webhooks(8)] == [1]
        await store.webhook_outcome(job.id, delivered=True, error=None, retry_in_s=None)
        assert (await store.get(job.id)).webhook_state == "delivered"
