"""Load held: a soak at a fraction of the maximum throughput measured in the same run.

The maximum is measured first (closed loop, through nginx and TLS, for ``max_probe_s``);
absolute numbers mean little on a shared machine, so the soak's rate is relative to it. Then
``soak_fraction`` of it is held for ``soak_s``: every call must answer 200 (nothing lost, no
error), p99 must stay within ``p99_target_s``, the rate must be held, and no process may grow
its resident memory by more than ``rss_growth_bound`` (or 16 MiB, whichever is larger: small
processes move by a few MiB for reasons of their own) between the end of the warm-up and the
end of the soak.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.reliability.load import Load, describe, latency_quantile, statuses, throughput
from tests.reliability.report import record
from tests.support.chaos import SETTINGS, children, rss_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONCURRENCY = 8
WARMUP_S = 5.0
RSS_SLACK = 16 << 20


def _processes(stack) -> dict[str, int]:
    """Pids of every process serving calls, by role."""
    found = {"worker": stack.worker.pid, "api master": stack.api.pid, "redis": stack.redis.proc.pid}
    for index, pid in enumerate(stack.api_workers()):
        found[f"api worker {index}"] = pid
    master = Path(stack.gateway.prefix / "nginx.pid")
    if master.exists():
        for index, pid in enumerate(children(int(master.read_text().strip()))):
            found[f"nginx worker {index}"] = pid
    return found


@pytest.mark.timeout(int(SETTINGS.soak_s + SETTINGS.max_probe_s + 120))
def test_soak_at_a_fraction_of_the_measured_maximum(healthy):
    with Load(
        healthy.url, healthy.headers, concurrency=CONCURRENCY, verify=healthy.verify
    ) as probe:
        started = time.monotonic()
        time.sleep(SETTINGS.max_probe_s)
    maximum = throughput(probe.calls, started + 1.0, started + SETTINGS.max_probe_s)
    assert maximum > 0, describe(probe.calls)
    target = SETTINGS.soak_fraction * maximum

    load = Load(
        healthy.url, healthy.headers, concurrency=CONCURRENCY, rate=target, verify=healthy.verify
    )
    with load:
        time.sleep(WARMUP_S)
        pids = _processes(healthy)
        rss_before = {role: rss_bytes(pid) for role, pid in pids.items()}
        measured_from = time.monotonic()
        time.sleep(max(0.0, SETTINGS.soak_s - WARMUP_S))
        measured_to = time.monotonic()
        rss_after = {role: rss_bytes(pid) for role, pid in pids.items()}
    calls = [c for c in load.calls if c.start >= measured_from]
    held = throughput(calls, measured_from, measured_to)
    p50, p99 = latency_quantile(calls, 0.5), latency_quantile(calls, 0.99)
    growth = {
        role: (rss_after[role] - rss_before[role]) / max(rss_before[role], 1) for role in pids
    }
    too_much = {
        role: f"{rss_before[role] >> 20} -> {rss_after[role] >> 20} MiB"
        for role in pids
        if rss_after[role] - rss_before[role]
        > max(RSS_SLACK, SETTINGS.rss_growth_bound * rss_before[role])
    }
    counts = statuses(calls)
    record(
        "soak",
        {
            "soak_s": SETTINGS.soak_s,
            "max_per_s": round(maximum, 1),
            "fraction": SETTINGS.soak_fraction,
            "target_per_s": round(target, 1),
            "held_per_s": round(held, 1),
            "calls": len(calls),
            "statuses": {str(k): v for k, v in counts.items()},
            "p50_ms": round(p50 * 1000, 2),
            "p99_ms": round(p99 * 1000, 2),
            "p99_target_ms": SETTINGS.p99_target_s * 1000,
            "rss_mib": {
                role: [round(rss_before[role] / 2**20, 1), round(rss_after[role] / 2**20, 1)]
                for role in pids
            },
            "max_rss_growth": round(max(growth.values()), 3),
        },
    )
    assert set(counts) == {200}, describe(calls)
    assert p99 <= SETTINGS.p99_target_s, f"p99 {p99 * 1000:.1f} ms; {describe(calls)}"
    assert held >= 0.85 * target, f"held {held:.0f}/s of {target:.0f}/s; {describe(calls)}"
    assert not too_much, too_much
