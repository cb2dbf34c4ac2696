"""Fixtures of the worker's unit tests."""

from __future__ import annotations

import pytest


class RecordingConsumer:
    """Stands in for a lane consumer: keeps the replies and acknowledgements it is given."""

    def __init__(self):
        self.replies, self.done = [], []

    def flush(self):
        pass

    def finish(self, replies, done):
        self.replies += replies
        self.done += done


@pytest.fixture
def new_consumer() -> type[RecordingConsumer]:
    """Makes consumers that record what a model server answers (one per call)."""
    return RecordingConsumer
