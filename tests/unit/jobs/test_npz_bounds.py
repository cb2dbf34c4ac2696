"""``.npz`` job inputs are checked against what they unpack to before anything is unpacked."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from inferbox.errors import BadRequest
from inferbox.jobs.inputs import inspect

pytestmark = pytest.mark.unit


def test_an_archive_that_unpacks_past_the_limit_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((4_000_000,), np.float32))  # 16 MB in ~16 KB
    assert path.stat().st_size < 100_000
    with pytest.raises(BadRequest, match="unpacks to 16000128 bytes, at most 1000000"):
        inspect(path, "npz", max_unpacked_bytes=1_000_000)
    rows, arrays = inspect(path, "npz", max_unpacked_bytes=20_000_000)
    assert rows == 4_000_000 and arrays["x"]["datatype"] == "FP32"


def test_a_member_larger_than_its_array_is_refused(tmp_path):
    plain = tmp_path / "x.npy"
    np.save(plain, np.arange(10, dtype=np.int64))
    path = tmp_path / "padded.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", plain.read_bytes() + b"\0" * 1_000_000)
    with pytest.raises(BadRequest, match="its array needs"):
        inspect(path, "npz")
