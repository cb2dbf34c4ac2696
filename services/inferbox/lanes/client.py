"""API side of the interactive lane: queue a call, then wait for its reply without polling.

Each API process subscribes once to its own reply channel; one task reads every reply and
resolves the future of the request waiting for it. Queueing is one round trip: a Lua script
refuses the call when the model's queue is full, else appends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from inferbox.errors import DeadlineExceeded, InferboxError, Unavailable
from inferbox.keys import Keys
from inferbox.lanes.wire import (
    CallHeader,
    ReplyHeader,
    decode_reply,
    encode_call,
    unbundle_replies,
)

log = structlog.get_logger(__name__)

# XLEN counts queued and running calls (workers delete entries once answered).
_ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


class _EnqueueBatcher:
    """Sends the enqueues of all requests that arrive in one event-loop turn as one pipeline.

    Under load many requests of one API process queue their calls within the same turn;
    one round trip (and one pass through the client library) then serves all of them.
    """

    def __init__(self, client: aioredis.Redis, script: str):
        self.client = client
        self.script = script
        self.sha: str | None = None
        self._pending: list[tuple[str, list, asyncio.Future]] = []

    async def enqueue(self, stream: str, args: list) -> bytes | None:
        """The new entry's id, or None when the queue is full."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._start_flush)
        self._pending.append((stream, args, future))
        return await future

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._flush(batch))
        # Keep a reference until done so the task is not collected mid-flight.
        _FLUSHES.add(task)
        task.add_done_callback(_FLUSHES.discard)

    async def _flush(self, batch: list[tuple[str, list, asyncio.Future]]) -> None:
        try:
            if self.sha is None:
                self.sha = await self.client.script_load(self.script)
            results = await self._run(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted or was flushed: load the script again, once.
                self.sha = await self.client.script_load(self.script)
                results = await self._run(batch)
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run(self, batch) -> list:
        pipe = self.client.pipeline(transaction=False)
        for stream, args, _ in batch:
            pipe.evalsha(self.sha, 1, stream, *args)
        return await pipe.execute(raise_on_error=False)


_FLUSHES: set[asyncio.Task] = set()


class ClientGone(Exception):
    """The HTTP client disconnected before its answer; its queued call was withdrawn."""


class InteractiveClient:
    """Queues synchronous calls and routes their replies back to the waiting requests."""

    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.client = client
        self.process_id = uuid.uuid4().hex
        self.channel = keys.reply_channel(self.process_id)
        self._batcher = _EnqueueBatcher(client, _ENQUEUE)
        self._waiting: dict[str, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._reader: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe to this process's reply channel and start routing replies."""
        self._reader = asyncio.create_task(self._read_replies(), name="reply-reader")
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)

    async def close(self) -> None:
        """Stop routing replies; waiting requests fail as unavailable."""
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(Unavailable("the API is shutting down"))

    async def _read_replies(self) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                async for message in pubsub.listen():
                    self._resolve(message["data"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except RedisError as exc:
                # Replies published while we were away are lost; their callers time out (504).
                log.warning("reply channel lost; resubscribing", error=str(exc))
                await pubsub.aclose()
                await asyncio.sleep(0.5)

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

    async def call(
        self,
        stream: str,
        header: CallHeader,
        raws: list[bytes],
        *,
        max_queue: int,
        timeout_s: float,
        disconnected: asyncio.Future | None = None,
    ) -> tuple[ReplyHeader, list[memoryview]]:
        """Queue one call and wait for its reply, its deadline, or the client's departure."""
        token = str(next(self._tokens))
        header.channel = self.channel
        header.token = token
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[token] = future
        entry_id = None
        # A timer and a callback resolve the future instead of wrapping the wait in tasks or
        # timeout scopes: this runs for every request.
        timer = loop.call_later(
            timeout_s,
            _fail,
            future,
            DeadlineExceeded(f"no answer within the deadline of {timeout_s * 1000:.0f} ms"),
        )
        try:
            fields = encode_call(header, raws)
            args = [max_queue]
            for key, value in fields.items():
                args += (key, value)
            try:
                entry_id = await self._batcher.enqueue(stream, args)
            except RedisConnectionError as exc:
                raise Unavailable("the queue is unreachable") from exc
            if entry_id is None:
                raise Unavailable("the model's queue is full", retry_after=1.0)
            if disconnected is not None:
                disconnected.add_done_callback(lambda _: _fail(future, ClientGone()))
            reply = await future
            entry_id = None  # answered: the worker has deleted it
            if reply[0].error is not None:
                error = InferboxError(reply[0].error)
                error.status = reply[0].status
                raise error
            return reply
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
            if entry_id is not None:
                # Not answered: withdraw the call so no worker computes it for nobody.
                with contextlib.suppress(RedisError):
                    await self.client.xdel(stream, entry_id)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
