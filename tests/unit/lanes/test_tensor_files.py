"""Tensor files: written back to back, read in place, removed, swept (no Redis needed)."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from inferbox.lanes.tensor_files import TensorFileMissing, TensorFiles, read_inputs
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_call, encode_call

pytestmark = pytest.mark.unit


@pytest.fixture
def files(tmp_path) -> TensorFiles:
    return TensorFiles(tmp_path, 1024, uuid.uuid4().hex)


def test_inputs_are_written_back_to_back_and_read_in_place(files, tmp_path):
    big = np.random.default_rng(0).standard_normal(5 << 18).astype(np.float32)  # 5 MiB
    raws = [b"abc", memoryview(big), b""]
    name = files.write("7", raws)
    assert name == f"{files.process_id}-7"
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    parts = read_inputs(tmp_path, name, [3, big.nbytes, 0])
    assert bytes(parts[0]) == b"abc" and bytes(parts[2]) == b""
    assert np.array_equal(np.frombuffer(parts[1], np.float32), big)
    with pytest.raises(TypeError):  # read-only: a worker cannot change what the API wrote
        parts[0][0] = 0
    files.remove(name)
    files.remove(name)  # gone already is fine
    assert not (tmp_path / name).exists()


def test_only_calls_of_at_least_the_threshold_travel_as_files(files):
    assert not files.wanted(1023) and files.wanted(1024)


def test_an_unusable_directory_gives_no_file_and_the_call_travels_through_redis(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    files = TensorFiles(not_a_directory, 1, uuid.uuid4().hex)
    assert files.write("1", [b"x" * 10]) is None
    assert files.write("2", [b"x" * 10]) is None  # and stays quiet about it


def test_a_missing_file_or_directory_is_named(tmp_path, files):
    with pytest.raises(TensorFileMissing, match="INFERBOX_TENSOR_DIR"):
        read_inputs(None, f"{files.process_id}-1", [1])
    with pytest.raises(TensorFileMissing, match="is not in"):
        read_inputs(tmp_path, f"{files.process_id}-1", [1])
    with pytest.raises(TensorFileMissing):  # never a path outside the directory
        read_inputs(tmp_path, "../etc/passwd", [1])


def test_a_file_of_another_size_than_its_header_says_is_refused(files, tmp_path):
    name = files.write("1", [b"x" * 10])
    with pytest.raises(ValueError, match="holds 10 bytes, not 11"):
        read_inputs(tmp_path, name, [5, 6])


def test_the_sweep_removes_old_tensor_files_only(files, tmp_path):
    old = files.write("1", [b"x"])
    fresh = files.write("2", [b"x"])
    other = tmp_path / "someone-elses"
    other.write_bytes(b"keep")
    past = time.time() - 1000
    os.utime(tmp_path / old, (past, past))
    os.utime(other, (past, past))
    assert files.sweep(older_than_s=500) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh, other.name])


def test_a_header_naming_a_file_carries_one_size_per_input():
    header = CallHeader(
        channel="c",
        token="t",
        deadline=1.0,
        inputs=[TensorMeta("x", "FP32", [1, 2])],
        file="f",
        sizes=[8],
    )
    fields = encode_call(header, [])
    assert list(fields) == [b"h"]
    decoded, raws = decode_call(fields)
    assert decoded.file == "f" and decoded.sizes == [8] and raws == []
    header.sizes = [8, 8]
    with pytest.raises(ValueError, match="one size per input"):
        decode_call(encode_call(header, []))
