"""The worker's GPU code paths, run where no GPU is: provider options, CUDA library preload,
padded batches, a session per batch size, I/O binding, CUDA-graph shapes, per-process device
memory (docs/benchmarks.md has what they were worth on an H200)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from inferbox.errors import BadRequest
from inferbox.lanes.consumer import Call
from inferbox.lanes.wire import CallHeader, TensorMeta, decode_reply
from inferbox.models.spec import ModelConfig, TensorSpec, spec_from_onnx
from inferbox.registry.store import check_config
from inferbox.testing import onnx_models
from inferbox.worker import memory
from inferbox.worker.batcher import assemble, batch_buckets, padded
from inferbox.worker.runtime import (
    GraphRunner,
    LoadedModel,
    graph_shapes,
    has_convolutions,
    load_model,
    preload_cuda_libraries,
    provider_options,
)
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


def _load(tmp_path, **config) -> LoadedModel:
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    config = msgspec.structs.replace(spec.config, max_batch_size=16, **config)
    return load_model(msgspec.structs.replace(spec, config=config))


def _record(model: LoadedModel) -> list[tuple[int, int]]:
    """(rows, id of the session's runner) of every run from now on."""
    seen: list[tuple[int, int]] = []

    def recording(runner):
        return lambda names, feeds: (
            seen.append((len(feeds["x"]), id(runner))),
            runner(names, feeds),
        )[1]

    model.runner = recording(model.runner)
    model.runners = {size: recording(r) for size, r in model.runners.items()}
    return seen


def _serve(tmp_path, consumer, **config) -> tuple[list[bytes], list[int]]:
    model = _load(tmp_path, **config)
    seen = _record(model)
    server = ModelServer(model, None, None, "w", block_ms=1, claim_idle_ms=1)
    for batch in assemble(_calls([2, 3, 1]), model.spec):
        server._run(consumer, batch)
    replies = []
    for _, message in consumer.replies:
        header, raws = decode_reply(message)
        # The spec tag names the config (padded or not); the answers must not differ.
        replies.append((msgspec.structs.replace(header, spec_tag=""), [bytes(r) for r in raws]))
    return replies, [rows for rows, _ in seen]


@pytest.mark.parametrize(
    "config",
    [
        {"pad_batches": True},
        {"bucket_sessions": True},
        {"io_binding": True},
        {"bucket_sessions": True, "io_binding": True},
        {"cuda_graphs": True},  # on the CPU: a session per batch size, no graphs
    ],
)
def test_each_gpu_path_answers_each_call_exactly_as_the_plain_one(tmp_path, new_consumer, config):
    plain_replies, plain_sizes = _serve(tmp_path, new_consumer())
    replies, sizes = _serve(tmp_path, new_consumer(), **config)
    assert plain_sizes == [6]
    assert sizes == ([8] if set(config) != {"io_binding"} else [6])
    assert replies == plain_replies and len(replies) == 3


def test_a_padded_model_warms_every_bucket_at_load(tmp_path):
    model = _load(tmp_path, pad_batches=True)
    assert model.buckets == [1, 2, 4, 8, 16]
    assert _load(tmp_path).buckets == []


def test_bucket_sessions_give_each_batch_size_its_own_session(tmp_path):
    model = _load(tmp_path, bucket_sessions=True)
    assert sorted(model.runners) == [1, 2, 4, 8, 16]
    # One session per size; the largest keeps the first session (one copy of the weights less).
    assert len(model.sessions) == 5 and model.runners[16].__self__ is model.session
    seen = _record(model)
    for rows in (3, 4, 1, 9, 3):
        _, results = model.run({"x": np.ones((rows, 64), np.float32)})
        assert results[0].shape == (rows, 10)
    by_size = {}
    for rows, runner in seen:
        by_size.setdefault(rows, set()).add(runner)
    assert sorted(by_size) == [1, 4, 16] and all(len(r) == 1 for r in by_size.values())
    assert len({next(iter(r)) for r in by_size.values()}) == 3


def test_io_binding_is_on_where_the_session_runs_on_cuda_and_off_on_the_cpu(tmp_path):
    assert not _load(tmp_path).io_binding  # automatic, and this session runs on the CPU
    model = _load(tmp_path, io_binding=True)
    assert model.io_binding
    plain = _load(tmp_path, io_binding=False)
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)}
    assert model.run(feeds)[1][0].tobytes() == plain.run(feeds)[1][0].tobytes()
    # A non-contiguous input is bound as a contiguous copy.
    wide = np.random.default_rng(1).standard_normal((5, 128)).astype(np.float32)[:, ::2]
    assert model.run({"x": wide})[1][0].tobytes() == plain.run({"x": wide})[1][0].tobytes()


