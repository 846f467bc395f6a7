"""Process-wide real-time health figures, read by benchmarks through ``GET /debug/stats``.

- inbound lag: how late a caller frame is processed compared with the carrier's own media
  clock (its ``timestamp``), relative to the earliest frame of the same call.
- outbound lateness: how late the player sent audio against its schedule (agent/player.py).
Fixed-size rings allocated at start (agent/samples.py): nothing grows with uptime.
"""

from __future__ import annotations

import time

from voxroute.agent.player import PACING
from voxroute.agent.samples import SampleRing


class LagStats:
    def __init__(self, keep: int = 500_000) -> None:
        self.lag_ms = SampleRing(keep)  # allocated once: no growth while it fills

    def reset(self) -> None:
        self.lag_ms.clear()


INBOUND = LagStats()


class InboundClock:
    """Per call: lag of each frame against the carrier's media timestamps."""

    __slots__ = ("_best",)

    def __init__(self) -> None:
        self._best: float | None = None  # smallest (arrival - media time) seen: the call's zero-lag offset

    def frame(self, timestamp_ms: int | None) -> None:
        if timestamp_ms is None:
            return
        offset = time.monotonic() * 1000.0 - timestamp_ms
        if self._best is None or offset < self._best:
            self._best = offset
        INBOUND.lag_ms.append(offset - self._best)


def _pct(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 3)


def snapshot() -> dict:
    lag = list(INBOUND.lag_ms)
    late = list(PACING.late_ms)
    return {
        "cpu_s": time.process_time(),
        "inbound_frames": len(lag),
        "inbound_lag_ms_p50": _pct(lag, 50),
        "inbound_lag_ms_p99": _pct(lag, 99),
        "outbound_sends": len(late),
        "outbound_late_ms_p50": _pct(late, 50),
        "outbound_late_ms_p99": _pct(late, 99),
    }


def reset() -> None:
    INBOUND.reset()
    PACING.reset()
