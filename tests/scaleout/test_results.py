"""The Ray worker answers every test model exactly as the local worker does."""

from __future__ import annotations

import numpy as np
import pytest

from inferbox.testing.onnx_models import IDENTITY_TYPES
from tests.support.scaleout import LaneClient, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _typed(rng, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        words = np.array(["", "a", "héllo", "x" * 40, "\u2603", "zz"], dtype=object)
        return rng.choice(words, size=shape).astype(object)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    dtype = np.dtype(_NUMPY[datatype])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def calls_for_every_model() -> list[tuple[str, dict, list[str] | None]]:
    """Calls of one and several rows, subsets of outputs, and inputs the model refuses."""
    rng = np.random.default_rng(7)
    fp32 = lambda *shape: ("FP32", rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    calls = [
        ("mlp", {"x": fp32(1, 64)}, None),
        ("mlp", {"x": fp32(5, 64)}, None),
        ("conv", {"image": fp32(2, 3, 64, 64)}, None),
        ("add_sub", {"INPUT0": fp32(3, 4), "INPUT1": fp32(3, 4)}, None),
        ("add_sub", {"INPUT0": fp32(1, 4), "INPUT1": fp32(1, 4)}, ["OUTPUT1"]),
        ("fixed", {"x": fp32(2, 3)}, None),
        ("fixed", {"x": fp32(3, 3)}, None),  # wrong fixed shape: ONNX Runtime refuses it (400)
        ("slow", {"x": fp32(2, 256)}, None),
    ]
    every_type = {f"in_{t}": (t, _typed(rng, t, (2, 3))) for t in IDENTITY_TYPES}
    calls.append(("identity", every_type, None))
    calls.append(("identity", every_type, ["out_BYTES", "out_FP16", "out_UINT64"]))
    one_row = {f"in_{t}": (t, _typed(rng, t, (1, 5))) for t in IDENTITY_TYPES}
    calls.append(("identity", one_row, None))
    return calls


def test_every_model_answers_as_on_the_local_worker(
    ray_worker, scaleout_models, tmp_path_factory, redis_client
):
    specs = list(scaleout_models.values())
    names = sorted(scaleout_models)
    calls = calls_for_every_model()
    assert {c[0] for c in calls} == set(names)
    answers = {}
    local = running_worker(tmp_path_factory, redis_client, specs, "worker")
    with local as local_worker, ray_worker(specs) as ray_running:
        local_worker.ready(names)
        ray_running.ready(names)
        for label, running in (("local", local_worker), ("ray", ray_running)):
            client = LaneClient(redis_client, running.keys)
            try:
                # One call at a time: each runs as its own batch on both sides.
                answers[label] = [client.call(m, inputs, outputs) for m, inputs, outputs in calls]
            finally:
                client.close()
        assert ray_running.metric("inferbox_ray_actors") == 1
    for (model, _, _), local_answer, ray_answer in zip(
        calls, answers["local"], answers["ray"], strict=True
    ):
        (local_head, local_raws), (ray_head, ray_raws) = local_answer, ray_answer
        assert ray_head.status == local_head.status, model
        assert ray_head.error == local_head.error, model
        assert ray_head.outputs == local_head.outputs, model
        assert ray_raws == local_raws, model
    statuses = [head.status for head, _ in answers["ray"]]
    assert statuses.count(400) == 1 and statuses.count(200) == len(calls) - 1