def test_string_inputs_never_go_through_io_binding(tmp_path):
    path = onnx_models.identity_all_types(tmp_path / "t.onnx", ["BYTES", "FP32"])
    spec = spec_from_onnx("types", 1, path)
    spec = msgspec.structs.replace(
        spec, config=msgspec.structs.replace(spec.config, io_binding=True)
    )
    model = load_model(spec)
    assert not model.io_binding
    feeds = {t.name: _warm(t) for t in spec.inputs}
    _, results = model.run(feeds)
    assert len(results) == len(spec.outputs)


def _warm(tensor):
    shape = [1 if d < 0 else d for d in tensor.shape]
    if tensor.datatype == "BYTES":
        return np.full(shape, "a", dtype=object)
    return np.zeros(shape, np.float32)


def test_cuda_graphs_on_the_cpu_warn_and_serve_with_a_session_per_batch_size(tmp_path):
    model = _load(tmp_path, cuda_graphs=True)
    assert not model.graphs and sorted(model.runners) == [1, 2, 4, 8, 16]


def test_cuda_graph_buffers_take_each_tensors_fixed_shape_at_the_batch_size(tmp_path):
    spec = spec_from_onnx("mlp", 1, onnx_models.mlp(tmp_path / "m.onnx"))
    inputs, outputs = graph_shapes(spec, 8)
    assert inputs == {"x": ([8, 64], np.dtype(np.float32))}
    assert outputs == {"y": ([8, 10], np.dtype(np.float32))}
    reshaped = msgspec.structs.replace(
        spec, inputs=[TensorSpec("x", "FP32", [-1, 8, 8], reshape=[64])]
    )
    assert graph_shapes(reshaped, 4)[0] == {"x": ([4, 64], np.dtype(np.float32))}
    loose = msgspec.structs.replace(spec, inputs=[TensorSpec("x", "FP32", [-1, -1])])
    with pytest.raises(ValueError, match="'x' is FP32 \\[-1, -1\\]"):
        graph_shapes(loose, 8)


def test_cuda_graphs_on_tensors_without_a_fixed_shape_are_refused_at_registration():
    tensors = [TensorSpec("x", "FP32", [-1, -1])], [TensorSpec("y", "FP32", [-1, 4])]
    with pytest.raises(BadRequest, match=r"cuda_graphs needs .* not so: \['x'\]"):
        check_config(ModelConfig(max_batch_size=8, cuda_graphs=True), *tensors)
    fixed = [TensorSpec("x", "FP32", [-1, 4])], [TensorSpec("y", "FP32", [-1, 4])]
    config = ModelConfig(max_batch_size=8, cuda_graphs=True)
    assert check_config(config, *fixed) is config


def test_a_graph_runner_refreshes_its_bound_buffers_and_answers_each_run_afresh(tmp_path):
    """The runner of a CUDA-graph session, on a CPU session: fixed buffers bound once, inputs
    copied in before each run, outputs read after it (the graph itself needs a GPU)."""
    model = _load(tmp_path)
    plain = _load(tmp_path)
    inputs, outputs = graph_shapes(model.spec, 4)
    runner = GraphRunner(model.session, inputs, outputs, device="cpu")
    rng = np.random.default_rng(3)
    for _ in range(3):
        feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
        [got] = runner(["y"], feeds)
        assert got.tobytes() == plain.run(feeds)[1][0].tobytes()


def test_only_graphs_with_convolutions_get_a_session_per_batch_size_by_default(tmp_path):
    assert onnx_models and has_convolutions(onnx_models.conv_net(tmp_path / "c.onnx"))
    assert not has_convolutions(onnx_models.mlp(tmp_path / "m.onnx"))
    # Automatic only where the session runs on CUDA: here, on the CPU, one session.
    spec = spec_from_onnx("cnn", 1, onnx_models.conv_net(tmp_path / "c.onnx"), max_batch_size=8)
    assert spec.config.bucket_sessions is None
    model = load_model(spec)
    assert model.runners == {} and len(model.sessions) == 1


def test_an_fp16_model_is_served_from_a_converted_copy_checked_against_fp32(tmp_path):
    plain = _load(tmp_path)
    half = _load(tmp_path, fp16=True)
    copy = next(tmp_path.glob("*.fp16.onnx"))
    assert half.fp16_error is not None and 0 < half.fp16_error < 1e-2
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)}
    got, expected = half.run(feeds)[1][0], plain.run(feeds)[1][0]
    assert got.dtype == np.float32  # inputs and outputs stay FP32
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()
    made = copy.stat().st_mtime_ns
    _load(tmp_path, fp16=True)
    assert copy.stat().st_mtime_ns == made  # converted once, then reused
