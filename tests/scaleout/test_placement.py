"""Placement among actors follows the local worker's residency rules, per actor."""

from __future__ import annotations

import pytest

from inferbox.scaleout.placement import choose
from inferbox.worker.residency import Residency

pytestmark = pytest.mark.unit

MB = 1 << 20


def _actor(budget: int, *resident: tuple[str, int, bool]) -> Residency:
    residency = Residency(budget)
    for name, size, pinned in resident:
        residency.add((name, 1), size, pinned=pinned)
    return residency


def test_goes_where_it_fits_with_the_most_room():
    actors = {
        "a": _actor(100 * MB, ("m1", 70 * MB, False)),
        "b": _actor(100 * MB, ("m2", 20 * MB, False)),
    }
    choice = choose(actors, 30 * MB, evict=False)
    assert (choice.actor, choice.victims) == ("b", [])


def test_without_a_waiting_call_nothing_is_evicted():
    actors = {"a": _actor(100 * MB, ("m1", 80 * MB, False))}
    assert choose(actors, 30 * MB, evict=False) is None


def test_a_waiting_call_evicts_the_least_recently_used_across_actors():
    a = _actor(100 * MB, ("old", 50 * MB, False), ("new", 40 * MB, False))
    b = _actor(100 * MB, ("big", 90 * MB, False))
    choice = choose({"a": a, "b": b}, 30 * MB, evict=True)
    assert (choice.actor, choice.victims) == ("a", [("old", 1)])
    a.touch(("old", 1))
    a.touch(("new", 1))  # now b's version is the one used longest ago
    choice = choose({"a": a, "b": b}, 30 * MB, evict=True)
    assert (choice.actor, choice.victims) == ("b", [("big", 1)])


def test_an_empty_actor_beats_any_eviction():
    actors = {"a": _actor(10 * MB, ("m", 8 * MB, False)), "b": _actor(10 * MB)}
    choice = choose(actors, 30 * MB, evict=True)  # larger than any budget: runs alone
    assert (choice.actor, choice.victims) == ("b", [])


def test_pinned_and_busy_versions_stay():
    a = _actor(100 * MB, ("pinned", 80 * MB, True))
    b = _actor(100 * MB, ("busy", 80 * MB, False))
    assert choose({"a": a, "b": b}, 30 * MB, evict=True, busy=lambda k: k == ("busy", 1)) is None
    choice = choose({"a": a, "b": b}, 30 * MB, evict=True)
    assert (choice.actor, choice.victims) == ("b", [("busy", 1)])


def test_unlimited_budgets_spread_by_bytes_held():
    actors = {"a": _actor(0, ("m1", 5 * MB, False)), "b": _actor(0)}
    assert choose(actors, 10 * MB, evict=False).actor == "b"


def test_no_actor_no_place():
    assert choose({}, MB, evict=True) is None
