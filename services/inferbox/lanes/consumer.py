"""Worker side of the interactive lane: read calls in batches, claim orphans, reply, acknowledge."""

from __future__ import annotations

import redis
import structlog

from inferbox.keys import CONSUMER_GROUP, LANES, Keys
from inferbox.lanes.wire import bundle_replies, decode_call
from inferbox.worker.batcher import Call

log = structlog.get_logger(__name__)


class LaneConsumer:
    """Reads one model version's streams as one consumer of the shared group."""

    def __init__(self, client: redis.Redis, keys: Keys, model: str, version: int, consumer: str):
        self.client = client
        self.consumer = consumer
        self.streams = [keys.stream(model, version, lane) for lane in LANES]
        self._claim_cursor = {stream: b"0-0" for stream in self.streams}
        # Replies and acknowledgements not sent yet: they travel with the next read, so a busy
        # worker spends one round trip per batch instead of two.
        self._outbox = client.pipeline(transaction=False)

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
        pipe, self._outbox = self._outbox, self.client.pipeline(transaction=False)
        pipe.xreadgroup(
            CONSUMER_GROUP,
            self.consumer,
            {stream: ">" for stream in self.streams},
            count=count,
            block=block_ms,
        )
        response = pipe.execute()[-1]
        high: list[Call] = []
        low: list[Call] = []
        for stream, entries in response or ():
            target = high if stream.decode() == self.streams[0] else low
            target.extend(self._decode(stream.decode(), entries))
        return high, low

    def claim(self, min_idle_ms: int, count: int) -> list[Call]:
        """Calls delivered to some consumer and not acknowledged for ``min_idle_ms``."""
        claimed: list[Call] = []
        for stream in self.streams:
            cursor, entries, deleted = self.client.xautoclaim(
                stream,
                CONSUMER_GROUP,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id=self._claim_cursor[stream],
                count=count,
            )[:3]
            self._claim_cursor[stream] = cursor
            if deleted:
                # Entries deleted while pending (cancelled by a client that went away).
                self.client.xack(stream, CONSUMER_GROUP, *deleted)
            claimed.extend(self._decode(stream, entries))
        if claimed:
            log.info("claimed calls of another worker", count=len(claimed))
        return claimed

    def _decode(self, stream: str, entries) -> list[Call]:
        calls = []
        for entry_id, fields in entries:
            if not fields:
                # Deleted by the API after delivery (its client disconnected): nothing to run.
                self.client.xack(stream, CONSUMER_GROUP, entry_id)
                continue
            try:
                header, raws = decode_call(fields)
            except Exception:
                log.error("dropping a malformed queue entry", stream=stream, entry=entry_id)
                self.done([(stream, entry_id)])
                continue
            calls.append(Call(stream, entry_id, header, raws))
        return calls

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
            self._outbox.publish(channel, bundle_replies(messages))
        self._ack(self._outbox, done)

    def done(self, entries: list[tuple[str, bytes]]) -> None:
        """Queue the acknowledgement and deletion of entries without replying."""
        self._ack(self._outbox, entries)

    def flush(self) -> None:
        """Send what ``finish`` and ``done`` queued, now."""
        if len(self._outbox):
            pipe, self._outbox = self._outbox, self.client.pipeline(transaction=False)
            pipe.execute()

    @staticmethod
    def _ack(pipe, entries: list[tuple[str, bytes]]) -> None:
        by_stream: dict[str, list[bytes]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            pipe.xack(stream, CONSUMER_GROUP, *ids)
            pipe.xdel(stream, *ids)
