"""spool: a streamed body to a temporary file, hashed, size-limited."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from inferbox.errors import PayloadTooLarge
from inferbox.registry.upload import spool

pytestmark = pytest.mark.integration


async def _chunks(data: bytes, size: int, fail_after: int | None = None):
    for offset in range(0, len(data), size):
        if fail_after is not None and offset >= fail_after:
            raise ConnectionResetError("client went away")
        yield data[offset : offset + size]


async def test_spool_hashes_and_writes(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    path, sha, size = await spool(_chunks(data, 65536), tmp_path / "uploads", len(data))
    assert path.parent == tmp_path / "uploads"
    assert path.read_bytes() == data
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))


async def test_spool_empty_body(tmp_path: Path) -> None:
    result = await spool(_chunks(b"", 10), tmp_path, 10)
    assert result.size == 0 and result.sha256 == hashlib.sha256(b"").hexdigest()


async def test_limit_removes_the_partial_file(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    with pytest.raises(PayloadTooLarge) as caught:
        await spool(_chunks(data, 65536), tmp_path, (2 << 20) - 1)
    assert caught.value.status == 413
    assert os.listdir(tmp_path) == []


async def test_broken_stream_removes_the_partial_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    with pytest.raises(ConnectionResetError):
        await spool(_chunks(data, 65536, fail_after=(3 << 20) - 65536), tmp_path, 10 << 20)
    assert os.listdir(tmp_path) == []
