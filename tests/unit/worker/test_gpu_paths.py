"""The worker's GPU code paths, run where no GPU is: provider options, CUDA library preload,
padded batches, per-process device memory (docs/benchmarks.md has what they were worth on an H200)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from inferbox.errors import BadRequest
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_reply
from inferbox.models.spec import ModelConfig, spec_from_onnx
from inferbox.registry.store import check_config
from inferbox.testing import onnx_models
from inferbox.worker import memory
from inferbox.worker.batcher import Call, assemble, batch_buckets, padded
from inferbox.worker.runtime import load_model, preload_cuda_libraries, provider_options
from inferbox.worker.serving import ModelServer

pytestmark = pytest.mark.unit
CUDA = "CUDAExecutionProvider"


def test_cuda_defaults_choose_cudnn_algorithms_by_heuristic_and_grow_the_arena_as_asked():
    options = provider_options(CUDA, ModelConfig())
    assert options == {
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
    }
    assert provider_options("CPUExecutionProvider", ModelConfig()) == {}


def test_a_models_provider_options_win_over_the_defaults():
    config = ModelConfig(
        provider_options={CUDA: {"cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1"}}
    )
    assert provider_options(CUDA, config) == {
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "prefer_nhwc": "1",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"TensorrtExecutionProvider": {"x": "1"}},
            "no settable options for 'TensorrtExecutionProvider'",
        ),
        ({CUDA: {"device_id": "1"}}, "has no option 'device_id'"),
        ({CUDA: {"cudnn_conv_algo_search": "FASTEST"}}, "cudnn_conv_algo_search must be one of"),
        ({CUDA: {"gpu_mem_limit": "-5"}}, "gpu_mem_limit must be a positive integer"),
        ({CUDA: {"gpu_mem_limit": "١٢"}}, "gpu_mem_limit must be a positive integer"),
    ],
)
def test_provider_options_outside_the_settable_set_are_refused_by_name(options, message):
    with pytest.raises(BadRequest, match=message):
        check_config(ModelConfig(provider_options=options), [], [])


def test_settable_provider_options_are_accepted():
    config = ModelConfig(provider_options={CUDA: {"gpu_mem_limit": str(2 << 30), "use_tf32": "0"}})
    assert check_config(config, [], []) is config


def test_preloading_cuda_libraries_is_harmless_without_them():
    preload_cuda_libraries()  # the CPU build returns at once; a missing library is only logged


def test_device_memory_of_this_process_is_unknown_without_a_gpu_and_usage_falls_back_to_rss():
    assert memory.process_device_used() is None
    assert memory.usage("cuda") == pytest.approx(memory.process_rss(), rel=0.5)


@pytest.mark.parametrize(
    ("limit", "buckets"),
    [(0, []), (1, [1]), (8, [1, 2, 4, 8]), (100, [1, 2, 4, 8, 16, 32, 64, 100])],
)
def test_buckets_are_powers_of_two_up_to_the_batch_limit(limit, buckets):
    assert batch_buckets(limit) == buckets


def test_padding_adds_zero_rows_up_to_the_next_bucket_and_never_past_the_last():
    feeds = {"x": np.ones((5, 3), np.float32), "ids": np.ones((5, 2), np.int64)}
    out = padded(feeds, 5, [1, 2, 4, 8])
    assert out["x"].shape == (8, 3) and out["ids"].dtype == np.int64
    assert (out["x"][5:] == 0).all() and (out["x"][:5] == 1).all()
    assert padded(feeds, 4, [1, 2, 4, 8]) is feeds  # already a bucket
    assert padded(feeds, 5, [1, 2, 4]) is feeds  # past the last bucket: as it is


def _calls(rows: list[int]) -> list[Call]:
    calls = []
    for i, n in enumerate(rows):
        header = CallHeader(
            channel="c", token=str(i), deadline=1e18, inputs=[TensorMeta("x", "FP32", [n, 64])]
        )
        data = np.random.default_rng(i).standard_normal((n, 64)).astype(np.float32)
        calls.append(Call("s", f"{i}-0".encode(), header, [data.tobytes()]))
    return calls


def _serve(tmp_path, pad: bool, consumer) -> tuple[list[bytes], list[int]]:
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    config = msgspec.structs.replace(spec.config, max_batch_size=16, pad_batches=pad)
    model = load_model(msgspec.structs.replace(spec, config=config))
    seen = []
    run = model.run
    model.run = lambda feeds, outputs=None: (seen.append(len(feeds["x"])), run(feeds, outputs))[1]
    server = ModelServer(model, None, None, "w", block_ms=1, claim_idle_ms=1)
    for batch in assemble(_calls([2, 3, 1]), model.spec):
        server._run(consumer, batch)
    replies = []
    for _, message in consumer.replies:
        header, raws = decode_reply(message)
        # The spec tag names the config (padded or not); the answers must not differ.
        replies.append((msgspec.structs.replace(header, spec_tag=""), [bytes(r) for r in raws]))
    return replies, seen


def test_a_padded_batch_answers_each_call_exactly_as_an_unpadded_one(tmp_path, new_consumer):
    padded_replies, padded_sizes = _serve(tmp_path, True, new_consumer())
    plain_replies, plain_sizes = _serve(tmp_path, False, new_consumer())
    assert plain_sizes == [6] and padded_sizes == [8]
    assert padded_replies == plain_replies and len(padded_replies) == 3


def test_a_padded_model_warms_every_bucket_at_load(tmp_path):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    config = msgspec.structs.replace(spec.config, max_batch_size=16, pad_batches=True)
    model = load_model(msgspec.structs.replace(spec, config=config))
    assert model.buckets == [1, 2, 4, 8, 16]
    assert load_model(spec).buckets == []
