"""Fixtures for the observability suite: a real Prometheus scraping the ``appliance`` fixture."""

from __future__ import annotations

import subprocess

import httpx
import pytest
import yaml

from tests.support.processes import free_port, stop_process
from tests.support.prometheus import PROMETHEUS_DIR, tool
from tests.support.waiting import wait_for


@pytest.fixture(scope="session")
def prometheus(appliance, tmp_path_factory) -> str:
    """Prometheus (1 s scrapes and rule evaluations) over the appliance's API and worker.

    The scrape config and rules are the shipped ones, with the compose targets swapped for the
    fixture's addresses.
    """
    binary = tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    targets = {
        "inferbox-api": appliance.url.removeprefix("http://"),
        "inferbox-worker": appliance.metrics_url.removeprefix("http://").removesuffix("/metrics"),
    }
    # The Ray worker (compose profile ``ray``) is not part of this appliance.
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] in targets]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited; see {workdir / 'prometheus.log'}")
        try:
            return httpx.get(f"{url}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 30, "prometheus to be ready")

        def both_scraped():
            query = {"query": 'sum(up{job=~"inferbox-.*"})'}
            result = httpx.get(f"{url}/api/v1/query", params=query).json()["data"]["result"]
            return result and result[0]["value"][1] == "2"

        # Prometheus applies discovered targets after a few seconds: wait for the first scrape.
        wait_for(both_scraped, 30, "prometheus to scrape the API and the worker", interval=0.2)
        yield url
    finally:
        stop_process(proc, 10)
