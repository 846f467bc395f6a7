"""A tenant's escalation threshold from its own labelled turns (issue 14):
``voxroute eval-router TURNS.csv --calibrate 0.95 [--config CFG] [--tenant NAME]``.

The shipped threshold is tuned on the training data's validation split, mostly bank turns. A
business whose callers word their problems otherwise (or whose idea of what is high-stakes
differs a little) can label a few of its own turns (``text,label``, labels as for ``voxroute
eval-router``) and get the threshold that escalates ``target`` of its high-stakes turns through the
whole router (rules, signals and all): the largest threshold on a fine grid that still does. The
result goes into the config as ``tenants.<name>.high_threshold``; a smaller one escalates more.

The router's escalation only grows as the threshold falls, so a bisection over the grid finds it
with a few passes over the high-stakes turns.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxroute.routing.evaluate import metrics, predict
from voxroute.routing.router import Router

GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))  # 0.01 .. 0.99
DEFAULT_TARGET = 0.95
MIN_HIGH_ROWS = 10  # fewer labelled high-stakes turns say too little to move the threshold


@dataclass(frozen=True, slots=True)
class Calibration:
    tenant: str
    threshold: float | None  # None: too few high-stakes turns to calibrate on
    previous: float
    high_rows: int
    before: dict
    after: dict


def _recall(router: Router, tenant: str, high: list[tuple[str, str]], threshold: float) -> float:
    router.thresholds[tenant] = threshold
    preds = predict(router, high, tenant)
    return sum(p.escalated for p in preds) / len(preds)


def calibrate(
    router: Router, rows: list[tuple[str, str]], tenant: str | None = None, target: float = DEFAULT_TARGET
) -> Calibration:
    """The largest grid threshold at which ``target`` of the tenant's labelled high-stakes turns
    escalate, with every figure of ``metrics`` before (the router's threshold) and after. The
    router's own threshold for the tenant is left as it was."""
    if not 0 < target <= 1:
        raise ValueError(f"target recall {target} is not in (0, 1]")
    tenant = router.table.tenant(tenant or router.table.default_tenant)
    had = tenant in router.thresholds
    previous = router.thresholds.get(tenant, router.threshold)
    high = [(t, label) for t, label in rows if label == "high_stakes"]
    try:
        before = metrics(predict(router, rows, tenant))
        if len(high) < MIN_HIGH_ROWS:
            return Calibration(tenant, None, previous, len(high), before, before)
        # Bisection for the last grid index whose threshold reaches the target (index -1: none
        # does; then the smallest threshold on the grid, which escalates the most).
        lo, hi = -1, len(GRID) - 1  # GRID[lo] reaches the target (or lo = -1); beyond hi none does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _recall(router, tenant, high, GRID[mid]) >= target:
                lo = mid
            else:
                hi = mid - 1
        threshold = GRID[max(lo, 0)]
        router.thresholds[tenant] = threshold
        after = metrics(predict(router, rows, tenant))
    finally:
        if had:
            router.thresholds[tenant] = previous
        else:
            router.thresholds.pop(tenant, None)
    return Calibration(tenant, threshold, previous, len(high), before, after)
