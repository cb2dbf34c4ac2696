"""API side of the interactive lane: queue a call, then wait for its reply without polling.

Each API process subscribes once to its own reply channel; one task reads every reply and
resolves the future of the request waiting for it. Queueing is one round trip: ``XLEN`` and
``XADD`` travel together, and a call that found the model's queue full is withdrawn again.

Queues are bounded by entries (each model's ``max_queue_size``) and by bytes: the tensor bytes
an API process has queued and not yet had answered stay under ``max_queued_bytes``, else the
call gets 503 at once (the bound for all of Redis is that times the API processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError, ResponseError

from inferbox.config import Settings
from inferbox.errors import DeadlineExceeded, InferboxError, Unavailable
from inferbox.keys import Keys
from inferbox.lanes.resp import RespConnection
from inferbox.lanes.tensor_files import TensorFiles
from inferbox.lanes.wire import (
    CallHeader,
    ReplyHeader,
    decode_reply,
    encode_call,
    unbundle_replies,
)

log = structlog.get_logger(__name__)

WATCH_DISCONNECT_AFTER_S = 0.02
"""How long a call waits before its client's departure is watched for."""

WRITE_IN_THREAD_BYTES = 4 << 20
"""Tensor files at least this large are written in a thread, off the event loop."""

SWEEP_EVERY_S = 60.0
"""How often an API process looks for tensor files that dead API processes left behind."""


class ClientGone(Exception):
    """The HTTP client disconnected before its answer; its queued call was withdrawn."""


