"""The wheel the images install (`pip install .`, not editable) carries what the package reads."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "services" / "inferbox" / "registry" / "migrations"


@pytest.mark.timeout(300)
def test_wheel_carries_the_sql_migrations(tmp_path):
    # The editable install the tests run on reads the source tree, so only a built wheel shows
    # whether package data is declared (without it `inferbox migrate` applies nothing in an image).
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("inferbox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"inferbox/registry/migrations/{p.name}" for p in MIGRATIONS.glob("*.sql")}
    assert len(wanted) >= 3
    assert wanted <= names, sorted(wanted - names)
