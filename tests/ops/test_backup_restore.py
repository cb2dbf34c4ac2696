"""Back up, wipe, restore into an empty appliance: the same models answer the same."""

from __future__ import annotations

import subprocess
import tarfile

import httpx
import numpy as np
import pytest

from inferbox.client import InferboxClient
from inferbox.testing import onnx_models
from tests.support.appliance import running_appliance
from tests.support.paths import INFERBOX
from tests.support.processes import run_cli
from tests.support.waiting import wait_for

# A whole appliance backed up, wiped and restored: over a minute alone on 2 cores.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}]}


def _answers(url: str, headers: dict[str, str], names: list[str]) -> dict[str, list]:
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for name in names:
            wait_for(
                lambda n=name: http.get(f"/v2/models/{n}/ready").status_code == 200,
                60,
                f"{name} to be ready",
            )
        return {n: http.post(f"/v2/models/{n}/infer", json=BODY).json()["outputs"] for n in names}


def test_backup_wipe_restore_serves_the_same_answers(
    redis_client, tmp_path, tmp_path_factory, make_database, s3_endpoint
):
    archive = tmp_path / "backup.tar.gz"
    sealed = tmp_path / "backup.tar.gz.sealed"
    with running_appliance(
        redis_client, tmp_path_factory, make_database(), s3_endpoint, None
    ) as first:
        with InferboxClient(first.url, api_key=first.api_key) as client:
            client.push(onnx_models.mlp(tmp_path / "a.onnx", seed=51), "alpha", alias="production")
            client.push(onnx_models.mlp(tmp_path / "b1.onnx", seed=52), "beta")
            client.push(onnx_models.mlp(tmp_path / "b2.onnx", seed=53), "beta", alias="production")
        before = _answers(first.url, first.headers, ["alpha", "beta"])
        with InferboxClient(first.url, api_key=first.api_key) as client:
            before_audit = client.audit(limit=100)["entries"]
        secret = tmp_path / "admin-key"
        secret.write_text(first.api_key)
        out = run_cli(["backup", str(archive), "--secret", str(secret)], first.env)
        assert "3 objects" in out and "1 secret file" in out
        # The same, sealed with a passphrase: nothing of it is readable without one.
        passphrase = {"BACKUP_PASSPHRASE": "correct horse battery staple"}
        run_cli(
            [
                "backup",
                str(sealed),
                "--secret",
                str(secret),
                "--passphrase-env",
                "BACKUP_PASSPHRASE",
            ],
            first.env | passphrase,
        )
    assert sealed.stat().st_mode & 0o077 == 0
    assert first.api_key.encode() not in sealed.read_bytes()
    assert not tarfile.is_tarfile(sealed)
    assert archive.stat().st_mode & 0o077 == 0
    with tarfile.open(archive) as opened:
        names = opened.getnames()
    assert "manifest.json" in names and "db/model_versions.csv" in names
    assert "secrets/admin-key" in names

    # A new appliance: its own empty database, bucket and Redis prefix.
    with running_appliance(
        redis_client, tmp_path_factory, make_database(), s3_endpoint, None
    ) as second:
        restored = tmp_path / "restored"
        for wrong in ({}, {"BACKUP_PASSPHRASE": "wrong"}):
            done = subprocess.run(
                [INFERBOX, "restore", str(sealed), "--passphrase-env", "BACKUP_PASSPHRASE"],
                env=second.env | wrong,
                capture_output=True,
                text=True,
            )
            assert done.returncode != 0, done.stdout
        opening = ["--passphrase-env", "BACKUP_PASSPHRASE", "--secrets-dir", str(restored)]
        out = run_cli(["restore", str(sealed), *opening], second.env | passphrase)
        assert "2 model(s) serving" in out
        assert (restored / "admin-key").read_text() == first.api_key
        # The old admin key came back with the database, and so did the aliases.
        after = _answers(
            second.url, {"Authorization": f"Bearer {first.api_key}"}, ["alpha", "beta"]
        )
        assert after == before
        with InferboxClient(second.url, api_key=first.api_key) as client:
            assert client.model("beta")["aliases"] == {"production": 2}
            # The restored history keeps its ids; the new appliance's own setup (its bootstrap
            # key's creation) comes after it.
            audit = client.audit(limit=100)["entries"]
        assert before_audit and [e["id"] for e in audit[-len(before_audit) :]] == [
            e["id"] for e in before_audit
        ]
        assert audit[0]["action"] == "key.create" and audit[0]["id"] > before_audit[0]["id"]
        # Restoring over a database that holds models is refused.
        done = subprocess.run(
            [INFERBOX, "restore", str(archive)],
            env=second.env,
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0 and "empty" in (done.stdout + done.stderr)
