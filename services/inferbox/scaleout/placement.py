"""Where a model version goes among the actors: the local worker's residency rules, per actor.

Each actor has its own ``Residency`` (its GPU's memory budget). A version goes first to an actor
where it fits without evicting anything (the one with the most room left); only for a call that
waits may it evict, the least recently used versions across the actors, and never a pinned
version or a busy one. Pure bookkeeping: the Ray worker does the loading and unloading.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from inferbox.worker.residency import NoRoom, Residency


@dataclass(frozen=True)
class Choice:
    """An actor to load on, and the versions to evict from it first (least recently used first)."""

    actor: str
    victims: list[Hashable]


def room(residency: Residency) -> float:
    """Bytes left under an actor's budget (unlimited budgets rank by fewest bytes held)."""
    if residency.budget <= 0:
        return float("inf") if not residency.used else 1e18 - residency.used
    return residency.budget - residency.used


def fits(residency: Residency, size: int) -> bool:
    """The version fits this actor without evicting anything."""
    return residency.budget <= 0 or residency.used + size <= residency.budget


def choose(
    actors: dict[str, Residency],
    size: int,
    *,
    evict: bool,
    busy: Callable[[Hashable], bool] = lambda _: False,
) -> Choice | None:
    """The actor a version of ``size`` bytes should load on, or None where there is no room.

    ``evict`` allows evicting idle, unpinned versions (a call is waiting for this one); without
    it only actors with room qualify, as at the local worker's start.
    """
    free = [name for name, residency in actors.items() if fits(residency, size)]
    if free:
        best = max(free, key=lambda name: (room(actors[name]), name))
        return Choice(best, [])
    if not evict:
        return None
    options: list[tuple[float, int, str, list[Hashable]]] = []
    for name, residency in actors.items():
        try:
            victims = residency.plan(size, busy=busy)
        except NoRoom:
            continue
        # Least recently used across actors, as within one: the actor whose victims were all
        # used longest ago (an empty actor, no victims, first); then the fewest bytes given up.
        newest = max((residency.last_used(v) for v in victims), default=float("-inf"))
        freed = sum(residency.size(v) for v in victims)
        options.append((newest, freed, name, victims))
    if not options:
        return None
    _, _, name, victims = min(options, key=lambda option: option[:3])
    return Choice(name, victims)
