"""Promotion, rollback and canaries under live traffic; eviction under a small budget."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from inferbox.client import InferboxClient
from inferbox.testing import onnx_models
from tests.support.appliance import running_appliance
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}]}


class Traffic:
    """Callers hammering ``/v2/models/{name}/infer`` until stopped, recording every answer."""

    def __init__(self, appliance, name: str, expected: dict[str, np.ndarray], callers: int = 4):
        self.url, self.headers = appliance.url, appliance.headers
        self.name, self.expected = name, expected
        self.stop = threading.Event()
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(callers)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as http:
            while not self.stop.is_set():
                response = http.post(f"/v2/models/{self.name}/infer", json=BODY)
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                data = response.json()
                version = data["model_version"]
                got = np.array(data["outputs"][0]["data"], np.float32).reshape(1, 10)
                if not np.allclose(got, self.expected[version], rtol=1e-5, atol=1e-6):
                    self.failures.append(f"wrong answer from version {version}")
                self.versions.append(version)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def answered_by(self, version: str, timeout: float = 10) -> None:
        """Wait until the latest answers come from ``version``."""

        def latest():
            mark = len(self.versions)
            time.sleep(0.3)
            recent = self.versions[mark:]
            return recent and all(v == version for v in recent)

        wait_for(latest, timeout, f"traffic to reach version {version}", 0.0)


def test_push_promote_rollback_under_traffic_with_zero_failures(appliance, tmp_path):
    name = f"roll-{uuid.uuid4().hex[:6]}"
    files = {str(v): onnx_models.mlp(tmp_path / f"v{v}.onnx", seed=20 + v) for v in (1, 2)}
    expected = {v: ort.InferenceSession(str(p)).run(None, {"x": X})[0] for v, p in files.items()}
    client = InferboxClient(appliance.url, api_key=appliance.api_key)
    client.push(files["1"], name, alias="production")
    wait_for(
        lambda: (
            httpx.get(
                f"{appliance.url}/v2/models/{name}/ready", headers=appliance.headers
            ).status_code
            == 200
        ),
        30,
        "version 1",
    )
    with Traffic(appliance, name, expected) as traffic:
        traffic.answered_by("1")
        client.push(files["2"], name)
        wait_for(
            lambda: (
                httpx.get(
                    f"{appliance.url}/v2/models/{name}/versions/2/ready", headers=appliance.headers
                ).status_code
                == 200
            ),
            30,
            "version 2",
        )
        client.set_alias(name, "production", 2)
        traffic.answered_by("2")
        client.set_alias(name, "production", 1)  # rollback
        traffic.answered_by("1")
    client.close()
    assert traffic.failures == []
    assert len(traffic.versions) > 50


def test_a_canary_split_shares_traffic_by_weight(appliance, tmp_path):
    name = f"canary-{uuid.uuid4().hex[:6]}"
    files = {str(v): onnx_models.mlp(tmp_path / f"v{v}.onnx", seed=30 + v) for v in (1, 2)}
    expected = {v: ort.InferenceSession(str(p)).run(None, {"x": X})[0] for v, p in files.items()}
    with InferboxClient(appliance.url, api_key=appliance.api_key) as client:
        client.push(files["1"], name, alias="production")
        client.push(files["2"], name)
        for version in (1, 2):
            wait_for(
                lambda v=version: (
                    httpx.get(
                        f"{appliance.url}/v2/models/{name}/versions/{v}/ready",
                        headers=appliance.headers,
                    ).status_code
                    == 200
                ),
                30,
                f"version {version}",
            )
        response = httpx.put(
            f"{appliance.url}/v1/models/{name}/traffic",
            json={"weights": {"1": 3, "2": 1}},
            headers=appliance.headers,
        )
        assert response.status_code == 200, response.text
        time.sleep(0.5)
        with httpx.Client(base_url=appliance.url, headers=appliance.headers) as http:
            seen = Counter(
                http.post(f"/v2/models/{name}/infer", json=BODY).json()["model_version"]
                for _ in range(200)
            )
    assert set(seen) == {"1", "2"}
    assert 100 < seen["1"] < 190, seen
    assert expected  # both files answered exactly (checked through model_version above)


@pytest.mark.slow
def test_eviction_under_a_small_budget_keeps_answers_correct(
    redis_client, tmp_path, tmp_path_factory, make_database, s3_endpoint
):
    # Four models of ~19 MB of weights each: by their files alone, at most two fit the budget.
    repo = tmp_path / "repo"
    files = {}
    for index in range(4):
        path = onnx_models.mlp(
            repo / f"big{index}" / "1" / "model.onnx", inputs=64, hidden=64_000, seed=40 + index
        )
        files[f"big{index}"] = path
    expected = {n: ort.InferenceSession(str(p)).run(None, {"x": X})[0] for n, p in files.items()}
    with (
        running_appliance(
            redis_client,
            tmp_path_factory,
            make_database(),
            s3_endpoint,
            repo,
            INFERBOX_WORKER_MEMORY_BUDGET_BYTES=str(40 * 1024 * 1024),
            INFERBOX_WORKER_CAPACITY_SWEEP_S="0",
            INFERBOX_DEFAULT_TIMEOUT_MS="60000",
        ) as running,
        httpx.Client(base_url=running.url, timeout=60, headers=running.headers) as http,
    ):
        for _ in range(3):
            for name, want in expected.items():
                response = http.post(f"/v2/models/{name}/infer", json=BODY)
                assert response.status_code == 200, response.text
                got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(1, 10)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            assert running.metric("inferbox_models_resident") <= 2
        assert running.metric("inferbox_evictions_total") >= 2
