"""Settings of the state every process shares: Redis, PostgreSQL, S3, the tensor directory."""

from __future__ import annotations

from pydantic import Field

from inferbox.config.base import SettingsGroup


class StoreSettings(SettingsGroup):
    """Stores shared by every process.

    Redis (the interactive lane, the model catalog, worker status), PostgreSQL (the source of
    truth), the S3 API (model files, job data) and the in-memory directory large inputs travel
    through."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^redis://")
    """Redis carrying the interactive lane, the model catalog and worker status: a
    ``redis://[[user]:password@]host[:port][/db]`` URL. The hot paths speak RESP over TCP, so
    TLS (``rediss://``) and Unix sockets are refused at start."""

    key_prefix: str = "inferbox"
    """Prefix of every Redis key and channel, so several appliances (or test runs) share one Redis."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/inferbox"
    """PostgreSQL holding the registry, API keys, the audit log and jobs (the source of truth);
    ``inferbox migrate`` creates the database when missing."""

    database_timeout_s: float = Field(default=5.0, gt=0)
    """Longest a request waits for a PostgreSQL connection; beyond it the answer is 503."""

    s3_endpoint: str = "127.0.0.1:9000"
    """S3 API (MinIO in the appliance) holding model files, as ``host:port``."""

    s3_access_key: str = ""
    """Access key of the S3 API; no default in the appliance (compose generates one)."""

    s3_secret_key: str = ""
    """Secret key of the S3 API."""

    s3_secure: bool = False
    """Use HTTPS to reach the S3 API."""

    s3_region: str | None = None
    """Region name passed to the S3 API, if it needs one."""

    s3_bucket: str = "inferbox"
    """Bucket of model files and job data (created when missing)."""

    s3_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for the S3 API to accept a connection or send the next bytes of an answer;
    an unreachable store then fails the call (503) instead of holding it for minutes."""

    tensor_dir: str = ""
    """A directory the API processes and the workers share, in memory (a tmpfs: the compose
    volume ``tensors``, or a folder under ``/dev/shm``), through which a call's inputs of at
    least ``tensor_file_min_bytes`` travel as a file instead of through Redis; empty: every
    input travels through Redis. Set it to the same directory on the API, the gRPC server and
    every worker."""

    tensor_file_min_bytes: int = Field(default=256 * 1024, gt=0)
    """Inputs of a call smaller than this in all travel through Redis even with
    ``tensor_dir`` set (a file costs a few system calls; a small call is cheaper inline)."""
