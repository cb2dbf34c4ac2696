"""Which model versions stay resident under a memory budget.

Each loaded version has a measured size (device memory on a GPU, resident memory on the CPU).
Admitting a new one evicts least-recently-used versions until the sum fits the budget; pinned
versions and versions with calls queued or running are never evicted. The policy is pure
bookkeeping: the worker asks it what to evict and does the unloading itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


class NoRoom(Exception):
    """Nothing evictable frees enough memory for the version asked for."""


@dataclass
class _Entry:
    size: int
    pinned: bool
    last_used: float = field(default_factory=time.monotonic)


class Residency:
    """LRU bookkeeping of resident versions against a byte budget (0 means unlimited)."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: dict[Hashable, _Entry] = {}

    @property
    def used(self) -> int:
        """Bytes held by resident versions."""
        return sum(entry.size for entry in self._entries.values())

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def resident(self) -> list[Hashable]:
        """Resident versions, least recently used first."""
        return sorted(self._entries, key=lambda k: self._entries[k].last_used)

    def plan(self, size: int, busy: Callable[[Hashable], bool] = lambda _: False) -> list[Hashable]:
        """Versions to evict, least recently used first, so ``size`` more bytes fit.

        A version larger than the whole budget evicts every other version and runs alone.
        Raises ``NoRoom`` when pinned or busy versions hold the memory it needs.
        """
        if self.budget <= 0:
            return []
        need = self.used + size - self.budget
        victims: list[Hashable] = []
        kept = 0
        for key in self.resident():
            if need <= 0:
                break
            entry = self._entries[key]
            if entry.pinned or busy(key):
                kept += entry.size
                continue
            victims.append(key)
            need -= entry.size
        if need > 0 and kept:
            raise NoRoom(
                f"{size} bytes do not fit a budget of {self.budget} bytes "
                f"({kept} held by pinned or busy models)"
            )
        return victims

    def add(self, key: Hashable, size: int, *, pinned: bool = False) -> None:
        """Record a version as resident with its measured size."""
        self._entries[key] = _Entry(size=size, pinned=pinned)

    def remove(self, key: Hashable) -> None:
        """Forget a version (unloaded or evicted)."""
        self._entries.pop(key, None)

    def touch(self, key: Hashable) -> None:
        """Mark a version as just used."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_used = time.monotonic()

    def pin(self, key: Hashable, pinned: bool = True) -> None:
        """Pin (never evict) or unpin a resident version."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.pinned = pinned

    def last_used(self, key: Hashable) -> float:
        """When a resident version was last used (``time.monotonic``; -inf if unknown)."""
        entry = self._entries.get(key)
        return entry.last_used if entry else float("-inf")

    def size(self, key: Hashable) -> int:
        """Measured size of a resident version (0 if unknown)."""
        entry = self._entries.get(key)
        return entry.size if entry else 0
