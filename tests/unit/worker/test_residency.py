"""The residency policy: LRU eviction under a budget, never pinned or busy versions."""

from __future__ import annotations

import pytest

from inferbox.worker.residency import NoRoom, Residency

pytestmark = pytest.mark.unit


def test_unlimited_budget_never_evicts():
    residency = Residency(0)
    residency.add("a", 10**12)
    assert residency.plan(10**12) == []


def test_least_recently_used_idle_versions_go_first():
    residency = Residency(100)
    for key in ("a", "b", "c"):
        residency.add(key, 30)
    residency.touch("a")
    assert residency.plan(30) == ["b"]
    assert residency.plan(50) == ["b", "c"]


def test_pinned_and_busy_versions_stay():
    residency = Residency(100)
    residency.add("pinned", 40, pinned=True)
    residency.add("busy", 30)
    residency.add("idle", 30)
    assert residency.plan(30, busy=lambda k: k == "busy") == ["idle"]
    with pytest.raises(NoRoom):
        residency.plan(61, busy=lambda k: k == "busy")
    residency.pin("pinned", False)
    assert residency.plan(61, busy=lambda k: k == "busy") == ["pinned", "idle"]


def test_remove_frees_its_bytes():
    residency = Residency(50)
    residency.add("a", 50)
    residency.remove("a")
    assert residency.used == 0 and "a" not in residency
    assert residency.plan(50) == []


def test_a_version_larger_than_the_budget_runs_alone():
    residency = Residency(50)
    residency.add("a", 20)
    residency.add("b", 20)
    assert residency.plan(80) == ["a", "b"]
    residency.pin("a")
    with pytest.raises(NoRoom):
        residency.plan(80)
