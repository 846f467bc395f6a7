"""Process-wide real-time health figures, read by benchmarks through ``GET /debug/stats``.

- inbound lag: how late a caller frame is processed compared with the carrier's own media
  clock (its ``timestamp``), relative to the earliest frame of the same call.
- outbound lateness: how late the player sent audio against its schedule (agent/player.py).
- the cyclic garbage collector: how often each generation ran and how long it held the loop.
Fixed-size rings allocated at start (agent/samples.py): nothing grows with uptime.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from voxroute.agent.player import PACING
from voxroute.agent.samples import SampleRing


class LagStats:
    def __init__(self, keep: int = 500_000) -> None:
        self.lag_ms = SampleRing(keep)  # allocated once: no growth while it fills

    def reset(self) -> None:
        self.lag_ms.clear()


INBOUND = LagStats()

log = logging.getLogger("voxroute.loop")


class CollectorStats:
    """Each run of the cyclic garbage collector, timed through ``gc.callbacks``.

    A collection stops the whole process: a full one (generation 2) walks every tracked object and
    holds every call's audio for its length. Kept per generation: runs, CPU (the thread's, so a
    loaded machine's preemption is not counted as the collector's work) and the longest pause (wall
    time: what the calls felt). A pause of ``slow_ms`` or more is logged with its CPU and the
    objects it freed, so a loop stall can be told from our own code; ``observe`` (a Prometheus
    histogram's) gets every pause. Cost: four clock reads per collection."""

    def __init__(self, slow_ms: float = 20.0) -> None:
        self.slow_ms = slow_ms
        self.observe: Callable[[int, float], None] | None = None  # (generation, seconds)
        self._started = (0.0, 0.0)
        self.reset()

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.cpu_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        wall = time.perf_counter() - self._started[0]
        cpu_ms = (time.thread_time() - self._started[1]) * 1000.0
        gen = info.get("generation", 2)
        ms = wall * 1000.0
        self.count[gen] += 1
        self.cpu_ms[gen] += cpu_ms
        self.max_ms[gen] = max(self.max_ms[gen], ms)
        if self.observe is not None:
            self.observe(gen, wall)
        if ms >= self.slow_ms:
            log.warning(
                "garbage collection (generation %d) held the loop %.0f ms (CPU %.0f ms); it freed %d objects",
                gen, ms, cpu_ms, info.get("collected", 0),
            )  # fmt: skip

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def snapshot(self) -> dict:
        out: dict = {}
        for gen in range(3):
            out[f"gc{gen}_count"] = self.count[gen]
            out[f"gc{gen}_cpu_ms"] = round(self.cpu_ms[gen], 3)
            out[f"gc{gen}_max_ms"] = round(self.max_ms[gen], 3)
        return out


COLLECTOR = CollectorStats()


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


def _pcts(ring: SampleRing) -> tuple[float | None, float | None]:
    got = ring.percentiles([50, 99])
    return (None, None) if got is None else (round(got[0], 3), round(got[1], 3))


def snapshot() -> dict:
    lag50, lag99 = _pcts(INBOUND.lag_ms)
    late50, late99 = _pcts(PACING.late_ms)
    return {
        "cpu_s": time.process_time(),
        "inbound_frames": len(INBOUND.lag_ms),
        "inbound_lag_ms_p50": lag50,
        "inbound_lag_ms_p99": lag99,
        "outbound_sends": len(PACING.late_ms),
        "outbound_late_ms_p50": late50,
        "outbound_late_ms_p99": late99,
        "gc_thresholds": list(gc.get_threshold()),
        **COLLECTOR.snapshot(),
    }


def reset() -> None:
    INBOUND.reset()
    PACING.reset()
    COLLECTOR.reset()
