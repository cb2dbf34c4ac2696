"""Prometheus metrics a worker exports on its own ``/metrics`` port (one process, no aggregation)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "inferbox_batch_size",
    "Rows per batch a worker ran.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMPUTE_SECONDS = Histogram(
    "inferbox_compute_seconds",
    "ONNX Runtime time per batch (its sum's rate is how busy the worker is).",
    ["model", "version"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_WAIT_SECONDS = Histogram(
    "inferbox_queue_wait_seconds",
    "Time a call waited in the queue before its batch ran, by lane (hi, lo: the priority).",
    ["model", "version", "lane"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
CALL_OUTCOMES = ("ok", "error", "expired")
CALLS = Counter(
    "inferbox_worker_calls_total",
    "Calls a worker finished, by outcome (ok, error, expired).",
    ["model", "version", "outcome"],
)
ERROR_CLASSES = ("invalid_input", "inference_failed")
ERRORS = Counter(
    "inferbox_worker_errors_total",
    "Calls a worker answered with an error, by class (invalid_input, inference_failed).",
    ["model", "version", "error_class"],
)
LOAD_SECONDS = Histogram(
    "inferbox_model_load_seconds",
    "Time to create and warm up a session.",
    ["model", "version"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODELS_RESIDENT = Gauge("inferbox_models_resident", "Model versions loaded in this worker.")


def init_model(model: str, version: str) -> None:
    """Create a served version's outcome and error series at zero, so they exist before use."""
    for outcome in CALL_OUTCOMES:
        CALLS.labels(model, version, outcome)
    for error_class in ERROR_CLASSES:
        ERRORS.labels(model, version, error_class)


OOM_SPLITS = Counter(
    "inferbox_oom_splits_total",
    "Batches halved and retried after the device ran out of memory.",
    ["model", "version"],
)
BATCH_RETRIES = Counter(
    "inferbox_batch_halvings_total",
    "Failed batches halved and re-run to find the calls at fault (bounded per batch).",
    ["model", "version"],
)
EVICTIONS = Counter(
    "inferbox_evictions_total",
    "Model versions unloaded to make room for another under the memory budget.",
)
RESIDENT_BYTES = Gauge(
    "inferbox_resident_bytes", "Measured memory of the model versions resident in this worker."
)

# -- async jobs (run by the worker's job lane) ------------------------------------------------
JOBS_FINISHED = Counter(
    "inferbox_jobs_finished_total",
    "Jobs this worker brought to an end state (succeeded, failed) or saw cancelled while running.",
    ["model", "state"],
)
JOB_SECONDS = Histogram(
    "inferbox_job_duration_seconds",
    "Time from a job's claim to its result (one attempt).",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
JOB_ROWS = Counter("inferbox_job_rows_total", "Rows jobs computed, by model.", ["model"])
JOBS_REQUEUED = Counter(
    "inferbox_jobs_requeued_total",
    "Jobs queued again by the reconciler, by reason (worker_lost, transport_lost, released).",
    ["reason"],
)
JOBS = Gauge(
    "inferbox_jobs",
    "Jobs in the ledger by model and state, as this worker's reconciler last counted them "
    "(every worker reports the same figures: aggregate with max, not sum).",
    ["model", "state"],
)
WEBHOOKS = Counter(
    "inferbox_job_webhooks_total",
    "Completion webhook deliveries tried, by outcome (delivered, retry, failed).",
    ["outcome"],
)

# Series that exist before the first event, so dashboards and alerts see zeros, not gaps.
for _reason in ("worker_lost", "transport_lost", "released"):
    JOBS_REQUEUED.labels(_reason)
for _outcome in ("delivered", "retry", "failed"):
    WEBHOOKS.labels(_outcome)
