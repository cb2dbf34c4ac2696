"""Memory figures and the recycling rule."""

from __future__ import annotations

import pytest

from inferbox.worker.memory import process_rss, should_recycle, usage

pytestmark = pytest.mark.unit


def test_rss_is_this_process_size():
    before = process_rss()
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert process_rss() - before >= 60 * 1024 * 1024
    assert usage("cpu") > 0


def test_recycle_only_when_memory_outgrows_the_models():
    assert not should_recycle(rss=900, baseline=100, models=200, factor=3.0)
    assert should_recycle(rss=901, baseline=100, models=200, factor=3.0)
    assert not should_recycle(rss=10**12, baseline=1, models=1, factor=0)
