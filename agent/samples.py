"""A fixed-size ring of float samples for the process-wide health figures (agent/metrics.py,
agent/player.py), read by benchmarks through ``GET /debug/stats``.

Its memory is allocated once, at start (8 bytes a sample): a ``deque(maxlen=N)`` of floats also
stops growing at N, but only once full, and at 32 bytes a sample (a float object and a slot). At
50 calls it took 200 s to fill (500,000 frames) and grew the server's RSS by 16 MB meanwhile: the
soak (bench/soak.py) read that as a leak.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import numpy as np


class SampleRing:
    """The last ``keep`` samples appended; ``list(ring)`` gives them oldest first."""

    __slots__ = ("_buf", "_keep", "_next", "_count")

    def __init__(self, keep: int) -> None:
        if keep <= 0:
            raise ValueError("keep must be positive")
        self._buf = array("d", bytes(8 * keep))
        self._keep = keep
        self._next = 0  # where the next sample goes
        self._count = 0  # samples held (at most keep)

    def append(self, value: float) -> None:
        i = self._next
        self._buf[i] = value
        self._next = 0 if i + 1 == self._keep else i + 1
        if self._count < self._keep:
            self._count += 1

    def clear(self) -> None:
        self._next = self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[float]:
        start = self._next - self._count
        if start >= 0:
            return iter(self._buf[start : self._next])
        return iter(self._buf[start:] + self._buf[: self._next])

    def percentiles(self, pcts: list[float]) -> list[float] | None:
        """The percentiles of the samples held (linear interpolation), None when empty. numpy's
        selection, not a sort: at the 500,000 samples of a busy server, two Python sorts per figure
        held the event loop 80 ms for a ``GET /debug/stats`` (every call's audio waited)."""
        if not self._count:
            return None
        held = np.frombuffer(self._buf, dtype=np.float64)
        start = self._next - self._count
        if self._count < self._keep:  # not yet wrapped: the samples are one run
            held = held[start : self._next]
        return [float(v) for v in np.percentile(held, pcts)]
