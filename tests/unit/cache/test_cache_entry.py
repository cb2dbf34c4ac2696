"""A stored answer's layout: outputs come back bit for bit, only under their generation."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.cache.entry import decode_entry, encode_entry
from inferbox.lanes.wire import TensorMeta

pytestmark = pytest.mark.unit

GENERATION = b"0123456789abcdef"


def test_round_trip_keeps_every_byte():
    y = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    z = np.array([[1], [2], [3]], np.int64)
    metas = [TensorMeta("y", "FP32", [3, 4]), TensorMeta("z", "INT64", [3, 1])]
    value = encode_entry(GENERATION, metas, [y.tobytes(), memoryview(z.tobytes())])
    got_metas, raws = decode_entry(value, GENERATION)
    assert got_metas == metas
    assert bytes(raws[0]) == y.tobytes() and bytes(raws[1]) == z.tobytes()


def test_another_generation_is_never_served():
    value = encode_entry(GENERATION, [TensorMeta("y", "FP32", [1])], [b"\x00" * 4])
    assert decode_entry(value, b"fedcba9876543210") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda v: b"\x02" + v[1:],  # another format
        lambda v: v[:-1],  # truncated
        lambda v: v + b"\x00",  # trailing bytes
        lambda v: v[:17] + b"\xff\xff\xff\xff" + v[21:],  # header length past the end
        lambda v: b"",
    ],
)
def test_a_malformed_entry_is_a_miss(damage):
    value = encode_entry(GENERATION, [TensorMeta("y", "FP32", [1])], [b"\x00" * 4])
    assert decode_entry(damage(value), GENERATION) is None


def test_a_generation_has_sixteen_bytes():
    with pytest.raises(ValueError):
        encode_entry(b"short", [], [])