class InteractiveClient:
    """Queues synchronous calls and routes their replies back to the waiting requests."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        max_queued_bytes: int = 1 << 30,
        *,
        tensor_dir: str = "",
        tensor_file_min_bytes: int = 256 * 1024,
        longest_call_s: float = 300.0,
    ):
        self.process_id = uuid.uuid4().hex
        self.files = (
            TensorFiles(tensor_dir, tensor_file_min_bytes, self.process_id) if tensor_dir else None
        )
        """Where large inputs travel as files (``tensor_files``); None: all through Redis."""
        self.longest_call_s = longest_call_s
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0
        """Tensor bytes of this process's calls queued or running (not yet answered)."""
        self.channel = keys.reply_channel(self.process_id)
        self.commands = RespConnection(redis_url)
        self.replies = RespConnection(redis_url, on_push=self._on_push)
        self._waiting: dict[str, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._reader: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings, keys: Keys) -> InteractiveClient:
        """The client of an API, gRPC or job-runner process, as its settings describe it."""
        return cls(
            settings.redis_url,
            keys,
            settings.max_queued_bytes,
            tensor_dir=settings.tensor_dir,
            tensor_file_min_bytes=settings.tensor_file_min_bytes,
            longest_call_s=settings.max_request_timeout_s,
        )

    async def start(self) -> None:
        """Subscribe to this process's reply channel and start routing replies."""
        self._reader = asyncio.create_task(self._read_replies(), name="reply-reader")
        if self.files is not None:
            self._sweeper = asyncio.create_task(self._sweep_files(), name="tensor-file-sweep")
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)

    async def close(self) -> None:
        """Stop routing replies; waiting requests fail as unavailable."""
        for task in (self._reader, self._sweeper):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.commands.close()
        self.replies.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(Unavailable("the API is shutting down"))

    async def _read_replies(self) -> None:
        while True:
            try:
                await self.replies.execute("SUBSCRIBE", self.channel)
                self._subscribed.set()
                await self.replies.lost
                log.warning("reply channel lost; resubscribing")
            except RedisError as exc:
                # Replies published while we were away are lost; their callers time out (504).
                log.warning("reply channel unavailable; retrying", error=str(exc))
            await asyncio.sleep(0.5)

    async def _sweep_files(self) -> None:
        # Past the longest deadline (and a minute of slack) no call can wait for a file.
        while True:
            await asyncio.to_thread(self.files.sweep, self.longest_call_s + 60)
            await asyncio.sleep(SWEEP_EVERY_S)

    def _on_push(self, message: list) -> None:
        if len(message) == 3 and message[0] == b"message":
            self._resolve(message[2])

    async def _enqueue(self, stream: str, fields: list, max_queue: int) -> bytes | None:
        """Append a call unless the stream already holds ``max_queue`` entries (queued and
        running: workers delete entries once answered); its entry id, or None when full.

        No Lua script: Redis copies every argument of a script call into Lua strings and back,
        which cost it about 90 µs per call for a 48 KiB tensor (and 7 µs for a small one).
        Without a script, calls appended at the same instant can pass the bound together, and
        an entry that found the queue full exists for one round trip before it is withdrawn.
        """
        queued, entry_id = await self.commands.pipeline(
            ("XLEN", stream), ("XADD", stream, "*", *fields)
        )
        if queued < max_queue:
            return entry_id
        await self.commands.execute("XDEL", stream, entry_id)
        return None

    def _resolve(self, message: bytes) -> None:
        try:
            replies = [decode_reply(reply) for reply in unbundle_replies(message)]
        except Exception:
            log.error("dropping a malformed reply message")
            return
        for header, raws in replies:
            future = self._waiting.get(header.token)
            if future is not None and not future.done():
                future.set_result((header, raws))

    # Every inference call runs this: written flat on purpose, as helpers would add calls per call.
    async def call(  # noqa: C901
        self,
        stream: str,
        header: CallHeader,
        raws: list[bytes],
        *,
        max_queue: int,
        timeout_s: float,
        receive: Callable[[], Awaitable[dict]] | None = None,
    ) -> tuple[ReplyHeader, list[memoryview]]:
        """Queue one call and wait for its reply, its deadline, or the client's departure.

        ``receive`` is the ASGI receive of the HTTP request whose body was read: its next
        message can only be the client leaving. It is watched only once the call has waited
        ``WATCH_DISCONNECT_AFTER_S``: most calls are answered sooner, and a watcher is a task.
        """
        size = sum(len(raw) for raw in raws)
        if self.queued_bytes + size > self.max_queued_bytes:
            raise Unavailable(
                f"the queue is full: this API process's queued calls hold {self.queued_bytes} "
                f"of its {self.max_queued_bytes} bytes",
                retry_after=1.0,
            )
        self.queued_bytes += size
        token = str(next(self._tokens))
        header.channel = self.channel
        header.token = token
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[token] = future
        entry_id = None
        file = None
        watcher: asyncio.Future | None = None

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(lambda _: _fail(future, ClientGone()))

        watching = loop.call_later(WATCH_DISCONNECT_AFTER_S, watch) if receive else None
        # A timer and a callback resolve the future instead of wrapping the wait in tasks or
        # timeout scopes: this runs for every request.
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            if self.files is not None and self.files.wanted(size):
                if size >= WRITE_IN_THREAD_BYTES:
                    file = await asyncio.to_thread(self.files.write, token, raws)
                else:
                    file = self.files.write(token, raws)
            if file is not None:
                header.file, header.sizes = file, [memoryview(raw).nbytes for raw in raws]
            fields = []
            for key, value in encode_call(header, [] if file else raws).items():
                fields += (key, value)
            try:
                entry_id = await self._enqueue(stream, fields, max_queue)
            except ResponseError as exc:
                if str(exc).startswith("OOM"):
                    # The queue's Redis is at its maxmemory and never evicts (an evicted call
                    # would be a lost call): it refuses new calls until queued ones are answered.
                    raise Unavailable(
                        "the queue is full: its Redis is at its memory limit", retry_after=1.0
                    ) from exc
                # Answering but not serving yet (LOADING its data after a restart, MISCONF,
                # READONLY): the caller may retry.
                raise Unavailable("the queue is unreachable") from exc
            except RedisError as exc:
                raise Unavailable("the queue is unreachable") from exc
            if entry_id is None:
                raise Unavailable("the model's queue is full", retry_after=1.0)
            reply = await future
            entry_id = None  # answered: the worker has deleted it
            if reply[0].error is not None:
                error = InferboxError(reply[0].error)
                error.status = reply[0].status
                raise error
            return reply
        finally:
            self.queued_bytes -= size
            timer.cancel()
            if watching is not None:
                watching.cancel()
            if watcher is not None:
                watcher.cancel()
            self._waiting.pop(token, None)
            if entry_id is not None:
                # Not answered: withdraw the call so no worker computes it for nobody.
                with contextlib.suppress(RedisError):
                    await self.commands.execute("XDEL", stream, entry_id)
            if file is not None:
                self.files.remove(file)


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    _fail(future, DeadlineExceeded(f"no answer within the deadline of {timeout_s * 1000:.0f} ms"))


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
