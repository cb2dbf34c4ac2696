"""The local CA's private key stays with the one-shot certificate step (scripts/certs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CERTS = Path(__file__).resolve().parents[2] / "scripts" / "certs"


def _certs(*args: str | Path) -> str:
    done = subprocess.run([str(CERTS), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _verifies(ca: Path, cert: Path) -> bool:
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True
    )
    return done.returncode == 0


def test_the_ca_key_lives_in_its_own_folder_and_the_public_one_has_no_key(tmp_path):
    gateway, ca, public = tmp_path / "certs", tmp_path / "ca", tmp_path / "public"
    _certs("--ca-dir", ca, "--public-dir", public, gateway, "box.example")
    assert sorted(p.name for p in gateway.iterdir()) == [
        "ca.crt",
        "tls.crt",
        "tls.crt.names.conf",  # nginx's server_name line (tests/security/test_redirect_names.py)
        "tls.key",
    ]
    assert sorted(p.name for p in ca.iterdir()) == ["ca.key"]
    assert sorted(p.name for p in public.iterdir()) == ["ca.crt", "tls.crt"]
    assert (ca / "ca.key").stat().st_mode & 0o077 == 0
    assert (public / "tls.crt").read_bytes() == (gateway / "tls.crt").read_bytes()
    assert _verifies(gateway / "ca.crt", gateway / "tls.crt")

    # A renewal signs with the same CA, and the public copy follows.
    before = (gateway / "tls.crt").read_bytes()
    _certs("--renew", "--ca-dir", ca, "--public-dir", public, gateway, "box.example")
    assert (gateway / "tls.crt").read_bytes() != before
    assert (public / "tls.crt").read_bytes() == (gateway / "tls.crt").read_bytes()
    assert _verifies(gateway / "ca.crt", gateway / "tls.crt")
    assert not (gateway / "ca.key").exists()


def test_an_older_appliances_ca_key_moves_out_of_the_gateways_folder(tmp_path):
    gateway, ca, public = tmp_path / "certs", tmp_path / "ca", tmp_path / "public"
    _certs(gateway)  # as before: everything in one folder
    key = (gateway / "ca.key").read_bytes()
    out = _certs("--ca-dir", ca, "--public-dir", public, gateway)
    assert "moved the CA's key" in out
    assert not (gateway / "ca.key").exists()
    assert (ca / "ca.key").read_bytes() == key
    assert (public / "tls.crt").is_file()  # the kept certificate is published too
    _certs("--renew", "--ca-dir", ca, gateway)
    assert _verifies(gateway / "ca.crt", gateway / "tls.crt")
