"""Where the checkout and the ``inferbox`` command of the test environment are."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root."""
INFERBOX = str(Path(sys.executable).with_name("inferbox"))
"""The ``inferbox`` command installed beside the running Python."""
