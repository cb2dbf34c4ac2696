"""The worker's local copies of model files (``worker/model_cache.py``) against a real S3 API:
a copy that fails to load is fetched again, and the FP16 copy made from it converted again."""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
import pytest

from inferbox.models.spec import ModelConfig, spec_from_onnx
from inferbox.registry.objects import object_key
from inferbox.testing import onnx_models
from inferbox.worker.model_cache import ModelCache, fp16_copies
from inferbox.worker.runtime import load_model
from tests.support.s3 import new_bucket

pytestmark = pytest.mark.integration


@pytest.fixture
def stored(s3_endpoint, tmp_path):
    """A stored FP16-served model version, and the cache of a worker that has not fetched it."""
    path = onnx_models.mlp(tmp_path / "m.onnx")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    store = new_bucket(s3_endpoint)
    store.put_file(path, sha, len(data))
    spec = spec_from_onnx("m", 1, path)
    spec = msgspec.structs.replace(
        spec,
        object_key=object_key(sha),
        sha256=sha,
        size=len(data),
        config=msgspec.structs.replace(spec.config or ModelConfig(), fp16=True),
    )
    return spec, ModelCache(tmp_path / "cache", store)


def test_a_discarded_copy_takes_its_fp16_copy_with_it(stored):
    spec, cache = stored
    path = cache.path_for(spec)
    load_model(spec, path=path)
    [copy] = [p for p in fp16_copies(path, spec.sha256) if p.exists()]
    copy.write_bytes(b"not a model")  # a copy damaged on disk
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own error for a bad file
        load_model(spec, path=path)
    cache.discard(spec)
    assert not path.exists() and not any(p.exists() for p in fp16_copies(path, spec.sha256))
    # What the worker does next (LocalWorker._create_session): fetch and load again.
    model = load_model(spec, path=cache.path_for(spec))
    x = np.ones((2, 64), np.float32)
    assert model.run({"x": x})[1][0].shape[0] == 2
