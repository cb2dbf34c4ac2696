"""ObjectStore against an S3 server (moto): content-addressed put, verified atomic fetch."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from inferbox.registry.errors import ChecksumMismatch
from inferbox.registry.objects import object_key

pytestmark = pytest.mark.integration


def _file(tmp_path: Path, size: int = 300_000) -> tuple[Path, str]:
    data = os.urandom(size)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_put_then_fetch(objects, tmp_path: Path) -> None:
    path, sha = _file(tmp_path)
    key = objects.put_file(path, sha, path.stat().st_size)
    assert key == object_key(sha) == f"models/sha256/{sha}"
    assert objects.exists(key) and objects.size(key) == path.stat().st_size
    dest = tmp_path / "cache" / "fetched.onnx"
    assert objects.fetch(key, dest, sha) == dest
    assert dest.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["fetched.onnx"]


def test_existing_object_is_not_uploaded_again(objects, tmp_path: Path, monkeypatch) -> None:
    path, sha = _file(tmp_path)
    objects.put_file(path, sha, path.stat().st_size)

    def refuse(*args, **kwargs):
        raise AssertionError("uploaded twice")

    monkeypatch.setattr(objects.client, "fput_object", refuse)
    assert objects.put_file(path, sha, path.stat().st_size) == object_key(sha)


def test_tampered_object_is_detected(objects, tmp_path: Path) -> None:
    path, sha = _file(tmp_path, 5000)
    key = objects.put_file(path, sha, 5000)
    evil = b"x" * 5000
    objects.client.put_object(objects.bucket, key, io.BytesIO(evil), len(evil))
    dest = tmp_path / "cache" / "model.onnx"
    with pytest.raises(ChecksumMismatch, match="expected " + sha):
        objects.fetch(key, dest, sha)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temporary one
    # A wrong-sized object under the key is replaced by the next put.
    objects.client.put_object(objects.bucket, key, io.BytesIO(b"short"), 5)
    objects.put_file(path, sha, 5000)
    assert objects.fetch(key, dest, sha).read_bytes() == path.read_bytes()


def test_missing_object_and_delete(objects, tmp_path: Path) -> None:
    path, sha = _file(tmp_path, 1000)
    key = objects.put_file(path, sha, 1000)
    objects.delete(key)
    objects.delete(key)  # already gone: no error
    assert not objects.exists(key) and objects.size(key) is None
    dest = tmp_path / "cache" / "model.onnx"
    with pytest.raises(Exception, match=r"NoSuchKey|does not exist"):
        objects.fetch(key, dest, sha)
    assert list(dest.parent.iterdir()) == []
