"""A worker's per-version inference statistics, and the API's sum over workers."""

from __future__ import annotations

import msgspec
import pytest

from inferbox.frontend.statistics import version_statistics
from inferbox.worker.statistics import VersionStatistics
from tests.unit.worker.test_oom_split import _spec

pytestmark = pytest.mark.unit


def test_batches_and_failures_are_counted_per_request_and_per_batch_size():
    stats = VersionStatistics()
    stats.batch(8, [10, 20], [100, 200], infer_ns=50, output_ns=5)
    stats.batch(8, [30], [300], infer_ns=70, output_ns=7)
    stats.failed([400, 500])
    snapshot = msgspec.json.decode(stats.snapshot())
    assert snapshot["inference_count"] == 16 and snapshot["execution_count"] == 2
    assert snapshot["success"] == {"count": 3, "ns": 600}
    assert snapshot["fail"] == {"count": 2, "ns": 900}
    assert snapshot["queue"] == {"count": 3, "ns": 60}
    # A batch's session time counts once for each request in it (as Triton counts it).
    assert snapshot["compute_infer"] == {"count": 3, "ns": 50 * 2 + 70}
    assert snapshot["batches"]["8"]["compute_infer"] == {"count": 2, "ns": 120}
    assert snapshot["last_inference"] > 0


def test_the_workers_snapshots_add_up_in_tritons_form():
    one, two = VersionStatistics(), VersionStatistics()
    one.batch(4, [1], [10], infer_ns=5, output_ns=1)
    two.batch(2, [2, 3], [20, 30], infer_ns=6, output_ns=1)
    two.batch(4, [4], [40], infer_ns=7, output_ns=1)
    snapshots = [msgspec.json.decode(s.snapshot()) for s in (one, two)]
    entry = version_statistics(_spec(), snapshots)
    assert entry["name"] == "m" and entry["version"] == "1"
    assert entry["inference_count"] == 10 and entry["execution_count"] == 3
    assert entry["inference_stats"]["success"] == {"count": 4, "ns": 100}
    assert entry["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert [b["batch_size"] for b in entry["batch_stats"]] == [2, 4]
    assert entry["batch_stats"][1]["compute_infer"] == {"count": 2, "ns": 12}


def test_a_version_no_worker_reported_has_zero_counts():
    entry = version_statistics(_spec(), [])
    assert entry["inference_count"] == 0 and entry["batch_stats"] == []
