"""``scripts/gpu-bench`` where no GPU is: the same steps on the CPU provider (its rehearsal), and
the pieces that judge a GPU run (CUDA really used, FP16 accuracy, I/O binding) on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402  (benchmarks/ is not a package)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    chosen = gpu.model_set(full=False)
    return chosen, {name: m.build(folder / name / "1" / "model.onnx") for name, m in chosen.items()}


def test_asking_for_cuda_where_it_cannot_run_is_an_error_not_a_cpu_session(models):
    _, paths = models
    assert not gpu.cuda_works()
    # The CPU build warns that it has no CUDA provider; the GPU build logs the missing libraries.
    with warnings.catch_warnings(), pytest.raises(gpu.BenchError, match="asked for CUDA"):
        warnings.simplefilter("ignore")
        gpu.session(paths["mlp"], "cuda")


def test_test_sized_models_keep_the_real_graphs_shapes(models):
    chosen, paths = models
    cnn = ort.InferenceSession(str(paths["resnet50"]), providers=["CPUExecutionProvider"])
    assert cnn.run(None, {"image": gpu.random_rows(chosen["resnet50"], 2)})[0].shape == (2, 1000)
    bert = ort.InferenceSession(str(paths["bert"]), providers=["CPUExecutionProvider"])
    ids = gpu.random_rows(chosen["bert"], 3)
    assert ids.dtype == np.int64 and bert.run(None, {"input_ids": ids})[0].shape == (3, 128)


def test_an_fp16_copy_keeps_fp32_inputs_and_outputs_and_close_answers(models, tmp_path):
    chosen, paths = models
    half = gpu.fp16_copy(paths["resnet50"], tmp_path)
    full = gpu.session(paths["resnet50"], "cpu")
    fast = gpu.session(half, "cpu")
    rows = gpu.random_rows(chosen["resnet50"], 4)
    reference, got = (s.run(None, {"image": rows})[0] for s in (full, fast))
    assert got.dtype == np.float32
    accuracy = gpu.accuracy(reference, got)
    assert accuracy["max_rel_error"] < 1e-2 and accuracy["argmax_agreement"] == 1.0


def test_accuracy_sees_a_wrong_answer():
    reference = np.eye(4, dtype=np.float32)
    assert gpu.accuracy(reference, reference[::-1])["argmax_agreement"] == 0.0


def test_io_binding_answers_what_session_run_answers(models):
    chosen, paths = models
    model = chosen["resnet50"]
    sess = gpu.session(paths["resnet50"], "cpu")
    rows = gpu.random_rows(model, 3)
    bound = gpu.io_binding_run(sess, model, rows, "cpu")
    np.testing.assert_allclose(bound(), sess.run(None, {"image": rows})[0], rtol=1e-6)


def test_the_rehearsal_runs_every_in_process_stage_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        [
            str(ROOT / "scripts" / "gpu-bench"),
            *("--stages", "raw,knobs", "--seconds", "0.1", "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert results["meta"]["device"] == "cpu" and not results["stage_errors"]
    assert set(results["raw"]) == {"resnet50", "bert", "mlp"}
    knobs = {k["name"]: k for k in results["knobs"]}
    assert knobs["baseline"]["rows_s"]["32"] > 0
    assert knobs["CUDA graph"]["error"] == "n/a on the CPU provider"
    assert knobs["FP16 bert"]["extra"]["min_cosine"] > 0.99
    for label in ("one session", "a session per size"):
        assert knobs[f"batch sizes alternating, {label}"]["rows_s"]["12"] > 0
    assert "**Raw ONNX Runtime in-process" in (tmp_path / "gpu-bench.md").read_text()


def test_knobs_can_be_chosen_by_name(models, tmp_path):
    chosen, paths = models
    knobs = gpu.knob_stage(chosen, paths, "cpu", tmp_path, 0.05, ["batch sizes", "CUDA graph"])
    assert [k["name"] for k in knobs] == [
        "batch sizes alternating, one session",
        "batch sizes alternating, a session per size",
        "CUDA graph",
    ]


def test_each_server_loads_only_the_models_its_points_use(tmp_path, models):
    chosen, paths = models
    served = {**chosen}
    for name, base in gpu.SAME_FILE.items():
        served[name] = chosen[base]
    used = {m for m, _, _, on in gpu.E2E_PLAN if "inferbox-redis" in on}
    repo = gpu.write_repository({m: served[m] for m in used}, paths, tmp_path / "repo", "cpu")
    assert sorted(p.name for p in repo.iterdir()) == sorted(used)
    config = json.loads((repo / "resnet50-buckets" / "inferbox.json").read_text())
    assert config["bucket_sessions"] is True and config["max_batch_size"] == 128
