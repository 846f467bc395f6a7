"""A tenant's own escalation threshold (issue 14): ``tenants.<name>.high_threshold`` in the config,
and ``voxroute eval-router --calibrate TARGET`` that finds it from the tenant's labelled turns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxroute.agent.config import load_config, parse_config
from voxroute.cli import app
from voxroute.routing.calibrate import GRID, calibrate
from voxroute.routing.evaluate import metrics, predict
from voxroute.runtime import build_router

DATA = Path(__file__).resolve().parent.parent / "data" / "router"


def _router(threshold: float | None = None):
    data = load_config().model_dump(mode="python", by_alias=True)
    data["tenants"]["default"]["high_threshold"] = threshold
    return build_router(parse_config(data))


def _held_out_rows() -> list[tuple[str, str]]:
    with (DATA / "crossdomain.csv").open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f) if r["split"] == "test"]


def test_a_tenants_own_threshold_is_the_one_it_routes_with():
    text = "the trial was cancelled but I was charged 15000 rupees twice"
    assert _router().conversation("default").decide(text, "en-IN").escalated
    # near 1 only a certain model escalates; the shared threshold is unchanged
    strict = _router(0.99)
    assert strict.thresholds == {"default": 0.99}
    rows = _held_out_rows()
    high = [(t, lab) for t, lab in rows if lab == "high_stakes"]
    shared = metrics(predict(_router(), high))["high_stakes_recall"]
    own = metrics(predict(strict, high))["high_stakes_recall"]
    assert own < shared, (own, shared)


@pytest.mark.parametrize("target", [0.9, 1.0])
def test_calibration_reaches_the_target_with_the_largest_threshold(target):
    router = _router()
    rows = _held_out_rows()
    cal = calibrate(router, rows, "default", target)
    assert cal.threshold is not None and cal.high_rows == sum(lab == "high_stakes" for _, lab in rows)
    assert cal.after["high_stakes_recall"] >= target, cal.after
    assert router.thresholds == {}  # the router is left as it was
    # one grid step higher misses the target (or the threshold is the grid's top)
    i = GRID.index(cal.threshold)
    if i + 1 < len(GRID):
        above = _router(GRID[i + 1])
        assert metrics(predict(above, rows))["high_stakes_recall"] < target
    # the calibrated threshold in the config routes the same figures
    assert (
        metrics(predict(_router(cal.threshold), rows))["high_stakes_recall"]
        == cal.after["high_stakes_recall"]
    )


def test_too_few_high_stakes_rows_leave_the_threshold(tmp_path):
    router = _router()
    cal = calibrate(router, [("where is my order", "routine"), ("my refund never came", "high_stakes")])
    assert cal.threshold is None and cal.previous == router.threshold
    with pytest.raises(ValueError, match="target recall"):
        calibrate(router, [], target=1.5)


def test_eval_router_calibrate_cli(tmp_path):
    src = tmp_path / "turns.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(_held_out_rows())
    out = tmp_path / "fig.json"
    res = CliRunner().invoke(app, ["eval-router", str(src), "--calibrate", "0.95", "--json", str(out)])
    assert res.exit_code == 0, res.output
    cal = json.loads(out.read_text())["calibration"]
    assert cal["tenant"] == "default" and 0 < cal["threshold"] < 1
    assert cal["after"]["high_stakes_recall"] >= 0.95
    assert f"tenants.default.high_threshold: {cal['threshold']}" in " ".join(res.output.split())
