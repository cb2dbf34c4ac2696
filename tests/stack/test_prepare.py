"""`scripts/stack up` on a fresh clone prepares the machine itself (scripts/test's installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_stack_up_on_a_fresh_clone_runs_scripts_test_preparation(tmp_path):
    # A clone without .venv: `up` asks scripts/test for its installs and services only.
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "stack", tmp_path / "scripts" / "stack")
    marker = tmp_path / "prepared"
    fake = tmp_path / "scripts" / "test"
    fake.write_text(f'#!/bin/sh\necho "$INFERBOX_TEST_PREPARE_ONLY $*" > {marker}\nexit 7\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBOX_")}
    env["INFERBOX_STACK_DIR"] = str(tmp_path / ".stack")
    done = subprocess.run(
        [str(tmp_path / "scripts" / "stack"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert marker.read_text().strip() == "1", done.stdout + done.stderr
    assert done.returncode != 0 and "preparing failed" in done.stderr
