"""Settings for every inferbox process, read from ``INFERBOX_*`` environment variables.

One ``Settings`` object is built at a process's entry point and passed down (to
``create_app(settings)`` and ``Worker(settings)``); nothing reads the environment elsewhere.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class Settings(BaseSettings):
    """Everything an inferbox process can be told, grouped by concern (field name prefixes)."""

    model_config = SettingsConfigDict(env_prefix="INFERBOX_", extra="ignore")

    # --- shared -------------------------------------------------------------------------------
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^redis://")
    """Redis carrying the interactive lane, the model catalog and worker status: a
    ``redis://[[user]:password@]host[:port][/db]`` URL. The hot paths speak RESP over TCP, so
    TLS (``rediss://``) and Unix sockets are refused at start."""

    key_prefix: str = "inferbox"
    """Prefix of every Redis key and channel, so several appliances (or test runs) share one Redis."""

    model_repository: Path | None = None
    """A Triton-layout folder (``<name>/<version>/model.onnx``) that ``inferbox models import``
    reads when given no folder (``scripts/stack up`` imports it). Unset: none."""

    log_level: str = "INFO"
    """Minimum level of log lines written (DEBUG, INFO, WARNING, ERROR)."""

    log_format: str = "json"
    """``json`` (one object per line, for Logstash) or ``console`` (for a person at a terminal)."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/inferbox"
    """PostgreSQL holding the registry, API keys, the audit log and jobs (the source of truth);
    ``inferbox migrate`` creates the database when missing."""

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

    database_timeout_s: float = Field(default=5.0, gt=0)
    """Longest a request waits for a PostgreSQL connection; beyond it the answer is 503."""

    # --- registry -----------------------------------------------------------------------------
    max_model_bytes: int = Field(default=2 * 1024**3, gt=0)
    """Largest model file accepted by upload (413 beyond)."""

    upload_dir: Path = Path("/tmp/inferbox-uploads")
    """Where uploads are spooled while they are checked (on the API's disk, not in memory)."""

    validation_memory_bytes: int = Field(default=1 << 30, gt=0)
    """Address space given to the process that checks an upload, plus six bytes per file byte."""

    validation_timeout_s: float = Field(default=120.0, gt=0)
    """Wall-clock limit of the upload check."""

    # --- API and gRPC server ------------------------------------------------------------------
    api_bind: str = "127.0.0.1:8000"
    """Address gunicorn listens on (``host:port``); nginx is the only public door."""

    grpc_bind: str = "127.0.0.1:8001"
    """Address ``inferbox grpc`` (the Open Inference Protocol over gRPC) listens on
    (``host:port``, plaintext HTTP/2); nginx passes gRPC calls on the HTTPS port to it."""

    grpc_processes: int = Field(default=1, ge=1, le=64)
    """gRPC server processes sharing ``grpc_bind`` (``SO_REUSEPORT``); each serves about what
    one core can."""

    grpc_metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the gRPC server's own ``/metrics`` (the API's request metrics, for its calls);
    0: none."""

    grpc_metrics_host: str = "127.0.0.1"
    """Address that port listens on (``0.0.0.0`` in the appliance, for Prometheus)."""

    api_workers: int = Field(default=2, ge=1)
    """Number of gunicorn (uvicorn) worker processes."""

    default_timeout_ms: int = Field(default=30_000, gt=0)
    """Deadline of a synchronous call when neither the request nor the model config sets one."""

    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request body the API reads; larger bodies get 413."""

    max_tensor_rank: int = Field(default=8, gt=0)
    """Most dimensions one input tensor may declare."""

    max_tensor_dim: int = Field(default=16_777_216, gt=0)
    """Largest single dimension an input tensor may declare."""

    max_tensor_elements: int = Field(default=16_777_216, gt=0)
    """Most elements one input tensor may hold."""

    max_bytes_elements: int = Field(default=1_048_576, gt=0)
    """Most elements one BYTES input may hold: each is a Python object while it is decoded and
    checked (about 1 s of CPU per million), so they get their own, lower bound."""

    max_queued_bytes: int = Field(default=1 << 30, gt=0)
    """Tensor bytes one API process may have queued for the workers and not yet answered
    (503 beyond): with ``api_workers`` this bounds what the queues hold in Redis."""

    tensor_dir: str = ""
    """A directory the API processes and the workers share, in memory (a tmpfs: the compose
    volume ``tensors``, or a folder under ``/dev/shm``), through which a call's inputs of at
    least ``tensor_file_min_bytes`` travel as a file instead of through Redis; empty: every
    input travels through Redis. Set it to the same directory on the API, the gRPC server and
    every worker."""

    tensor_file_min_bytes: int = Field(default=256 * 1024, gt=0)
    """Inputs of a call smaller than this in all travel through Redis even with
    ``tensor_dir`` set (a file costs a few system calls; a small call is cheaper inline)."""

    max_concurrent_decodes: int = Field(default=1, gt=0)
    """Large request bodies (256 KiB and up) decoded at once per API process, each in a thread
    so the event loop keeps serving; more wait their turn (this bounds their memory too)."""

    status_cache_s: float = Field(default=0.5, ge=0)
    """How long an API process trusts its cached copy of a model's catalog entry and readiness."""

    slow_request_ms: float = Field(default=1000.0, ge=0)
    """An inference request slower than this is logged ("slow request", with ``duration_ms``); 0: never."""

    # --- response cache ----------------------------------------------------------------------
    cache_url: str = Field(default="", pattern=r"^(redis://.*)?$")
    """The cache Redis (``redis://...``), apart from the queue's: its own memory budget and an
    evicting policy (``allkeys-lru``), so a full cache never costs a queued call. Empty: no
    response cache (a model's ``response_cache`` then does nothing)."""

    cache_timeout_ms: float = Field(default=50.0, gt=0)
    """Longest a call waits for the cache's answer; past it the call goes to the queue. A cache
    that is down or slow makes a call slower by at most this, never fails it."""

    cache_retry_s: float = Field(default=1.0, gt=0)
    """After the cache connection fails (or several lookups in a row time out), calls skip the
    cache for this long before it is tried again."""

    cache_max_entry_bytes: int = Field(default=1 << 20, ge=0)
    """Largest answer (output tensor bytes) stored; larger answers are computed every time."""

    cache_ttl_s: int = Field(default=3600, ge=0)
    """Expiry of a stored answer (0: none, eviction alone makes room)."""

    cache_per_key: bool = False
    """Keep every model's entries per API key (as a model's ``response_cache_per_key`` does
    for that model): a key never gets an answer another key's call stored, and cannot tell
    from the answer time whether another key sent the same input (docs/security.md)."""

    # --- security -----------------------------------------------------------------------------
    auth_enabled: bool = True
    """Require an API key (``Authorization: Bearer``) on every route but health and metadata;
    ``false`` is for development only (a warning is logged at start)."""

    key_cache_s: float = Field(default=1.0, gt=0, le=1.0)
    """How long an API process trusts its copy of a key; a revocation takes effect within it."""

    key_slot_ttl_s: float = Field(default=330.0, gt=0)
    """Expiry of a concurrency slot, so slots of a crashed API process free themselves; longer
    than the longest synchronous call (``max_request_timeout_s``), so a running call always
    holds its slot."""

    key_default_max_concurrency: int = Field(default=64, ge=0, le=2**31 - 1)
    """Calls in flight a key made over the API may have when its creator names no limit; 0:
    none. ``"max_concurrency": null`` asks for no limit; the bootstrap admin key has none. This
    bounds the share of the workers one key can hold whatever its calls cost."""

    key_default_rate_per_s: float = Field(default=0.0, ge=0, le=1e9)
    """Rate limit (requests per second, burst as many) a key made over the API gets when its
    creator names none; 0 (the default): none. A count of calls says nothing of their cost: a
    rate low enough to protect the workers from one key's heavy calls would throttle cheap ones
    (a tiny model serves thousands a second), so the default limit is the concurrency one."""

    max_request_timeout_s: float = Field(default=300.0, gt=0)
    """Longest deadline a synchronous call may have, whatever its ``timeout`` parameter or its
    model's config say: nginx's ``INFERBOX_NGINX_PROXY_TIMEOUT`` (300 s) stops waiting then."""

    @property
    def slot_ttl_s(self) -> float:
        """The concurrency slots' expiry in use: ``key_slot_ttl_s``, raised to 30 s past
        ``max_request_timeout_s`` when set shorter (a slot that expired during its call would
        let a key run more than ``max_concurrency`` calls)."""
        return max(self.key_slot_ttl_s, self.max_request_timeout_s + 30)

    audit_failure_window_s: int = Field(default=10, ge=1)
    """Auth failures are written to the audit log once per remote address per this window."""

    trusted_proxies: str = "127.0.0.1,::1"
    """Addresses or networks (comma-separated) of the proxy in front (nginx): only a peer among
    them may name the client with ``X-Real-IP`` (and ``X-Forwarded-For``, read by uvicorn). In
    compose, nginx's address on the backend network."""

    # --- worker -------------------------------------------------------------------------------
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Name of this worker as a Redis consumer and in status; unique per process."""

    worker_providers: list[str] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    """Execution providers in preference order (a JSON list), intersected with what ONNX
    Runtime offers."""

    worker_require_cuda: bool = False
    """Refuse to start (exit non-zero) unless sessions really run on CUDA: a GPU worker never
    serves on the CPU silently."""

    worker_cache_dir: Path = Path("/tmp/inferbox-cache")
    """Where a worker keeps local copies of model files."""

    worker_metrics_port: int = Field(default=0, ge=0)
    """Port of the worker's Prometheus ``/metrics`` endpoint (0 turns it off)."""

    worker_metrics_host: str = "127.0.0.1"
    """Address the worker's ``/metrics`` endpoint listens on (``0.0.0.0`` inside a container)."""

    worker_block_ms: int = Field(default=1000, gt=0)
    """Longest a worker thread blocks on an empty queue before checking for shutdown and claims."""

    worker_claim_idle_ms: int = Field(default=5000, gt=0)
    """A queued entry delivered to a worker and not acknowledged for this long is claimed by another."""

    worker_heartbeat_s: float = Field(default=2.0, gt=0)
    """How often a worker refreshes its liveness and model status in Redis."""

    worker_status_ttl_s: float = Field(default=10.0, gt=0)
    """After this long without a heartbeat a worker's models count as not ready."""

    worker_sync_s: float = Field(default=1.0, gt=0)
    """How often a worker compares the catalog with what it has loaded."""

    worker_memory_budget_bytes: int = Field(default=0, ge=0)
    """Memory resident models may take in this worker (device memory on a GPU, RSS on a CPU);
    least-recently-used idle models are evicted beyond it. 0: no limit."""

    worker_local_model_paths: bool = False
    """Serve catalog entries that name a file on the worker's disk rather than a stored model
    file (tests and development only): the catalog is in Redis, and a worker that obeyed it
    would load any file it can read."""

    worker_warmup_max_bytes: int = Field(default=1 << 30, gt=0)
    """Most bytes of inputs one synthetic run at load may allocate (the warm-up, Triton's
    warm-up samples, padded batch sizes, the capacity sweep). A version whose warm-up needs more
    fails to load with that reason, and the sweep stops below it: an uploaded model's fixed
    dimensions or samples could otherwise ask for any amount of memory. What ONNX Runtime
    allocates inside a run is bounded by the container's memory limit only."""

    worker_capacity_sweep_s: float = Field(default=0.1, ge=0)
    """Time per batch size of the capacity sweep run after a version loads (0: no sweep)."""

    worker_recycle_factor: float = Field(default=3.0, ge=0)
    """Restart (drain, re-exec, reload) when the worker's memory exceeds this many times its
    baseline plus its models' measured sizes; ONNX Runtime's arenas never shrink. 0: never."""

    # --- model defaults (a model's own config overrides these) -------------------------------
    default_max_batch_size: int = Field(default=64, ge=0)
    """Batch size limit given to models whose dimension 0 is dynamic."""

    default_max_queue_size: int = Field(default=2048, gt=0)
    """Queued plus running requests a model accepts before answering 503."""

    # --- gateway certificate (watched by the API) ----------------------------------------------
    tls_cert_file: Path | None = None
    """The certificate nginx serves (mounted read-only); its expiry is exported as
    ``inferbox_tls_certificate_expiry_timestamp_seconds`` for the expiry alert. Unset:
    not exported."""

    # --- async jobs ----------------------------------------------------------------------------
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
    """How often each worker's reconciler looks for lost, expired and undelivered jobs."""

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

    jobs_webhook_secret: str = ""
    """HMAC-SHA256 key signing completion webhooks (``X-Inferbox-Signature``); empty: the
    webhooks go unsigned."""

    jobs_webhook_max_attempts: int = Field(default=8, ge=1)
    """Deliveries tried (with exponential backoff from 1 s up to 10 min) before giving up."""

    jobs_webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Time limit of one webhook delivery."""

    jobs_webhook_allow_private: bool = False
    """Whether webhooks may call private, loopback and link-local addresses. Off, a job cannot
    make the appliance call its own internal services (Redis, PostgreSQL, MinIO...)."""
