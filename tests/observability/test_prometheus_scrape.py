"""Every dashboard panel and alert, evaluated by a real Prometheus over a real API and worker."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.prometheus import PROMETHEUS_DIR
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
GRAFANA_VARS = {"$__rate_interval": "1m", "$model": ".+"}


def _panels():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.stem, panel, target["expr"]


def _alerts():
    for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def _promql(expr: str) -> str:
    for name, value in GRAFANA_VARS.items():
        expr = expr.replace(name, value)
    return expr


def _query(prometheus: str, expr: str) -> list:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    return body["data"]["result"]


def _load(appliance) -> None:
    """A few hundred calls on both lanes and through the response cache, plus rejections
    (unknown model, bad input)."""
    x = {"name": "x", "datatype": "FP32", "shape": [2, 64], "data": [0.5] * 128}
    bodies = [
        ("mlp", {"inputs": [x]}),
        ("mlp", {"inputs": [x], "parameters": {"priority": 2}}),
        ("versions", {"inputs": [x]}),
        # The response cache: one miss (stored), then hits.
        ("cached", {"inputs": [x]}),
    ]
    with httpx.Client(base_url=appliance.url, timeout=30, headers=appliance.headers) as client:

        def call(i: int) -> None:
            model, body = bodies[i % len(bodies)]
            assert client.post(f"/v2/models/{model}/infer", json=body).status_code == 200

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(call, range(300)))
        assert client.post("/v2/models/nope/infer", json=bodies[0][1]).status_code == 404
        assert client.post("/v2/models/mlp/infer", json={"inputs": []}).status_code == 400
        assert client.get("/v2/health/ready").status_code == 200
        # Two async jobs, run to the end, for the jobs dashboard.
        jobs = [client.post("/v2/models/mlp/jobs", json=bodies[0][1]).json() for _ in range(2)]
        for job in jobs:
            wait_for(
                lambda job=job: client.get(job["status_url"]).json()["state"] == "succeeded",
                60,
                "a job to finish",
            )
    # The reconciler counts the ledger every few seconds: wait for its gauge.
    wait_for(
        lambda: (
            'inferbox_jobs{model="mlp",state="succeeded"} 2.0'
            in httpx.get(appliance.metrics_url).text
        ),
        30,
        "the worker to count the jobs",
    )


@pytest.fixture(scope="module")
def loaded(prometheus, appliance) -> str:
    _load(appliance)
    started = time.time()

    def scraped_after_load():
        result = _query(prometheus, 'min(timestamp(up{job=~"inferbox-.*"}))')
        up = _query(prometheus, 'sum(up{job=~"inferbox-.*"})')
        return result and float(result[0]["value"][1]) > started + 2.5 and up[0]["value"][1] == "2"

    wait_for(scraped_after_load, 30, "prometheus to scrape both targets after the load")
    return prometheus


def _gpu_present(prometheus: str) -> bool:
    return bool(_query(prometheus, "inferbox_gpu_memory_total_bytes"))


def test_the_api_merges_its_gunicorn_workers(loaded, appliance):
    text = httpx.get(f"{appliance.url}/metrics").text
    assert "inferbox_requests_total" in text
    assert re.search(r"^inferbox_requests_in_flight \S+$", text, re.M), "one merged live gauge"


@pytest.mark.parametrize(("board", "panel", "expr"), list(_panels()), ids=lambda v: str(v)[:40])
def test_every_panel_query_returns_data(loaded, board, panel, expr):
    if "gpu" in panel.get("tags", []) and not _gpu_present(loaded):
        _query(loaded, _promql(expr))  # parses; GPU series are absent without a GPU
        pytest.skip("no GPU here: GPU panels have no data by design")
    assert _query(loaded, _promql(expr)), f"{board}/{panel['title']}: no data for {expr}"


@pytest.mark.parametrize(("alert", "expr"), list(_alerts()))
def test_every_alert_expression_parses_and_its_metrics_exist(loaded, alert, expr):
    _query(loaded, expr)
    names = set(re.findall(r"\binferbox_[a-z_]+", expr))
    if any(name.startswith("inferbox_gpu_") for name in names) and not _gpu_present(loaded):
        return
    exported = set(httpx.get(f"{loaded}/api/v1/label/__name__/values").json()["data"])
    assert names <= exported, names - exported


def test_rules_load_and_evaluate_without_errors(loaded):
    time.sleep(1.5)  # at least one evaluation after the load
    groups = httpx.get(f"{loaded}/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {name for name, _ in _alerts()}
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    firing = _query(loaded, 'ALERTS{alertstate="firing"}')
    assert not firing, f"a healthy appliance fires alerts: {firing}"


def test_dashboards_are_generated_from_build_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dashboards", ROOT / "grafana" / "build_dashboards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, board in module.DASHBOARDS.items():
        path = Path(ROOT / "grafana" / "dashboards" / f"{name}.json")
        assert path.read_text() == module.render(board), f"run grafana/build_dashboards.py ({name})"
