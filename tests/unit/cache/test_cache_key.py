"""The response cache's key: everything that decides an answer changes it, nothing else does."""

from __future__ import annotations

import msgspec
import pytest

from inferbox.cache.key import admission_token, entry_digest, version_identity
from inferbox.lanes.wire import TensorMeta
from inferbox.models.spec import ModelConfig, ModelSpec, TensorSpec

pytestmark = pytest.mark.unit

SPEC = ModelSpec(
    name="m",
    version=3,
    path="",
    sha256="a" * 64,
    size=10,
    inputs=[TensorSpec("a", "FP32", [-1, 2]), TensorSpec("b", "INT64", [-1, 2])],
    outputs=[TensorSpec("y", "FP32", [-1, 2]), TensorSpec("z", "FP32", [-1, 1])],
    config=ModelConfig(max_batch_size=8, response_cache=True),
)
METAS = [TensorMeta("a", "FP32", [1, 2]), TensorMeta("b", "INT64", [1, 2])]
RAWS = [b"\x00" * 8, b"\x01" * 16]
BASE = entry_digest(SPEC, METAS, RAWS, None)


def _replace(spec: ModelSpec, **fields) -> ModelSpec:
    return msgspec.structs.replace(spec, **fields)


def test_the_same_call_has_the_same_key_and_a_copy_of_the_spec_too():
    assert entry_digest(SPEC, list(METAS), [bytes(r) for r in RAWS], None) == BASE
    copy = msgspec.json.decode(msgspec.json.encode(SPEC), type=ModelSpec)
    assert copy is not SPEC
    assert entry_digest(copy, METAS, RAWS, None) == BASE
    assert len(BASE) == 64 and int(BASE, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"version": 4},
        {"name": "n"},
        {"sha256": "b" * 64},
        {"config": ModelConfig(max_batch_size=8, response_cache=True, pad_batches=True)},
        {"config": ModelConfig(max_batch_size=8, response_cache=True, intra_op_threads=1)},
        {"outputs": [TensorSpec("y", "FP32", [-1, 2], reshape=[2])]},
    ],
    ids=lambda change: next(iter(change)),
)
def test_another_version_file_or_config_has_other_keys(change):
    assert entry_digest(_replace(SPEC, **change), METAS, RAWS, None) != BASE


@pytest.mark.parametrize(
    ("metas", "raws"),
    [
        ([TensorMeta("a", "FP32", [2, 1]), METAS[1]], RAWS),  # shape
        ([TensorMeta("a", "INT32", [1, 2]), METAS[1]], RAWS),  # datatype
        ([TensorMeta("c", "FP32", [1, 2]), METAS[1]], RAWS),  # name
        (METAS, [b"\x00" * 7 + b"\x01", RAWS[1]]),  # one bit of the bytes
        # The same bytes split differently between the inputs.
        (METAS, [RAWS[0] + RAWS[1][:8], RAWS[1][8:]]),
    ],
    ids=["shape", "datatype", "name", "bytes", "split"],
)
def test_every_input_property_is_in_the_key(metas, raws):
    assert entry_digest(SPEC, metas, raws, None) != BASE


def test_requested_outputs_and_namespace_are_in_the_key():
    keys = {
        BASE,
        entry_digest(SPEC, METAS, RAWS, ["y"]),
        entry_digest(SPEC, METAS, RAWS, ["z"]),
        entry_digest(SPEC, METAS, RAWS, ["y", "z"]),
        entry_digest(SPEC, METAS, RAWS, ["z", "y"]),
        entry_digest(SPEC, METAS, RAWS, None, "key-1"),
        entry_digest(SPEC, METAS, RAWS, None, "key-2"),
    }
    assert len(keys) == 7


def test_the_identity_is_memoised_per_spec_object_only():
    first = version_identity(SPEC)
    assert version_identity(SPEC) is first
    changed = _replace(SPEC, sha256="c" * 64)
    assert version_identity(changed) != first


def test_a_process_remembers_keys_for_two_generations():
    from inferbox.cache.client import _Seen

    seen = _Seen(size=2)
    keys = [f"{i:016x}" + "0" * 48 for i in range(1, 6)]
    assert [seen.check(k) for k in keys[:2]] == [False, False]
    assert seen.check(keys[0]) is True
    assert seen.check(keys[2]) is False  # the first generation is full: it becomes the old one
    assert seen.check(keys[1]) is True  # still remembered (old generation)
    seen.check(keys[3])
    seen.check(keys[4])  # and again: keys[0] and [1] are forgotten
    assert seen.check(keys[0]) is False


def test_the_admission_token_follows_the_bytes_the_namespace_and_the_version():
    identity = hash(version_identity(SPEC))
    base = admission_token(identity, "", RAWS)
    assert admission_token(identity, "", [bytes(r) for r in RAWS]) == base
    assert admission_token(identity, "", [memoryview(r) for r in RAWS]) == base
    assert admission_token(identity, "", [bytearray(r) for r in RAWS]) == base  # writable
    assert admission_token(identity, "", [RAWS[0], b"\x01" * 15 + b"\x02"]) != base
    assert admission_token(identity, "ibk_other", RAWS) != base
    other = hash(version_identity(_replace(SPEC, sha256="b" * 64)))
    assert admission_token(other, "", RAWS) != base
