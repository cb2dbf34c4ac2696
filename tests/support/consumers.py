"""Stand-ins for the worker's lane consumers."""

from __future__ import annotations


class RecordingConsumer:
    """Stands in for a lane consumer: keeps the replies and acknowledgements it is given."""

    def __init__(self):
        self.replies, self.done = [], []

    def flush(self):
        pass

    def finish(self, replies, done):
        self.replies += replies
        self.done += done
