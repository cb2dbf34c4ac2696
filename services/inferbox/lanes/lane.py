"""What a front end needs of a lane: queue one call on a model's stream and wait for its reply.

``InteractiveClient`` (RESP over TCP to Redis, replies over pub/sub) is the lane inferbox runs
on; ``MemoryLane`` (``lanes.memory``) answers in process, for tests of what sits above a lane.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from inferbox.lanes.wire import CallHeader, ReplyHeader


class Lane(Protocol):
    """Queues calls and returns their replies."""

    async def call(
        self,
        stream: str,
        header: CallHeader,
        raws: list[bytes],
        *,
        max_queue: int,
        timeout_s: float,
        receive: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[ReplyHeader, list[memoryview]]:
        """Queue ``header`` and ``raws`` on ``stream`` (refused when it holds ``max_queue``
        calls) and wait at most ``timeout_s`` for the reply (``DeadlineExceeded`` after it);
        a reply with an error raises it. ``receive`` returning first means the caller left
        (``ClientGone``)."""
        ...
