"""Figures of a reliability run, appended as JSON lines to ``INFERBOX_CHAOS_REPORT`` if set.

``scripts/chaos`` sets it and prints the file at the end; ``docs/reliability.md`` quotes it.
"""

from __future__ import annotations

import json
import os
import time


def record(section: str, figures: dict) -> None:
    """Append one result (``section``: faults, soak, bad_inputs) to the report file."""
    path = os.environ.get("INFERBOX_CHAOS_REPORT")
    if not path:
        return
    line = {"section": section, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    line.update(figures)
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")
