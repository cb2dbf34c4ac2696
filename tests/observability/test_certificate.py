"""The gateway certificate's expiry reaches the API's metrics (for the expiry alert)."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest

from inferbox.observability.certificate import expiry
from tests.support.paths import ROOT

pytestmark = pytest.mark.integration


def test_expiry_of_a_certificate_made_by_scripts_certs(tmp_path):
    subprocess.run(
        [str(ROOT / "scripts" / "certs"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"INFERBOX_TLS_DAYS": "30", "PATH": "/usr/bin:/bin"},
    )
    days = (expiry(tmp_path / "tls.crt") - time.time()) / 86400
    assert 29 < days <= 30
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ValueError):
        expiry(tmp_path / "bad.crt")


def test_the_api_exports_the_expiry(appliance):
    text = httpx.get(f"{appliance.url}/metrics").text
    match = re.search(
        r'^inferbox_tls_certificate_expiry_timestamp_seconds\{path="[^"]+tls.crt"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert match, "no certificate expiry in the API's metrics"
    assert float(match[1]) - time.time() > 800 * 86400  # scripts/certs' default is 825 days
