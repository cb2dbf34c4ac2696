"""The shipped Prometheus config and alert rules, checked and unit-tested by promtool."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.prometheus import PROMETHEUS_DIR, tool

pytestmark = pytest.mark.unit


def _promtool(*args: str) -> None:
    result = subprocess.run(
        [tool("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_and_rules_are_valid():
    _promtool("check", "config", "prometheus.yml")


def test_alert_rules_fire_as_their_unit_tests_expect():
    _promtool("test", "rules", "alerts.test.yml")
