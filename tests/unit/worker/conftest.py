"""Fixtures of the worker's unit tests."""

from __future__ import annotations

import pytest

from tests.support.consumers import RecordingConsumer


@pytest.fixture
def new_consumer() -> type[RecordingConsumer]:
    """Makes consumers that record what a model server answers (one per call)."""
    return RecordingConsumer
