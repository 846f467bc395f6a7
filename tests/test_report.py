"""``voxroute report``: each figure's definition on a hand-made set of calls with known answers, and the
real command against a call log written by the real writer (SQLite, and PostgreSQL when configured).

The calls (policy p1 unless said; t0 is five days ago):

- A: caller 1 at t0, resolved; one faq turn (100 ms, bridge, one hedge, $0.01)
- B: caller 2 at t0+1h, resolved; one faq turn (200 ms, $0.02)
- C: caller 1 again at t0+10h, unresolved; one order_tracking turn (500 ms, $0.03)
- D: caller 3 at t0+2h, model failure on turn 1 (billing_dispute, 300 ms, $0.04), then the
  caller asks for a person on turn 2 (human_request, 400 ms): ends in a handoff
- E: caller 4 at t0+3h, asks for a person on turn 1 (human_request, 900 ms), a model failure only on
  turn 2 (complaint, no audio): ends in a handoff, but not *after* a failure
- F: caller 5 at t0+4h, still in progress (left out)
- G: policy p2, caller 2 again at t0+3d, resolved; one faq turn (150 ms, $0.05)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.test_calllog import _call, _turn, db_url, running  # noqa: F401 - db_url is a fixture
from voxroute.agent.calllog import report as rep
from voxroute.agent.calllog.store import CallLog, make_engine

HOUR = 3600.0
T0 = time.time() - 5 * 24 * HOUR
LLM_FAILURE = {
    "provider": "openrouter",
    "kind": "http_500",
    "error": "boom",
    "action": "next",
    "service": "llm",
}


def turn(index: int, cls: str, fa: float | None, cost: float = 0.0, **kw) -> dict:
    return _turn(index, cls, first_audio_ms=fa, usage={"cost_usd": cost, "hedges": kw.pop("hedges", 0)}, **kw)


CALLS = [
    (
        "A",
        "+911111111111",
        0,
        "resolved",
        "completed",
        "p1",
        [turn(1, "faq", 100, 0.01, bridge=True, hedges=1)],
    ),
    ("B", "+912222222222", 1 * HOUR, "resolved", "completed", "p1", [turn(1, "faq", 200, 0.02)]),
    (
        "C",
        "+911111111111",
        10 * HOUR,
        "unresolved",
        "completed",
        "p1",
        [turn(1, "order_tracking", 500, 0.03)],
    ),
    (
        "D",
        "+913333333333",
        2 * HOUR,
        "handoff",
        "handoff",
        "p1",
        [
            turn(1, "billing_dispute", 300, 0.04, fallbacks=[LLM_FAILURE]),
            turn(2, "human_request", 400, handoff=True),
        ],
    ),
    (
        "E",
        "+914444444444",
        3 * HOUR,
        "handoff",
        "handoff",
        "p1",
        [turn(1, "human_request", 900, handoff=True), turn(2, "complaint", None, fallbacks=[LLM_FAILURE])],
    ),
    ("F", "+915555555555", 4 * HOUR, "unknown", "in_progress", "p1", [turn(1, "faq", 5000, 1.0)]),
    ("G", "+912222222222", 3 * 24 * HOUR - HOUR, "resolved", "completed", "p2", [turn(1, "faq", 150, 0.05)]),
]

EXPECTED_P1 = {
    "calls": 5,
    "turns": 7,
    "cost_per_resolved": 0.05,  # $0.10 over A..E / 2 resolved (A, B)
    "containment": 0.2,  # B only: A was called again within 24 h (C), D and E went to a person
    "first_audio_ms_by_class": {
        "billing_dispute": {"p50": 300.0, "p95": 300.0, "turns": 1},
        "faq": {"p50": 150.0, "p95": 195.0, "turns": 2},
        "human_request": {"p50": 650.0, "p95": 875.0, "turns": 2},
        "order_tracking": {"p50": 500.0, "p95": 500.0, "turns": 1},
    },
    "escalation_after_failure": 0.2,  # D
    "repeat_contact_rate": {
        "overall": 0.4,  # A (C within 7 days) and B (G, under another policy)
        "by_class": {
            "billing_dispute": {"calls": 1, "repeats": 0, "rate": 0.0},
            "faq": {"calls": 2, "repeats": 2, "rate": 1.0},
            "human_request": {"calls": 1, "repeats": 0, "rate": 0.0},
            "order_tracking": {"calls": 1, "repeats": 0, "rate": 0.0},
        },
    },
    "bridges_per_100_turns": 14.29,
    "hedges_per_100_turns": 14.29,
    "tools": {},  # no tool calls in these turns (tests/test_tools.py covers the figure)
}


def rows() -> tuple[list[dict], list[dict]]:
    """The calls above as ``report.load`` returns them (what the database holds)."""
    calls, turns = [], []
    for sid, number, offset, outcome, ended, policy, call_turns in CALLS:
        calls.append(
            {
                "call_sid": sid,
                "tenant": "default",
                "caller_hash": f"hash-{number}",
                "started_at": datetime.fromtimestamp(T0 + offset, UTC),
                "ended": ended,
                "outcome": outcome,
                "policy": policy,
                "routing_class": call_turns[0]["route"]["class"],
            }
        )
        for t in call_turns:
            turns.append(
                {
                    "call_sid": sid,
                    "turn_index": t["index"],
                    "routing_class": t["route"]["class"],
                    "first_audio_ms": t["first_audio_ms"],
                    "cost_usd": t["usage"]["cost_usd"],
                    "bridge": t["bridge"],
                    "hedges": t["usage"]["hedges"],
                    "model_failures": len(t["fallbacks"]),
                    "handoff": t.get("handoff", False),
                }
            )
    return calls, turns


def test_each_figure_follows_its_definition():
    calls, turns = rows()
    assert rep.figures(calls, turns, "p1") == EXPECTED_P1
    p2 = rep.figures(calls, turns, "p2")
    assert p2["calls"] == 1 and p2["containment"] == 1.0 and p2["cost_per_resolved"] == 0.05
    assert p2["repeat_contact_rate"]["overall"] == 0.0  # nobody called after G
    everything = rep.figures(calls, turns)
    assert everything["calls"] == 6 and everything["turns"] == 8 and tuple(everything) == rep.KEYS


def test_no_calls_gives_empty_figures_not_errors():
    empty = rep.figures([], [])
    assert empty["calls"] == 0 and empty["cost_per_resolved"] is None and empty["containment"] is None
    assert empty["first_audio_ms_by_class"] == {} and empty["bridges_per_100_turns"] is None


def test_difference_is_b_minus_a_everywhere():
    calls, turns = rows()
    a, b = rep.figures(calls, turns, "p1"), rep.figures(calls, turns, "p2")
    d = rep.difference(a, b)
    assert d["calls"] == -4 and d["containment"] == pytest.approx(0.8)
    assert d["first_audio_ms_by_class"]["faq"]["p50"] == 0.0
    assert d["first_audio_ms_by_class"]["order_tracking"]["p50"] is None  # only one side has it
    assert d["repeat_contact_rate"]["overall"] == pytest.approx(-0.4)


def test_since_accepts_dates_times_and_spans():
    now = datetime(2026, 11, 10, 12, tzinfo=UTC)
    assert rep.parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert rep.parse_since("2026-11-01T09:30+05:30", now) == datetime(2026, 11, 1, 4, tzinfo=UTC)
    assert rep.parse_since("7d", now) == now - timedelta(days=7)
    assert rep.parse_since("24h", now) == now - timedelta(hours=24)
    assert rep.parse_since(None) is None
    with pytest.raises(ValueError, match="--since"):
        rep.parse_since("last tuesday")


# ---------------------------------------------------------------- the command, on a real database


async def seed(url: str, directory) -> None:
    """The calls above, through the real writer (hashing, redaction, upserts)."""
    log = CallLog(make_engine(url), salt=b"report-test", directory=directory)
    async with running(log):
        for sid, number, offset, outcome, ended, policy, call_turns in CALLS:
            call = _call(sid, number, started_at=T0 + offset, policy=policy)
            log.call_started(call)
            for t in call_turns:
                log.turn_finished(call, t)
            if ended != "in_progress":
                log.call_ended(
                    call
                    | {"ended": ended, "outcome": outcome, "ended_at": T0 + offset + 60, "turns": call_turns}
                )
        old = _call("OLD", "+919999999999", started_at=T0 - 30 * 24 * HOUR, policy="p1")  # outside --since 7d
        log.call_ended(
            old | {"ended": "completed", "outcome": "resolved", "turns": [turn(1, "faq", 50, 1.0)]}
        )
        await log.flush()


def voxroute(*args: str, url: str, directory) -> subprocess.CompletedProcess:
    env = dict(os.environ, VOXROUTE_DATA_DIR=str(directory))
    env.pop("VOXROUTE_DATABASE_URL", None)
    if not url.startswith("sqlite"):
        env["VOXROUTE_DATABASE_URL"] = url
    cmd = [sys.executable, "-c", "from voxroute.cli import main; main()", "report", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


async def test_the_report_command_reads_the_call_log(db_url, tmp_path):  # noqa: F811 - the fixture
    if db_url.startswith("sqlite"):
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"  # where the command looks by default
    await seed(db_url, tmp_path)
    out = tmp_path / "report.json"
    done = voxroute("--since", "7d", "--policy", "p1", "--json", str(out), url=db_url, directory=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == {**EXPECTED_P1, "by_channel": {"voice": EXPECTED_P1}}  # all voice

    done = voxroute(
        "--since", "7d", "--compare", "p1", "p2", "--json", str(out), url=db_url, directory=tmp_path
    )
    assert done.returncode == 0, done.stderr
    compared = json.loads(out.read_text())
    assert compared["a"] == EXPECTED_P1 and compared["b"]["calls"] == 1 and compared["diff"]["calls"] == -4

    done = voxroute("--tenant", "default", url=db_url, directory=tmp_path)  # a table; no --since: OLD too
    assert done.returncode == 0, done.stderr
    assert "call log report" in done.stdout and "first audio faq p50 / p95" in done.stdout
    line = next(x for x in done.stdout.splitlines() if "│ calls" in x)
    assert line.split("│")[2].strip() == "7"  # A B C D E G OLD (F is still in progress)


def test_the_report_command_says_when_the_database_is_away(tmp_path):
    done = voxroute(url="postgresql+asyncpg://nobody:x@127.0.0.1:9/none", directory=tmp_path)
    assert done.returncode == 1 and "error:" in done.stderr and "Traceback" not in done.stderr
    done = voxroute("--since", "someday", url="sqlite", directory=tmp_path)
    assert done.returncode == 2 and "--since" in done.stderr
