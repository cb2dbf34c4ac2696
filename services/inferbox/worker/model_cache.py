"""Local copies of model files, fetched from the object store and checked by sha256.

Files are stored by content (``<cache>/<sha256>.onnx``), so versions that share a file share
the copy. A copy is verified when fetched; a copy that later fails to load is treated as
corrupt, removed and fetched again once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import structlog

from inferbox.models.spec import ModelSpec

log = structlog.get_logger(__name__)


class Fetcher(Protocol):
    """What the cache needs from an object store."""

    def fetch(self, key: str, dest_path: Path, expected_sha256: str) -> None:
        """Download ``key`` to ``dest_path`` atomically, raising if its sha256 differs."""


class ModelCache:
    """Maps a spec to a local file, downloading it when absent."""

    def __init__(self, root: Path, fetcher: Fetcher | None):
        self.root = root
        self.fetcher = fetcher
        self._lock = threading.Lock()

    def path_for(self, spec: ModelSpec) -> Path:
        """Where the spec's file lives locally (fetched now if needed)."""
        if spec.object_key is None:
            return Path(spec.path)
        if self.fetcher is None:
            raise RuntimeError("this worker has no object store configured")
        target = self.root / f"{spec.sha256}.onnx"
        with self._lock:
            if target.is_file() and target.stat().st_size == spec.size:
                return target
            self.root.mkdir(parents=True, exist_ok=True)
            log.info(
                "fetching model file", model=spec.name, version=spec.version, size_bytes=spec.size
            )
            self.fetcher.fetch(spec.object_key, target, spec.sha256)
        return target

    def discard(self, spec: ModelSpec) -> None:
        """Remove a local copy believed corrupt, so the next ``path_for`` fetches it again."""
        if spec.object_key is None:
            return
        with self._lock:
            (self.root / f"{spec.sha256}.onnx").unlink(missing_ok=True)
