#!/usr/bin/env python3
"""Writes grafana/dashboards/*.json from the panel lists below (run after editing them).

    python grafana/build_dashboards.py

Each panel is (title, description, unit, [(legend, PromQL), ...]); a panel's description says
what it means (docs/observability.md repeats it). Panels tagged ``gpu`` have data
only on a machine with a GPU. tests/observability checks the JSON is up to date and that every
query parses and returns data against a real Prometheus scraping a real API and worker.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "prometheus"}
R = "$__rate_interval"
INFER = 'route="infer"'


def q(expr: str, legend: str = "") -> tuple[str, str]:
    return (legend, expr)


OVERVIEW = [
    (
        "Throughput",
        "Inference requests answered per second, by HTTP status.",
        "reqps",
        [q(f"sum by (status) (rate(inferbox_requests_total{{{INFER}}}[{R}]))", "{{status}}")],
    ),
    (
        "Error ratio",
        "Share of inference requests answered 5xx (alert above 5%).",
        "percentunit",
        [
            q(
                f'(sum(rate(inferbox_requests_total{{{INFER},status=~"5.."}}[{R}])) or vector(0))'
                f" / sum(rate(inferbox_requests_total{{{INFER}}}[{R}]))",
                "5xx",
            )
        ],
    ),
    (
        "Latency p50 / p95 / p99",
        "End-to-end time in the API, arrival to answer (alert: p99 > 1s).",
        "s",
        [
            q(
                f"histogram_quantile({p}, sum by (le) (rate(inferbox_request_duration_seconds_bucket{{{INFER}}}[{R}])))",
                f"p{int(p * 100)}",
            )
            for p in (0.5, 0.95, 0.99)
        ],
    ),
    (
        "In flight",
        "Inference requests inside the API right now.",
        "short",
        [q("sum(inferbox_requests_in_flight)", "in flight")],
    ),
    (
        "Rejections",
        "Requests refused or timed out per second, by reason (queue_full, deadline, ...).",
        "reqps",
        [q(f"sum by (reason) (rate(inferbox_rejections_total[{R}]))", "{{reason}}")],
    ),
    (
        "Queue depth",
        "Calls queued or running per model version and lane (alert: growing backlog).",
        "short",
        [
            q(
                "max by (model, version, lane) (inferbox_queue_depth)",
                "{{model}} v{{version}} {{lane}}",
            )
        ],
    ),
    (
        "Queue wait p95",
        "Time calls wait before their batch runs, per lane (hi, lo priority).",
        "s",
        [
            q(
                f"histogram_quantile(0.95, sum by (le, lane) (rate(inferbox_queue_wait_seconds_bucket[{R}])))",
                "{{lane}}",
            )
        ],
    ),
    (
        "Batch size (mean)",
        "Rows per batch the workers ran; grows with load when batching works.",
        "short",
        [
            q(
                f"sum by (model) (rate(inferbox_batch_size_sum[{R}])) / sum by (model) (rate(inferbox_batch_size_count[{R}]))",
                "{{model}}",
            )
        ],
    ),
    (
        "Compute p95",
        "ONNX Runtime time per batch.",
        "s",
        [
            q(
                f"histogram_quantile(0.95, sum by (le, model) (rate(inferbox_compute_seconds_bucket[{R}])))",
                "{{model}}",
            )
        ],
    ),
    (
        "Worker busy",
        "Fraction of time each worker spends computing (1 = always busy).",
        "percentunit",
        [q(f"sum by (instance) (rate(inferbox_compute_seconds_sum[{R}]))", "{{instance}}")],
    ),
    (
        "Workers up",
        "Workers answering their /metrics (alert at 0).",
        "short",
        [q('sum(up{job="inferbox-worker"})', "workers")],
    ),
    (
        "Resident models",
        "Model versions loaded per worker, and their model file bytes.",
        "short",
        [
            q("sum by (instance) (inferbox_models_resident)", "{{instance}} versions"),
            q("sum by (instance) (inferbox_model_bytes)", "{{instance}} bytes"),
        ],
    ),
    (
        "Worker calls",
        "Calls workers finished per second: ok, error, expired (deadline passed in queue).",
        "reqps",
        [q(f"sum by (outcome) (rate(inferbox_worker_calls_total[{R}]))", "{{outcome}}")],
    ),
    (
        "Model cache disk free",
        "Free share of the disk holding the workers' model cache (alert below 10%).",
        "percentunit",
        [
            q(
                "min by (instance) (inferbox_disk_free_bytes / inferbox_disk_size_bytes)",
                "{{instance}}",
            )
        ],
    ),
    (
        "Response cache memory and evictions",
        "The cache Redis's memory against its maxmemory, and entries it evicted per second to stay within it (alert when it does not answer).",
        "bytes",
        [
            q("max(inferbox_cache_memory_bytes)", "used"),
            q("max(inferbox_cache_memory_limit_bytes)", "limit"),
            q(f"max(rate(inferbox_cache_evictions_total[{R}]))", "evictions/s"),
        ],
    ),
    (
        "Response cache latency p99",
        "Time for a lookup (before a call is queued) and an insert to be answered by the cache Redis, per source.",
        "s",
        [
            q(
                f"histogram_quantile(0.99, sum by (le, source) (rate(inferbox_cache_lookup_duration_seconds_bucket[{R}])))",
                "lookup {{source}}",
            ),
            q(
                f"histogram_quantile(0.99, sum by (le, source) (rate(inferbox_cache_insert_duration_seconds_bucket[{R}])))",
                "insert {{source}}",
            ),
        ],
    ),
    (
        "GPU utilization",
        "Busy fraction per GPU (no data without a GPU).",
        "percentunit",
        [q("inferbox_gpu_utilization_ratio", "gpu {{gpu}}")],
        "gpu",
    ),
    (
        "GPU memory",
        "Memory used per GPU against its total (alert above 95%).",
        "bytes",
        [
            q("inferbox_gpu_memory_used_bytes", "gpu {{gpu}} used"),
            q("inferbox_gpu_memory_total_bytes", "gpu {{gpu}} total"),
        ],
        "gpu",
    ),
    (
        "GPU temperature",
        "Core temperature per GPU.",
        "celsius",
        [q("inferbox_gpu_temperature_celsius", "gpu {{gpu}}")],
        "gpu",
    ),
]

M = 'model=~"$model"'
PER_MODEL = [
    (
        "Throughput by version and status",
        "Inference requests per second.",
        "reqps",
        [
            q(
                f"sum by (version, status) (rate(inferbox_requests_total{{{INFER},{M}}}[{R}]))",
                "v{{version}} {{status}}",
            )
        ],
    ),
    (
        "Latency p50 / p99",
        "End-to-end API time per version.",
        "s",
        [
            q(
                f"histogram_quantile({p}, sum by (le, version) (rate(inferbox_request_duration_seconds_bucket{{{INFER},{M}}}[{R}])))",
                f"v{{{{version}}}} p{int(p * 100)}",
            )
            for p in (0.5, 0.99)
        ],
    ),
    (
        "Queue depth",
        "Calls queued or running per version and lane.",
        "short",
        [q(f"max by (version, lane) (inferbox_queue_depth{{{M}}})", "v{{version}} {{lane}}")],
    ),
    (
        "Queue wait p95",
        "Wait before the batch runs, per lane.",
        "s",
        [
            q(
                f"histogram_quantile(0.95, sum by (le, lane) (rate(inferbox_queue_wait_seconds_bucket{{{M}}}[{R}])))",
                "{{lane}}",
            )
        ],
    ),
    (
        "Batch size (mean)",
        "Rows per batch.",
        "short",
        [
            q(
                f"sum by (version) (rate(inferbox_batch_size_sum{{{M}}}[{R}])) / sum by (version) (rate(inferbox_batch_size_count{{{M}}}[{R}]))",
                "v{{version}}",
            )
        ],
    ),
    (
        "Compute p50 / p99",
        "ONNX Runtime time per batch.",
        "s",
        [
            q(
                f"histogram_quantile({p}, sum by (le, version) (rate(inferbox_compute_seconds_bucket{{{M}}}[{R}])))",
                f"v{{{{version}}}} p{int(p * 100)}",
            )
            for p in (0.5, 0.99)
        ],
    ),
    (
        "Worker errors by class",
        "Calls the worker answered with an error: invalid_input, inference_failed.",
        "reqps",
        [
            q(
                f"sum by (error_class) (rate(inferbox_worker_errors_total{{{M}}}[{R}]))",
                "{{error_class}}",
            )
        ],
    ),
    (
        "Model load time",
        "Seconds to create and warm up the session at the last loads.",
        "s",
        [
            q(
                f"max by (version) (inferbox_model_load_seconds_sum{{{M}}} / inferbox_model_load_seconds_count{{{M}}})",
                "v{{version}}",
            )
        ],
    ),
    (
        "Model file bytes",
        "Size of each loaded version's model file.",
        "bytes",
        [q(f"max by (version) (inferbox_model_bytes{{{M}}})", "v{{version}}")],
    ),
    (
        "Response cache",
        "Lookups per second by result (hit; miss; error: the cache did not answer in time, the call was computed) and source (infer: HTTP and gRPC calls; job: job chunks); the hit ratio of calls. Only models with response_cache look up.",
        "reqps",
        [
            q(
                f"sum by (version, source, result) (rate(inferbox_cache_lookups_total{{{M}}}[{R}]))",
                "v{{version}} {{source}} {{result}}",
            ),
            q(
                f'sum by (version) (rate(inferbox_cache_lookups_total{{{M},source="infer",result="hit"}}[{R}])) / sum by (version) (rate(inferbox_cache_lookups_total{{{M},source="infer"}}[{R}]))',
                "v{{version}} hit ratio",
            ),
        ],
    ),
    (
        "Response cache inserts and bytes",
        "Answers offered to the cache per second by result (stored; too_large: over INFERBOX_CACHE_MAX_ENTRY_BYTES; stale: computed under another config during a change; error: refused, e.g. a full cache that cannot evict), and bytes stored and served.",
        "short",
        [
            q(
                f"sum by (version, result) (rate(inferbox_cache_inserts_total{{{M}}}[{R}]))",
                "v{{version}} {{result}} /s",
            ),
            q(
                f"sum by (version) (rate(inferbox_cache_stored_bytes_total{{{M}}}[{R}]))",
                "v{{version}} stored B/s",
            ),
            q(
                f"sum by (version) (rate(inferbox_cache_served_bytes_total{{{M}}}[{R}]))",
                "v{{version}} served B/s",
            ),
        ],
    ),
]


JOBS = [
    (
        "Jobs by state",
        "Jobs in the ledger per state (queued, running, succeeded, failed, cancelled, expired).",
        "short",
        [q("max by (state) (sum by (state, instance) (inferbox_jobs))", "{{state}}")],
    ),
    (
        "Jobs submitted and finished",
        "Jobs accepted by the API, and brought to an end by workers, per second.",
        "reqps",
        [
            q(f"sum(rate(inferbox_jobs_submitted_total[{R}]))", "submitted"),
            q(f"sum by (state) (rate(inferbox_jobs_finished_total[{R}]))", "{{state}}"),
        ],
    ),
    (
        "Job duration p50 / p95",
        "Time from a job's claim to its stored result (one attempt).",
        "s",
        [
            q(
                f"histogram_quantile({p}, sum by (le) (rate(inferbox_job_duration_seconds_bucket[{R}])))",
                f"p{int(p * 100)}",
            )
            for p in (0.5, 0.95)
        ],
    ),
    (
        "Job rows per second",
        "Rows computed for jobs, by model (job chunks run on the low lane).",
        "short",
        [q(f"sum by (model) (rate(inferbox_job_rows_total[{R}]))", "{{model}}")],
    ),
    (
        "Jobs queued again",
        "Jobs the reconciler put back: worker_lost (lease ran out), transport_lost (Redis lost the queue), released (a worker stopped).",
        "short",
        [q("sum by (reason) (increase(inferbox_jobs_requeued_total[1h]))", "{{reason}}")],
    ),
    (
        "Webhook deliveries",
        "Completion webhooks per outcome over the last hour: delivered, retry, failed.",
        "short",
        [q("sum by (outcome) (increase(inferbox_job_webhooks_total[1h]))", "{{outcome}}")],
    ),
    (
        "Low-lane queue wait p95",
        "How long job chunks wait behind interactive calls before their batch runs.",
        "s",
        [
            q(
                f'histogram_quantile(0.95, sum by (le, model) (rate(inferbox_queue_wait_seconds_bucket{{lane="lo"}}[{R}])))',
                "{{model}}",
            )
        ],
    ),
]


def dashboard(uid: str, title: str, panels: list, variables: list | None = None) -> dict:
    built = []
    for index, (name, description, unit, targets, *tags) in enumerate(panels):
        built.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": name,
                "description": description,
                "datasource": DS,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (legend, expr) in enumerate(targets)
                ],
                **({"tags": tags} if tags else {}),
            }
        )
    return {
        "uid": uid,
        "title": title,
        "tags": ["inferbox"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables or []},
        "panels": built,
    }


MODEL_VARIABLE = {
    "name": "model",
    "label": "model",
    "type": "query",
    "datasource": DS,
    "query": {
        "query": 'label_values(inferbox_requests_total{route="infer"}, model)',
        "refId": "model",
    },
    "definition": 'label_values(inferbox_requests_total{route="infer"}, model)',
    "includeAll": True,
    "multi": True,
    "refresh": 2,
}

DASHBOARDS = {
    "overview": dashboard("inferbox-overview", "inferbox overview", OVERVIEW),
    "per-model": dashboard("inferbox-model", "inferbox per model", PER_MODEL, [MODEL_VARIABLE]),
    "jobs": dashboard("inferbox-jobs", "inferbox jobs", JOBS),
}


def render(board: dict) -> str:
    return json.dumps(board, indent=2) + "\n"


def main() -> None:
    for name, board in DASHBOARDS.items():
        (HERE / "dashboards" / f"{name}.json").write_text(render(board))


if __name__ == "__main__":
    main()
