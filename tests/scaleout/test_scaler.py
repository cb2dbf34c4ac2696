"""The autoscaler's decisions from queue waits, on a clock the test controls."""

from __future__ import annotations

import pytest

from inferbox.scaleout.scaler import Autoscaler

pytestmark = pytest.mark.unit


def _scaler(**overrides) -> Autoscaler:
    options = dict(up_wait_s=0.05, down_wait_s=0.005, down_after_s=3.0, interval_s=1.0)
    options.update(overrides)
    scaler = Autoscaler(1, 3, **options)
    scaler._window_start = 0.0
    return scaler


def test_decides_once_per_interval():
    scaler = _scaler()
    assert scaler.decide(1, now=0.5) is None
    assert scaler.decide(1, now=1.0).direction == "hold"


def test_long_waits_add_one_actor_at_a_time_up_to_the_maximum():
    scaler = _scaler()
    targets = []
    for second in range(1, 8):
        scaler.observe([0.2] * 10)
        targets.append(scaler.decide(min(targets[-1] if targets else 1, 3), now=second).target)
    assert targets == [2, 3, 3, 3, 3, 3, 3]


def test_the_90th_percentile_decides_not_the_worst_call():
    scaler = _scaler()
    scaler.observe([0.001] * 95 + [2.0] * 5)
    decision = scaler.decide(1, now=1.0)
    assert decision.direction == "hold" and decision.wait_p90_s < 0.05


def test_scales_down_only_after_a_calm_stretch_and_never_below_the_minimum():
    scaler = _scaler()
    seen = []
    for second in range(1, 12):
        current = seen[-1] if seen else 3
        seen.append(scaler.decide(current, now=second).target)
    # Calm from t=1: first removal at t=4 (3 s), the next after another 3 s, then the minimum.
    assert seen == [3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1]


def test_a_busy_interval_resets_the_calm_stretch():
    scaler = _scaler()
    assert scaler.decide(2, now=1).target == 2
    assert scaler.decide(2, now=2).target == 2
    scaler.observe([0.02] * 10)  # between the thresholds: not calm, not slow
    assert scaler.decide(2, now=3).target == 2
    assert scaler.decide(2, now=4).target == 2
    assert scaler.decide(2, now=5).target == 2
    assert scaler.decide(2, now=6).target == 2
    assert scaler.decide(2, now=7).target == 1


def test_out_of_bounds_counts_are_brought_back():
    scaler = _scaler()
    assert scaler.decide(0, now=1).target == 1
    assert scaler.decide(5, now=2).target == 3
