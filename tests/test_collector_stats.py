"""``agent/metrics.py`` ``CollectorStats``: every run of the cyclic garbage collector counted and
timed per generation (``/debug/stats``, ``voxroute_gc_pause_seconds``), a slow one logged."""

from __future__ import annotations

import gc

import pytest
from pydantic import ValidationError

from voxroute.agent.config import TelephonyConfig
from voxroute.agent.metrics import CollectorStats


def _cycles(n: int) -> None:
    for _ in range(n):
        a: list = []
        a.append(a)  # garbage only the collector can free


def test_each_generation_counted_timed_and_observed():
    stats = CollectorStats(slow_ms=1e9)
    seen: list[tuple[int, float]] = []
    stats.observe = lambda gen, s: seen.append((gen, s))
    stats.install()
    stats.install()  # once only
    try:
        assert gc.callbacks.count(stats) == 1
        _cycles(100)
        gc.collect(0)
        gc.collect(2)
    finally:
        stats.remove()
    assert stats not in gc.callbacks
    snap = stats.snapshot()
    assert snap["gc0_count"] >= 1 and snap["gc2_count"] >= 1
    assert snap["gc2_max_ms"] > 0 and snap["gc2_cpu_ms"] >= 0
    assert {gen for gen, _ in seen} >= {0, 2} and all(s >= 0 for _, s in seen)
    assert len(seen) == sum(snap[f"gc{g}_count"] for g in range(3))
    stats.reset()
    assert all(v == 0 for v in stats.snapshot().values())


def test_a_slow_collection_is_logged_with_its_cpu_and_what_it_freed(caplog):
    stats = CollectorStats(slow_ms=0.0)  # every collection counts as slow here
    stats.install()
    try:
        with caplog.at_level("WARNING", logger="voxroute.loop"):
            _cycles(50)
            gc.collect(2)
    finally:
        stats.remove()
    lines = [r.getMessage() for r in caplog.records if "garbage collection" in r.getMessage()]
    assert "generation 2" in lines[-1] and "CPU" in lines[-1]
    # the 50 self-referencing lists, freed by ours or by a young collection the loop ran first
    assert sum(int(line.split("freed ")[1].split()[0]) for line in lines) >= 50


def test_collector_thresholds_are_validated():
    assert TelephonyConfig().gc_thresholds == (2000, 10, 100)
    assert TelephonyConfig(gc_thresholds=(700, 10, 10)).gc_thresholds == (700, 10, 10)
    for bad in ((0, 10, 10), (50, 10, 10), (7000, 0, 10)):
        with pytest.raises(ValidationError, match="gc_thresholds"):
            TelephonyConfig(gc_thresholds=bad)
