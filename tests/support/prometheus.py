"""The shipped Prometheus config and the Prometheus binaries the observability tests run."""

from __future__ import annotations

import shutil

import pytest

from tests.support.paths import ROOT

PROMETHEUS_DIR = ROOT / "prometheus"
"""Scrape config and alert rules as shipped."""


def tool(name: str) -> str:
    """Path of a Prometheus binary (Debian's ``prometheus`` package; scripts/test installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path
