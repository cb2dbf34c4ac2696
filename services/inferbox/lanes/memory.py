"""``MemoryLane``: the ``Lane`` interface answered in process by a function standing in for a
worker, so that what sits above a lane (``inference.service``, the front ends) is tested
without Redis. Errors a worker would reply with are raised as the real client raises them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from inferbox.errors import DeadlineExceeded, Unavailable
from inferbox.lanes.client import ClientGone
from inferbox.lanes.wire import CallHeader, ReplyHeader, TensorMeta

Worker = Callable[[str, CallHeader, list[bytes]], tuple[list[TensorMeta], list[bytes]]]
"""Answers one call: ``(stream, header, raws) -> (output metas, output bytes)``; may raise an
``InferboxError`` as a worker's error reply would."""


@dataclass
class QueuedCall:
    """One call as the lane received it."""

    stream: str
    header: CallHeader
    raws: list[bytes]
    max_queue: int
    timeout_s: float


class MemoryLane:
    """A lane whose calls ``worker`` answers at once (after ``delay_s``), in order.

    ``calls`` records every call received; ``depth`` (calls waiting, per stream) above a
    call's ``max_queue`` refuses it with 503 as a full stream does.
    """

    def __init__(self, worker: Worker, *, delay_s: float = 0.0) -> None:
        self.worker = worker
        self.delay_s = delay_s
        self.calls: list[QueuedCall] = []
        self.depth: dict[str, int] = {}

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
        """Answer the call with ``worker``; the ``Lane`` protocol's errors where they apply."""
        self.calls.append(QueuedCall(stream, header, list(raws), max_queue, timeout_s))
        if self.depth.get(stream, 0) >= max_queue:
            raise Unavailable(f"the queue of {stream} is full", retry_after=1.0)
        self.depth[stream] = self.depth.get(stream, 0) + 1
        try:
            work = asyncio.ensure_future(asyncio.sleep(self.delay_s))
            waits = {work}
            if receive is not None:
                waits.add(asyncio.ensure_future(receive()))
            done, pending = await asyncio.wait(
                waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if work not in done:
                if done:
                    raise ClientGone()
                raise DeadlineExceeded(f"no answer within {timeout_s:g} s")
            if header.deadline < time.time():
                raise DeadlineExceeded("the call's deadline passed before it ran")
            metas, out = self.worker(stream, header, list(raws))
        finally:
            self.depth[stream] -= 1
        reply = ReplyHeader(token=header.token, outputs=metas, sizes=[len(raw) for raw in out])
        return reply, [memoryview(raw) for raw in out]
