"""What an emulator remembers of its requests, bounded.

Tests read these records (faults injected, utterances served, REST requests); a long-running
``voxroute emulators`` (a soak, a benchmark) must not grow with them. Each keeps its newest
``keep`` items: past ``2 * keep`` the oldest are dropped in one step, so an append stays O(1)
amortised and a test, which makes far fewer, sees everything.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

KEEP = 10_000


class Recent(list[T]):
    """A list that keeps its newest ``keep`` items (compares, iterates and indexes as a list)."""

    def __init__(self, keep: int = KEEP) -> None:
        super().__init__()
        self.keep = keep

    def append(self, item: T) -> None:
        super().append(item)
        if len(self) > 2 * self.keep:
            del self[: len(self) - self.keep]


def remember(table: dict[K, V], key: K, value: V, keep: int = KEEP) -> None:
    """``table[key] = value``, then the oldest entries dropped while there are more than ``keep``."""
    table.pop(key, None)  # a key set again counts as new
    table[key] = value
    while len(table) > keep:
        del table[next(iter(table))]
