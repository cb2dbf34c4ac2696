"""Local copies of model files, fetched from the object store and checked by sha256.

Files are stored by content (``<cache>/<sha256>.onnx``), so versions that share a file share
the copy. A copy is verified when fetched; a copy that later fails to load is treated as
corrupt, removed and fetched again once.

The catalog says which file to load, and the catalog is in Redis: a worker loads only the
object the registry stores for that digest (``models/sha256/<sha256>``, written after the file
passed validation), never another object of the bucket (a job input, say) and never a file of
its own disk unless told to (``local_paths``, for tests and development).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Protocol

import structlog

from inferbox.models.spec import ModelSpec
from inferbox.registry.objects import object_key

log = structlog.get_logger(__name__)


class Fetcher(Protocol):
    """What the cache needs from an object store."""

    def fetch(self, key: str, dest_path: Path, expected_sha256: str) -> None:
        """Download ``key`` to ``dest_path`` atomically, raising if its sha256 differs."""


def fp16_copies(path: Path, sha256: str) -> list[Path]:
    """Where the FP16 copy of the model file at ``path`` is kept (``runtime.fp16_copy``): beside
    it, else in the temporary folder (where its folder is read-only)."""
    name = f"{sha256[:16] or path.stem}.fp16.onnx"
    return [path.parent / name, Path(tempfile.gettempdir()) / name]


class UntrustedModelFile(ValueError):
    """The catalog names a file the registry did not store for this version."""


class ModelCache:
    """Maps a spec to a local file, downloading it when absent."""

    def __init__(self, root: Path, fetcher: Fetcher | None, local_paths: bool = False):
        self.root = root
        self.fetcher = fetcher
        self.local_paths = local_paths
        self._lock = threading.Lock()

    def path_for(self, spec: ModelSpec) -> Path:
        """Where the spec's file lives locally (fetched now if needed); raises
        ``UntrustedModelFile`` for a file the registry did not store for that digest."""
        if spec.object_key is None:
            if not self.local_paths:
                raise UntrustedModelFile(
                    "the catalog names a file on the worker's disk, not a stored model file"
                    " (INFERBOX_WORKER_LOCAL_MODEL_PATHS is off)"
                )
            return Path(spec.path)
        if spec.object_key != object_key(spec.sha256):
            raise UntrustedModelFile(
                f"the catalog names {spec.object_key[:200]!r}, not the stored model file of"
                f" its digest ({object_key(spec.sha256)})"
            )
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
        """Remove a local copy believed corrupt, and the FP16 copy made from it, so the next
        ``path_for`` fetches it again (and the next FP16 load converts it again)."""
        if spec.object_key is None:
            return
        target = self.root / f"{spec.sha256}.onnx"
        with self._lock:
            target.unlink(missing_ok=True)
            for copy in fp16_copies(target, spec.sha256):
                copy.unlink(missing_ok=True)
