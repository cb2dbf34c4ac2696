"""Webhook signatures and the refusal of internal addresses."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from inferbox.jobs.webhooks import backoff_s, refusal, signature

pytestmark = pytest.mark.unit


def test_signature_is_hmac_sha256_of_timestamp_and_body():
    expected = hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature("s3cret", "1700000000", b"{}") == "sha256=" + expected


def test_backoff_doubles_up_to_ten_minutes():
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff_s(30) == 600


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0.0.0.0/",
    ],
)
async def test_internal_addresses_are_refused(url):
    assert "internal address" in await refusal(url)


async def test_public_addresses_pass_and_unresolvable_names_are_refused():
    assert await refusal("https://8.8.8.8/hook") is None
    assert "cannot resolve" in await refusal("https://no-such-host.invalid/hook")
