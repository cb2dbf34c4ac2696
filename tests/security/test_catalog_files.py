"""A worker loads only the file the registry stored for a version's digest: whoever can write
the catalog in Redis cannot make it load a job input (never validated) or a file of its disk."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from inferbox.models.spec import spec_from_onnx
from inferbox.registry.objects import object_key
from inferbox.testing import onnx_models
from inferbox.worker.model_cache import ModelCache, UntrustedModelFile
from tests.support.s3 import new_bucket

pytestmark = pytest.mark.integration


@pytest.fixture
def store(s3_endpoint):
    return new_bucket(s3_endpoint)


def test_only_the_stored_model_file_of_the_digest_is_loaded(store, tmp_path):
    path = onnx_models.mlp(tmp_path / "m.onnx")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    store.put_file(path, sha, len(data))
    # A "job input" holding the same bytes: any user with the jobs scope can upload one.
    store.client.fput_object(store.bucket, "jobs/inputs/planted.npy", str(path))
    spec = msgspec.structs.replace(
        spec_from_onnx("m", 1, path), object_key=object_key(sha), sha256=sha, size=len(data)
    )
    cache = ModelCache(tmp_path / "cache", store)
    assert cache.path_for(spec).read_bytes() == data
    planted = msgspec.structs.replace(spec, object_key="jobs/inputs/planted.npy")
    with pytest.raises(UntrustedModelFile, match="not the stored model file"):
        cache.path_for(planted)


def test_a_file_on_the_workers_disk_only_when_allowed(store, tmp_path):
    path = onnx_models.mlp(tmp_path / "m.onnx")
    spec = spec_from_onnx("m", 1, path)
    assert spec.object_key is None
    with pytest.raises(UntrustedModelFile, match="file on the worker's disk"):
        ModelCache(tmp_path / "cache", store).path_for(spec)
    assert ModelCache(tmp_path / "cache", store, local_paths=True).path_for(spec) == path
