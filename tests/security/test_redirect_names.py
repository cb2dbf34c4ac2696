"""The names plain HTTP redirects for: scripts/certs writes nginx's ``server_name`` line from
the certificate itself, its own or an operator's, and lets nothing else into nginx's config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CERTS = Path(__file__).resolve().parents[2] / "scripts" / "certs"


def _certs(*args: str | Path, names: str = "") -> None:
    env = {**os.environ, "INFERBOX_TLS_NAMES": names}
    done = subprocess.run(
        [str(CERTS), *map(str, args)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _server_names(folder: Path) -> list[str] | None:
    """The names of the ``server_name`` line, None when the file has none."""
    lines = (folder / "tls.crt.names.conf").read_text().splitlines()
    (line,) = [x for x in lines if not x.startswith("#")] or [None]
    if line is None:
        return None
    assert line.startswith("server_name ") and line.endswith(";"), line
    return line.removeprefix("server_name ").removesuffix(";").split()


def _own_certificate(folder: Path, subject: str, san: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    extension = ["-addext", f"subjectAltName={san}"] if san else []
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", subject, *extension,
            "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def test_the_names_of_a_made_certificate_as_clients_write_them(tmp_path):
    _certs(tmp_path, "Box.Example.com", names="10.1.2.3 2001:DB8:0:0:0:0:0:1 fe80:0:0:1::")
    assert _server_names(tmp_path) == [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "box.example.com",
        "10.1.2.3",
        "[2001:db8::1]",
        "[fe80:0:0:1::]",
    ]
    # A renewal for other names, and a run that keeps the certificate, follow the certificate.
    _certs("--renew", tmp_path, "gpu.lan")
    assert _server_names(tmp_path) == ["localhost", "127.0.0.1", "[::1]", "gpu.lan"]
    _certs(tmp_path, "ignored.example")
    assert _server_names(tmp_path) == ["localhost", "127.0.0.1", "[::1]", "gpu.lan"]


def test_an_operators_own_certificate_gives_its_own_names(tmp_path):
    _own_certificate(tmp_path, "/CN=ignored", "DNS:*.infer.example,DNS:api.example,IP:192.0.2.7")
    _certs(tmp_path)
    assert _server_names(tmp_path) == ["*.infer.example", "api.example", "192.0.2.7"]
    _own_certificate(tmp_path, "/O=Team/CN=Only.Common.Name", None)
    _certs(tmp_path)
    assert _server_names(tmp_path) == ["only.common.name"]


@pytest.mark.parametrize(
    ("subject", "san"),
    [
        ("/CN=x.example; return 301 evil.example", None),
        ("/CN=x.example}", None),
        ("/CN=a", "DNS:x.example\\;include /etc/passwd"),
        ("/CN=a", "URI:https://a.example,email:a@a.example"),
    ],
)
def test_nothing_but_host_names_and_addresses_reaches_nginxs_config(tmp_path, subject, san):
    _own_certificate(tmp_path, subject, san)
    _certs(tmp_path)
    assert _server_names(tmp_path) is None  # nothing to redirect for: every name gets 421
