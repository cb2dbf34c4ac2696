"""A large upload is streamed: the API's memory does not grow with the model's size."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.registry.bad_models import big_initializer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MB = 1 << 20


def _api_rss(appliance) -> int:
    """Resident memory of every process of the API (gunicorn master and workers), in bytes."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"inferbox\x00api" not in cmdline:
            continue
        if (
            appliance.env["INFERBOX_KEY_PREFIX"].encode()
            not in (status.parent / "environ").read_bytes()
        ):
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def test_a_256_mb_model_upload_does_not_grow_the_api(appliance, tmp_path):
    model = big_initializer(tmp_path, 256)
    size = model.stat().st_size
    assert size > 256 * MB
    before = _api_rss(appliance)
    peak = before
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _api_rss(appliance))
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def chunks():
        with model.open("rb") as handle:
            while chunk := handle.read(MB):
                yield chunk

    try:
        response = httpx.post(
            f"{appliance.url}/v1/models/big/versions",
            content=chunks(),
            headers={**appliance.headers, "Content-Length": str(size)},
            timeout=300,
        )
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 201, response.text
    assert response.json()["size"] == size
    # Spooled to disk and sent to S3 in 16 MB parts, two at a time: the API grows by a bound
    # that does not depend on the model's size (about 70 MB here, for a 256 MB model).
    assert peak - before < 100 * MB, (before, peak)
