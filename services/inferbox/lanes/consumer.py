"""Worker side of the interactive lane: read calls in batches, claim orphans, reply, acknowledge."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import structlog

from inferbox.keys import CONSUMER_GROUP, LANES, Keys
from inferbox.lanes.resp import BlockingRespConnection, pack
from inferbox.lanes.tensor_files import TensorFileMissing, read_inputs
from inferbox.lanes.wire import (
    CallHeader,
    ReplyHeader,
    bundle_replies,
    decode_call,
    encode_reply,
)

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Call:
    """One queued synchronous call as a worker received it."""

    stream: str
    entry_id: bytes
    header: CallHeader
    raws: list[bytes]

    @property
    def enqueued(self) -> float:
        """Unix time the API queued it (the stream entry id starts with milliseconds)."""
        return int(self.entry_id.split(b"-", 1)[0]) / 1000.0


class LaneConsumer:
    """Reads one model version's streams as one consumer of the shared group.

    One per batch-loop thread: reads, replies and acknowledgements travel on the consumer's own
    ``BlockingRespConnection``; the rare commands (groups, claims) go through ``client``.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        model: str,
        version: int,
        consumer: str,
        tensor_dir: str | None = None,
    ):
        self.client = client
        self.tensor_dir = tensor_dir
        """The directory shared with the API where large inputs arrive as files."""
        self.consumer = consumer
        self.streams = [keys.stream(model, version, lane) for lane in LANES]
        self._claim_cursor = {stream: b"0-0" for stream in self.streams}
        self._connection = BlockingRespConnection(client.connection_pool.connection_kwargs)
        self._read_tail = [*self.streams, *(">" for _ in self.streams)]
        # Replies and acknowledgements not sent yet (packed commands): they travel with the
        # next read, so a busy worker spends one round trip per batch instead of two.
        self._outbox: list[list[bytes]] = []

    def ensure_groups(self) -> None:
        """Create the consumer group on each stream (and the stream), reading from the start."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, count: int, block_ms: int | None) -> tuple[list[Call], list[Call]]:
        """Up to ``count`` new calls from each lane: (high-priority, low-priority).

        ``block_ms`` None returns at once; otherwise waits that long for the first entry.
        """
        args = ["XREADGROUP", "GROUP", CONSUMER_GROUP, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        commands, self._outbox = self._outbox, []
        commands.append(pack(*args, "STREAMS", *self._read_tail))
        wait_s = (block_ms or 0) / 1000
        response = self._connection.execute(commands, wait_s)[-1]
        high: list[Call] = []
        low: list[Call] = []
        for stream, entries in response or ():
            name = stream.decode()
            target = high if name == self.streams[0] else low
            target.extend(self._decode(name, [(i, _pairs(f)) for i, f in entries]))
        return high, low

    def claim(self, min_idle_ms: int, count: int) -> list[Call]:
        """Calls delivered to some consumer and not acknowledged for ``min_idle_ms``."""
        claimed: list[Call] = []
        for stream in self.streams:
            # Redis 7 adds the ids of entries deleted while pending; Redis 6.2 has no third part.
            cursor, entries, *deleted = self.client.xautoclaim(
                stream,
                CONSUMER_GROUP,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id=self._claim_cursor[stream],
                count=count,
            )
            deleted = deleted[0] if deleted else []
            self._claim_cursor[stream] = cursor
            if deleted:
                # Entries deleted while pending (cancelled by a client that went away).
                self.client.xack(stream, CONSUMER_GROUP, *deleted)
            claimed.extend(self._decode(stream, entries))
        if claimed:
            log.info("claimed calls of another worker", count=len(claimed))
        return claimed

    def _decode(self, stream: str, entries) -> list[Call]:
        """Calls of ``(entry id, {field: value})`` pairs (empty fields: a deleted entry)."""
        calls = []
        for entry_id, fields in entries:
            if not fields:
                # Deleted by the API after delivery (its client disconnected): nothing to run.
                self._outbox.append(pack("XACK", stream, CONSUMER_GROUP, entry_id))
                continue
            try:
                header, raws = decode_call(fields)
                if header.file is not None:
                    raws = read_inputs(self.tensor_dir, header.file, header.sizes)
            except TensorFileMissing as exc:
                self._missing_file(stream, entry_id, header, exc)
                continue
            except Exception:
                log.error("dropping a malformed queue entry", stream=stream, entry=entry_id)
                self.done([(stream, entry_id)])
                continue
            calls.append(Call(stream, entry_id, header, raws))
        return calls

    def _missing_file(self, stream: str, entry_id: bytes, header, exc: TensorFileMissing) -> None:
        if header.deadline <= time.time():
            # Its API removed the file when the call ended (deadline or client gone).
            self.done([(stream, entry_id)])
            return
        # Alive, and still no file: this worker does not share the API's directory. Say so
        # to the caller at once rather than leave it to its deadline.
        log.error("a call's tensor file is missing", error=str(exc), stream=stream)
        reply = ReplyHeader(token=header.token, error=str(exc), status=503)
        self.finish([(header.channel, encode_reply(reply))], [(stream, entry_id)])

    def finish(self, replies: list[tuple[str, bytes]], done: list[tuple[str, bytes]]) -> None:
        """Queue replies, then the acknowledgement and deletion of their entries.

        They are sent with the next ``read`` or ``flush``. Replies bound for the same API
        process travel as one message. Replying before acknowledging means a crash in between
        repeats work, never loses it.
        """
        by_channel: dict[str, list[bytes]] = {}
        for channel, message in replies:
            by_channel.setdefault(channel, []).append(message)
        for channel, messages in by_channel.items():
            self._outbox.append(pack("PUBLISH", channel, bundle_replies(messages)))
        self.done(done)

    def done(self, entries: list[tuple[str, bytes]]) -> None:
        """Queue the acknowledgement and deletion of entries without replying."""
        by_stream: dict[str, list[bytes]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            self._outbox.append(pack("XACK", stream, CONSUMER_GROUP, *ids))
            self._outbox.append(pack("XDEL", stream, *ids))

    def flush(self) -> None:
        """Send what ``finish`` and ``done`` queued, now."""
        if self._outbox:
            commands, self._outbox = self._outbox, []
            self._connection.execute(commands)

    def close(self) -> None:
        """Close the consumer's connection."""
        self._connection.close()


def _pairs(fields: list[bytes] | None) -> dict[bytes, bytes]:
    """An entry's fields as Redis sends them (``[field, value, ...]``) as a dictionary."""
    return dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {}
