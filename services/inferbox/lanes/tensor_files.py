"""Large inputs through a directory the API and the workers share (a tmpfs), not through Redis.

A 224x224 image is 602 KB as FP32. Through a stream it is copied about eight times: into the
API's socket, into Redis's query buffer, into the stream, into the worker's reply buffer,
through the worker's socket, into hiredis's buffer, into a ``bytes`` object and into the batch;
on an H200 the worker's loop spent 698 µs and Redis 488 µs of CPU per such row, against 238 µs
of GPU time (docs/benchmarks.md). Written to a file in a shared tmpfs instead, the inputs are
copied once by the API and read in place by the worker (a memory map), and Redis carries only
the call's header, which names the file and the inputs' sizes.

The API process that wrote a file removes it once the call is over (answered, expired or
withdrawn), whatever the worker did; the files of an API process that died are swept by the
others once no call can still wait for them. A file that cannot be written (the directory
full or missing) makes its call travel through Redis as before: nothing is refused for it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

NAME = re.compile(r"[0-9a-f]{32}-[0-9]+")
"""How the files are named: the API process's id and the call's token. The sweep removes only
such names, so the directory may be one other programs use too (``/dev/shm``)."""


class TensorFiles:
    """The API side: writes a call's inputs into one file, removes it, sweeps orphans."""

    def __init__(self, directory: str | os.PathLike, min_bytes: int, process_id: str):
        self.directory = Path(directory)
        self.min_bytes = min_bytes
        self.process_id = process_id
        self._failing = False

    def wanted(self, size: int) -> bool:
        """Whether inputs of ``size`` bytes in all should travel as a file."""
        return size >= self.min_bytes

    def write(self, token: str, raws: list[bytes | memoryview]) -> str | None:
        """Write ``raws`` back to back into a new file; its name, or None where it could not be
        written (the call then travels through Redis)."""
        name = f"{self.process_id}-{token}"
        path = self.directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            self._note_failure(exc)
            return None
        try:
            with os.fdopen(fd, "wb", buffering=0) as file:
                for raw in raws:
                    view = memoryview(raw).cast("B")
                    while view:  # a write to a pipe-like file may be partial
                        view = view[file.write(view) :]
        except OSError as exc:  # the tmpfs is full: no half-written file stays behind
            with contextlib.suppress(OSError):
                path.unlink()
            self._note_failure(exc)
            return None
        self._failing = False
        return name

    def _note_failure(self, exc: OSError) -> None:
        if not self._failing:  # once per episode, not once per call
            log.warning(
                "tensor files cannot be written; inputs travel through redis",
                directory=str(self.directory),
                error=str(exc),
            )
        self._failing = True

    def remove(self, name: str) -> None:
        """Remove a call's file (gone already is fine)."""
        with contextlib.suppress(OSError):
            (self.directory / name).unlink()

    def sweep(self, older_than_s: float) -> int:
        """Remove the files of any API process last written more than ``older_than_s`` ago
        (their calls are over: no deadline is that long); how many were removed."""
        removed = 0
        cutoff = time.time() - older_than_s
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if not NAME.fullmatch(entry.name):
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            log.info("removed tensor files of finished calls", count=removed)
        return removed


class TensorFileMissing(LookupError):
    """A queued call names a tensor file this worker cannot open."""


def read_inputs(directory: str | os.PathLike | None, name: str, sizes: list[int]) -> list:
    """A call's inputs as read-only views of its file, mapped into memory (no copy); raises
    ``TensorFileMissing`` where the file is not there (the call is over and its API removed
    it, or this worker does not share the API's directory)."""
    if not directory or not NAME.fullmatch(name):
        raise TensorFileMissing(
            f"the call's inputs are in tensor file {name!r} and this worker has no tensor "
            "directory (INFERBOX_TENSOR_DIR must name the same directory on the API and the "
            "workers)"
        )
    try:
        with open(Path(directory) / name, "rb") as file:
            total = sum(sizes)
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if total else b""
    except FileNotFoundError as exc:
        raise TensorFileMissing(f"tensor file {name!r} is not in {directory}") from exc
    if len(mapped) != total:
        raise ValueError(f"tensor file {name!r} holds {len(mapped)} bytes, not {total}")
    view = memoryview(mapped)
    parts, offset = [], 0
    for size in sizes:
        parts.append(view[offset : offset + size])
        offset += size
    return parts
