"""The audit log: rows for key changes, uploads, alias moves, deletions and auth failures;
``GET /v1/audit`` filters and pages; the table refuses changes; no secret reaches the logs."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from psycopg import sql

from inferbox.client import ApiError
from inferbox.testing import onnx_models
from tests.support.auth import bearer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _admin_id(appliance) -> str:
    return appliance.api_key.partition(".")[0]


def _rows(admin, **filters) -> list[dict]:
    return admin.audit(limit=1000, **filters)["entries"]


def test_key_create_and_revoke_are_audited(appliance, admin, make_key):
    _, key_id = make_key("infer", name="audited")
    admin.revoke_key(key_id)
    created = [r for r in _rows(admin, action="key.create") if r["details"].get("key_id") == key_id]
    assert len(created) == 1
    assert created[0]["actor"] == _admin_id(appliance) and created[0]["outcome"] == "ok"
    assert created[0]["remote_addr"] == "127.0.0.1"
    revoked = [r for r in _rows(admin, action="key.revoke") if r["target"] == key_id]
    assert [r["outcome"] for r in revoked] == ["ok"]


def test_upload_alias_moves_and_deletion_are_audited(appliance, admin, tmp_path):
    name = f"aud-{uuid.uuid4().hex[:6]}"
    for seed in (1, 2):
        admin.push(onnx_models.mlp(tmp_path / f"{seed}.onnx", seed=seed), name)
    admin.set_alias(name, "production", 1)
    admin.set_alias(name, "production", 2)
    admin.delete_version(name, 1)
    actor = _admin_id(appliance)
    uploads = [r for r in _rows(admin, action="model.upload", actor=actor) if r["target"] == name]
    assert sorted(r["details"]["version"] for r in uploads) == [1, 2]
    moves = [r for r in _rows(admin, action="alias.set") if r["target"] == f"{name}:production"]
    assert [r["details"]["version"] for r in moves] == [2, 1]  # newest first
    deleted = [r for r in _rows(admin, action="model.delete") if r["target"] == f"{name}/1"]
    assert [r["outcome"] for r in deleted] == ["ok"]
    # A refused change is audited too, as failed.
    with pytest.raises(ApiError) as refused:
        admin.delete_version(name, 2)
    assert refused.value.status == 409
    failed = [r for r in _rows(admin, action="model.delete") if r["target"] == f"{name}/2"]
    assert [r["outcome"] for r in failed] == ["failed"]


@contextmanager
def _audit_rows_refused(appliance, action: str, target: str):
    """While the block runs, PostgreSQL refuses the ``ok`` audit row of ``action`` on
    ``target`` (as a full disk or a lost connection would refuse it)."""
    function = sql.Identifier(f"refuse_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(appliance.env["INFERBOX_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN RAISE EXCEPTION 'audit row refused'; END$$"
            ).format(f=function)
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {f} BEFORE INSERT ON audit_log FOR EACH ROW"
                " WHEN (NEW.action = {a} AND NEW.target = {t} AND NEW.outcome = 'ok')"
                " EXECUTE FUNCTION {f}()"
            ).format(f=function, a=sql.Literal(action), t=sql.Literal(target))
        )
        try:
            yield conn
        finally:
            conn.execute(sql.SQL("DROP TRIGGER {f} ON audit_log").format(f=function))
            conn.execute(sql.SQL("DROP FUNCTION {f}()").format(f=function))


def test_a_key_whose_audit_row_cannot_be_written_does_not_exist(appliance, admin):
    name = f"unaudited-{uuid.uuid4().hex[:8]}"
    with _audit_rows_refused(appliance, "key.create", name) as conn:
        with pytest.raises(ApiError) as refused:
            admin.create_key(name, ["admin"])
        assert refused.value.status == 500
        count = conn.execute("SELECT count(*) FROM api_keys WHERE name = %s", (name,)).fetchone()
        assert count == (0,)
    assert name not in {k["name"] for k in admin.list_keys()}
    rows = [r for r in _rows(admin, action="key.create") if r["target"] == name]
    assert [(r["outcome"], r["details"]["status"]) for r in rows] == [("failed", 500)]
    # The same request once the row can be written: the key and its row, together.
    key_id = admin.create_key(name, ["infer"])["id"]
    rows = [r for r in _rows(admin, action="key.create") if r["target"] == name]
    assert [r["outcome"] for r in rows] == ["ok", "failed"]
    assert rows[0]["details"]["key_id"] == key_id


def test_a_revocation_whose_audit_row_cannot_be_written_leaves_the_key_usable(
    appliance, admin, make_key
):
    key, key_id = make_key("infer")
    with _audit_rows_refused(appliance, "key.revoke", key_id):
        with pytest.raises(ApiError) as refused:
            admin.revoke_key(key_id)
        assert refused.value.status == 500
    time.sleep(1.1)  # past every API process's cached copy
    assert httpx.get(f"{appliance.url}/v2/models/mlp", headers=bearer(key)).status_code == 200
    rows = [r for r in _rows(admin, action="key.revoke") if r["target"] == key_id]
    assert [r["outcome"] for r in rows] == ["failed"]
    admin.revoke_key(key_id)
    rows = [r for r in _rows(admin, action="key.revoke") if r["target"] == key_id]
    assert [r["outcome"] for r in rows] == ["ok", "failed"]


def test_auth_failures_are_audited_once_per_address_and_window(appliance, admin):
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    for _ in range(5):
        response = httpx.get(
            f"{appliance.url}/v2/models/mlp",
            headers={"X-Real-IP": address, **bearer("ibk_Nobody12." + "a" * 43)},
        )
        assert response.status_code == 401
    rows = [r for r in _rows(admin, action="auth.failure") if r["remote_addr"] == address]
    assert len(rows) == 1
    assert rows[0]["actor"] == "ibk_Nobody12" and rows[0]["outcome"] == "denied"
    assert rows[0]["target"] == "/v2/models/mlp"


def test_audit_filters_and_pages(appliance, admin, make_key):
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    for index in range(3):
        make_key("infer", name=f"page-{index}")
    page = admin.audit(action="key.create", since=since, limit=2)
    assert len(page["entries"]) == 2 and page["next"] is not None
    rest = admin.audit(action="key.create", since=since, limit=2, before=page["next"])
    ids = [r["id"] for r in page["entries"] + rest["entries"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids) >= 3
    assert all(r["action"] == "key.create" for r in page["entries"] + rest["entries"])
    assert admin.audit(actor="ibk_Nobody00")["entries"] == []
    # Only admins read it.
    key, _ = make_key("infer", "models:write")
    assert httpx.get(f"{appliance.url}/v1/audit", headers=bearer(key)).status_code == 403


def test_the_audit_table_refuses_updates_and_deletes(appliance):
    with psycopg.connect(appliance.env["INFERBOX_DATABASE_URL"], autocommit=True) as conn:
        for statement in (
            "UPDATE audit_log SET outcome = 'ok'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(statement)


def test_audit_events_are_logged_and_no_secret_reaches_the_logs(appliance, admin, make_key):
    key, key_id = make_key("infer", name="log-check")
    httpx.get(f"{appliance.url}/v2/models/mlp", headers=bearer(key))
    admin.revoke_key(key_id)

    def logged() -> list[dict]:
        lines = [json.loads(x) for x in (appliance.logs / "api.log").read_text().splitlines()]
        return [x for x in lines if x.get("message") == "audit" and x.get("target") == key_id]

    (event,) = wait_for(logged, 5, "the audit event in the API's log")
    assert event["action"] == "key.revoke" and event["api_key_id"] == _admin_id(appliance)
    text = (appliance.logs / "api.log").read_text() + (appliance.logs / "worker.log").read_text()
    for secret in (key, appliance.api_key):
        assert secret.partition(".")[2] not in text
    assert "secret_hash" not in text
