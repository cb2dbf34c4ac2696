"""The function RQ calls on a worker: ``run(job_id)`` hands the job to this process's job lane.

RQ resolves ``inferbox.jobs.execution.run`` by name and passes only the job id (JSON): the
lane holding the database pool, the object store and the Redis clients is found here, set by
``JobLane.start``.
"""

from __future__ import annotations

from typing import Protocol


class _Lane(Protocol):
    def execute(self, job_id: str) -> str | None: ...


_lane: _Lane | None = None


def install(lane: _Lane | None) -> None:
    """Make ``lane`` the one that runs delivered jobs in this process (None: none)."""
    global _lane
    _lane = lane


def run(job_id: str) -> str | None:
    """Run a delivered job; returns the state it ended in here (None: not run here)."""
    if _lane is None:
        raise RuntimeError("this process has no job lane")
    return _lane.execute(job_id)
