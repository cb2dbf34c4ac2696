"""Receive an uploaded body into a temporary file while hashing it (``spool``).

The API streams a request body through here, so a 2 GB model is never held in memory: bytes
are buffered up to 1 MiB, then written and hashed in a thread (hashlib releases the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path
from typing import NamedTuple

from inferbox.errors import PayloadTooLarge

_FLUSH = 1 << 20


class Spooled(NamedTuple):
    """A received body on disk; the caller removes ``path`` when done with it."""

    path: Path
    sha256: str
    size: int


async def spool(chunks: AsyncIterable[bytes], dest_dir: Path, max_bytes: int) -> Spooled:
    """Write ``chunks`` to a new file in ``dest_dir``; return its path, sha256 and size.

    Past ``max_bytes`` it raises ``PayloadTooLarge``; on that or any other error (a client that
    disconnects, a full disk) the partial file is removed.
    """
    fd, name = await asyncio.to_thread(_create, dest_dir)
    digest = hashlib.sha256()
    size = 0
    buffer: list[bytes] = []
    buffered = 0

    def write(data: bytes) -> None:
        digest.update(data)
        _write_all(fd, data)

    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the upload exceeds the limit of {max_bytes} bytes")
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= _FLUSH:
                await asyncio.to_thread(write, b"".join(buffer))
                buffer.clear()
                buffered = 0
        if buffer:
            await asyncio.to_thread(write, b"".join(buffer))
        await asyncio.to_thread(os.fsync, fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)  # no await here: this also runs when the task is cancelled
        raise
    os.close(fd)
    return Spooled(Path(name), digest.hexdigest(), size)


def _create(dest_dir: Path) -> tuple[int, str]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=".upload.", suffix=".part", dir=dest_dir)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
