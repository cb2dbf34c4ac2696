"""Metrics and their exposition: what the API and workers export to Prometheus.

- ``api_metrics``: request counters and latency histograms of the API processes, aggregated
  across gunicorn workers by prometheus-client's multiprocess mode (``exposition``).
- ``worker_metrics``: batch, queue-wait, compute and model-load metrics of a worker.
- ``collectors``: values read at scrape time (queue depth, resident model bytes, disk).
- ``gpu``: per-device NVML gauges, registered only where NVML finds a GPU.
"""
