"""``SampleRing`` (agent/samples.py): the last N samples kept, and their percentiles as the
interpolated order statistics of the samples held, before and after the ring wraps."""

from __future__ import annotations

import random

import pytest

from voxroute.agent.samples import SampleRing


def by_sorting(values: list[float], pct: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def test_empty_ring_has_no_percentiles():
    assert SampleRing(4).percentiles([50, 99]) is None
    with pytest.raises(ValueError):
        SampleRing(0)


@pytest.mark.parametrize("appended", [1, 7, 999, 1000, 1001, 2500])
def test_percentiles_are_those_of_the_last_samples(appended: int):
    rng = random.Random(appended)
    ring = SampleRing(1000)
    values = [rng.expovariate(0.2) for _ in range(appended)]
    for v in values:
        ring.append(v)
    held = values[-1000:]
    assert list(ring) == held
    got = ring.percentiles([0, 50, 99, 100])
    assert got == pytest.approx([by_sorting(held, p) for p in (0, 50, 99, 100)])


def test_clear_forgets_the_samples():
    ring = SampleRing(3)
    for v in (5.0, 6.0, 7.0, 8.0):
        ring.append(v)
    ring.clear()
    assert ring.percentiles([50]) is None
    ring.append(1.0)
    assert ring.percentiles([50, 99]) == [1.0, 1.0]
