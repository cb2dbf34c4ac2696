"""A minimal asyncio Redis connection for the API's hot path, parsed by hiredis.

Every synchronous call makes one enqueue and receives one reply. Through redis-py's asyncio
client each of those costs tens of microseconds of Python (pool checkout, retry wrappers,
response callbacks) — as much as the rest of the request. Here a command is packed and
written straight to the transport, commands of concurrent requests travel back to back on one
connection (Redis answers in order), and hiredis parses the replies. redis-py still serves
everything off the hot path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


def pack(*args: bytes | str | int | float) -> list[bytes]:
    """RESP array of bulk strings, as parts for ``transport.writelines`` (no big copies)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes | bytearray | memoryview):
            arg = str(arg).encode()
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return parts


class _Protocol(asyncio.Protocol):
    def __init__(self, on_push: Callable[[list], None] | None):
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[asyncio.Future] = deque()
        self.on_push = on_push
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        # Commands written in one event-loop turn leave in one write (one syscall).
        self.outbox: list[bytes] = []

    def write(self, parts: list[bytes]) -> None:
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox += parts

    def flush(self) -> None:
        parts, self.outbox = self.outbox, []
        if parts and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if self.waiting:
                future = self.waiting.popleft()
                if future.done():
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            elif self.on_push is not None:
                self.on_push(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"connection to redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)


class RespConnection:
    """One pipelined Redis connection, reconnected on demand.

    ``on_push`` receives replies nobody waits for: pub/sub messages on a subscribed
    connection.
    """

    def __init__(self, url: str, on_push: Callable[[list], None] | None = None):
        self.options = parse_url(url)
        self.on_push = on_push
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def connect(self) -> _Protocol:
        """Open the connection (authenticating and selecting the database) unless open."""
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost.done():
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self.on_push),
                    self.options.get("host", "127.0.0.1"),
                    self.options.get("port", 6379),
                )
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
            self._protocol = protocol
            password = self.options.get("password")
            if password:
                user = self.options.get("username")
                await self._send(protocol, "AUTH", *([user] if user else []), password)
            if self.options.get("db"):
                await self._send(protocol, "SELECT", self.options["db"])
            return protocol

    @property
    def lost(self) -> asyncio.Future | None:
        """Resolves when the current connection drops (None before the first connect)."""
        return self._protocol.lost if self._protocol else None

    @staticmethod
    def _send(protocol: _Protocol, *args) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.write(pack(*args))
        return future

    async def execute(self, *args):
        """Send one command and wait for its reply (errors raise ``ResponseError``)."""
        protocol = self._protocol
        if protocol is None or protocol.lost.done():
            protocol = await self.connect()
        return await self._send(protocol, *args)

    def close(self) -> None:
        """Close the connection."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
