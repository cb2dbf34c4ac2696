"""Minimal Redis connections for the interactive lane's hot paths, parsed by hiredis.

Every synchronous call makes one enqueue and receives one reply. Through redis-py's asyncio
client each of those costs tens of microseconds of Python (pool checkout, retry wrappers,
response callbacks) — as much as the rest of the request. Here a command is packed and
written straight to the transport, commands of concurrent requests travel back to back on one
connection (Redis answers in order), and hiredis parses the replies.

The worker's batch loop has the same problem in blocking form: a redis-py pipeline of a
batch's replies, acknowledgements and the next read cost about three times the Python of
packing the commands and reading hiredis's replies directly (``BlockingRespConnection``).
redis-py still serves everything off the hot paths.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError


def pack(*args: bytes | str | int | float) -> list[bytes]:
    """RESP array of bulk strings, as parts for ``transport.writelines`` (no big copies)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes | bytearray | memoryview):
            arg = str(arg).encode()
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return parts


def handshake(options: dict) -> list[tuple]:
    """The commands a new connection sends first: ``AUTH`` and ``SELECT`` where the options
    (redis-py connection keywords, as ``parse_url`` returns them) ask for them."""
    commands: list[tuple] = []
    if options.get("password"):
        user = options.get("username")
        commands.append(("AUTH", *([user] if user else []), options["password"]))
    if options.get("db"):
        commands.append(("SELECT", options["db"]))
    return commands


class _Protocol(asyncio.Protocol):
    def __init__(self, on_push: Callable[[list], None] | None):
        self.reader = hiredis.Reader(replyError=ResponseError)
        # Futures, or stand-ins with the same three methods (``RespConnection.send_packed``).
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
            for command in handshake(self.options):
                await self._send(protocol, *command)
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

    def send_packed(self, parts: list[bytes], waiter=None):
        """Queue one command already packed (``pack``'s output, or the same bytes made another
        way) on the open connection and return what receives its reply, without waiting (the
        caller bounds the wait); ``ConnectionError`` when no connection is open (``connect``
        first).

        The reply goes to a new future, or to ``waiter``: any object with ``done()``,
        ``set_result()`` and ``set_exception()``, called as the reply is read (no future, no
        callback scheduled on the loop) for a reply nobody awaits.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost.done():
            raise RedisConnectionError("not connected to redis")
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        protocol.waiting.append(waiter)
        protocol.write(parts)
        return waiter

    async def execute(self, *args):
        """Send one command and wait for its reply (errors raise ``ResponseError``)."""
        protocol = self._protocol
        if protocol is None or protocol.lost.done():
            protocol = await self.connect()
        return await self._send(protocol, *args)

    async def pipeline(self, *commands: tuple) -> list:
        """Send commands back to back and wait for all their replies, in order.

        A command Redis refused raises its ``ResponseError`` once every reply is in, so no
        reply is left unread; a lost connection raises ``ConnectionError`` the same way.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost.done():
            protocol = await self.connect()
        futures = [self._send(protocol, *args) for args in commands]
        replies: list = []
        error: BaseException | None = None
        for future in futures:
            try:
                replies.append(await future)
            except RedisError as exc:
                error = error or exc
                replies.append(exc)
        if error is not None:
            raise error
        return replies

    def close(self) -> None:
        """Close the connection."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


class BlockingRespConnection:
    """One blocking Redis connection for one thread, sending commands in batches.

    ``options`` are redis-py connection keywords (``host``, ``port``, ``username``,
    ``password``, ``db``), as ``redis.Redis.connection_pool.connection_kwargs`` holds them.
    ``timeout_s`` bounds a wait for replies beyond any ``BLOCK`` the commands ask for.
    Errors raise redis-py's exceptions, so callers handle both connections alike.
    """

    def __init__(self, options: dict, timeout_s: float = 30.0):
        self.options = options
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None
        self._buffer = bytearray(1 << 16)

    def _connect(self) -> None:
        try:
            sock = socket.create_connection(
                (self.options.get("host") or "127.0.0.1", self.options.get("port") or 6379),
                timeout=self.timeout_s,
            )
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = sock, hiredis.Reader(replyError=ResponseError)
        setup = [pack(*command) for command in handshake(self.options)]
        if setup:
            self.execute(setup)

    def execute(self, commands: list[list[bytes]], wait_s: float = 0.0) -> list:
        """Send packed commands (``pack``'s output) in one write; their replies, in order.

        ``wait_s``: how long the server may hold a reply (a ``BLOCK``), added to the timeout.
        A command Redis refused raises its ``ResponseError`` once every reply is read, so the
        connection stays in step; a broken or silent connection (``socket.timeout`` is an
        ``OSError``) raises ``ConnectionError`` and is closed, to be opened again by the next
        call.
        """
        if self._sock is None:
            self._connect()
        sock, reader = self._sock, self._reader
        replies = []
        try:
            sock.settimeout(self.timeout_s + wait_s)
            sock.sendall(b"".join(part for command in commands for part in command))
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is False:
                    received = sock.recv_into(self._buffer)
                    if received == 0:
                        raise OSError("closed by the server")
                    reader.feed(self._buffer, 0, received)
                    continue
                replies.append(reply)
        except OSError as exc:
            self.close()
            raise RedisConnectionError(f"connection to redis lost: {exc}") from exc
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        """Close the connection (the next ``execute`` opens a new one)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None
