"""Settings of async jobs (``INFERBOX_JOBS_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from inferbox.config.base import SettingsGroup


class JobsSettings(SettingsGroup):
    """Async jobs.

    Run by the workers: how many at once, their leases and retries, how a job is cut into
    chunks on the low lane, and how long its input and result are kept."""

    jobs_enabled: bool = True
    """Whether this worker also runs async jobs (the API accepts them regardless)."""

    jobs_threads: int = Field(default=2, ge=1, le=16)
    """Jobs a worker runs at the same time (each splits into chunks queued on the low lane), so
    a short job need not wait for a long one to finish."""

    jobs_max_attempts: int = Field(default=3, ge=1)
    """Runs a job gets (the first plus retries after a worker is lost) before it fails."""

    jobs_lease_s: float = Field(default=20.0, gt=0)
    """A running job's claim; renewed every third of it. A worker that stops renewing (killed)
    loses the job after this long, and the reconciler queues it again."""

    jobs_reconcile_s: float = Field(default=5.0, gt=0)
    """How often each worker's reconciler looks for lost, expired and undelivered jobs, and a
    webhook sender with free slots for webhooks that came due."""

    jobs_requeue_after_s: float = Field(default=15.0, gt=0)
    """A queued job whose RQ entry is gone (Redis restarted empty, flushed) for this long is
    queued again."""

    jobs_chunk_rows: int = Field(default=0, ge=0)
    """Rows per chunk of a job; 0: the model's max_batch_size."""

    jobs_chunks_in_flight: int = Field(default=4, ge=1)
    """Chunks of one job queued at once, so batches stay full without flooding the lane."""

    jobs_chunk_timeout_s: float = Field(default=120.0, gt=0)
    """Deadline of one chunk on the interactive lane (it waits behind interactive calls)."""

    jobs_priority: int = Field(default=2, ge=2)
    """Priority of job chunks: 2 and above is the low lane, served after interactive calls."""

    jobs_retention_s: int = Field(default=7 * 24 * 3600, gt=0)
    """How long a finished job's result (and input) is kept when neither the job
    (``retention_s``) nor its model's config (``job_retention_s``) says; a job may ask for less
    or more up to ``jobs_max_retention_s``."""

    jobs_max_retention_s: int = Field(default=30 * 24 * 3600, gt=0)
    """The longest retention a job may ask for."""

    jobs_input_retention_s: int = Field(default=7 * 24 * 3600, gt=0)
    """How long an uploaded job input file is kept."""

    jobs_max_input_bytes: int = Field(default=2 * 1024**3, gt=0)
    """Largest job input file accepted by ``POST /v1/jobs/inputs``."""

    jobs_spool_dir: Path = Path("/tmp/inferbox-jobs")
    """Where workers keep a job's input and result while it runs."""
