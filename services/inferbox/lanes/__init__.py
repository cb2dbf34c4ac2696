"""The interactive lane: synchronous calls queued in Redis Streams, replies over pub/sub."""
