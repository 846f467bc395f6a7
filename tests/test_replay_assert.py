"""Expectations on replayed calls: the assertion helpers of agent.testing (their diffs) and
``voxroute replay --assert`` as a CI pipeline runs it (a real process, real sockets on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST_VOICE
from voxroute.agent.fixture import FIXTURES_DIR, FixtureError, load
from voxroute.testing import (
    assert_ended,
    assert_expectations,
    assert_handoff,
    assert_routed,
    assert_tool_called,
    assert_within_budget,
    fixture_failures,
)

VOXROUTE = [sys.executable, "-m", "voxroute.cli"]


def _turn(index, transcript, cls, tier, *, within=True, fa=120.0, tools=()):
    return {
        "index": index,
        "kind": "speech",
        "transcript": transcript,
        "route": {"class": cls, "tier": tier, "model": "m", "reason": f"rule: {cls}"},
        "within_budget": within,
        "first_audio_ms": fa,
        "budget_ms": 1000,
        "tools": list(tools),
    }


def _call(**kw):
    call = {
        "fixture": "order_status",
        "ended": "completed",
        "turns": [
            _turn(1, "Hi, can you tell me where my order is?", "order_tracking", "fast"),
            _turn(
                2,
                "It's A one seven four five.",
                "order_tracking",
                "fast",
                tools=[{"name": "lookup_order", "arguments": {"order_id": "A1745"}, "status": "ok"}],
            ),
            _turn(3, "Okay, great. Thank you so much.", "faq", "fast", within=False, fa=1180.0),
        ],
    }
    call.update(kw)
    return call


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_within_budget_names_the_late_turn_and_its_figures():
    call = _call()
    assert_within_budget(call, turn=1)
    msg = _message(assert_within_budget, call)
    assert msg.splitlines() == [
        "order_status: 1 of 3 turns over budget",
        '  turn 3 "Okay, great. Thank you so much."',
        "  - within 1000 ms",
        "  + first audio 1180 ms",
    ]


def test_routed_shows_expected_and_actual_route_with_the_reason():
    call = _call()
    assert_routed(call, turn=2, cls="order_tracking", tier="fast")
    msg = _message(assert_routed, call, turn=1, cls="billing_dispute", tier="reasoning")
    assert "- class=billing_dispute tier=reasoning" in msg
    assert "+ class=order_tracking tier=fast" in msg
    assert "(reason: rule: order_tracking)" in msg
    msg = _message(assert_routed, call, turn=7, cls="faq")
    assert "no turn 7" in msg and '3 "Okay, great. Thank you so much."' in msg


def test_tool_called_lists_the_calls_that_were_made():
    call = _call()
    assert_tool_called(call, "lookup_order", {"order_id": "A1745"})
    assert_tool_called(call, "lookup_order", turn=2)
    msg = _message(assert_tool_called, call, "lookup_order", {"order_id": "A1746"})
    assert '- lookup_order({"order_id": "A1746"}) ok' in msg
    assert '+ turn 2: lookup_order({"order_id": "A1745"}) ok' in msg
    msg = _message(assert_tool_called, call, "lookup_order", turn=1)
    assert "turn 1 made no such tool call" in msg and "+ (no tool calls)" in msg


def test_handoff_shows_missing_entities_and_those_found():
    handoff = {
        "to": "+918000000999",
        "entities": [{"kind": "order_ref", "value": "A1745", "turn": 2}],
    }
    call = _call(ended="handoff", handoff=handoff)
    assert_handoff(call, entities={"order_ref": "a1745"}, to="+918000000999")
    msg = _message(assert_handoff, call, entities={"order_ref": "A1745", "amount": "2400"})
    assert "- amount: 2400" in msg and "+ amount: (none)" in msg
    assert "(entities in the summary: order_ref=A1745)" in msg
    msg = _message(assert_handoff, _call())
    assert "did not end in a handoff" in msg and "+ ended completed" in msg
    assert_ended(call, "handoff")
    assert "- ended completed" in _message(assert_ended, call, "completed")


def test_fixture_failures_compare_every_expectation_turn_by_turn():
    fixture = load("order_status")
    fixture.script.expect_end = "completed"
    assert fixture_failures(fixture, _call()) == []
    assert_expectations(_call(), fixture)
    wrong = _call(ended="handoff")
    wrong["turns"][0]["route"]["class"] = "faq"
    wrong["turns"][1]["tools"] = []
    lines = fixture_failures(fixture, wrong)
    assert lines == [
        "call end",
        "  - completed",
        "  + handoff",
        'turn 1 "Hi, can you tell me where my order is?": class',
        "  - order_tracking",
        "  + faq",
        "    (reason: rule: order_tracking)",
        'turn 2 "It\'s A one seven four five.": tool',
        '  - lookup_order({"order_id": "A1745"})',
        "  + (no tool calls)",
    ]
    short = _call()
    del short["turns"][2]
    assert fixture_failures(fixture, short)[:2] == ["turns", "  - 3 caller turns (one per utterance)"]


def test_expect_end_is_checked_when_the_fixture_is_loaded(tmp_path):
    script = json.loads((FIXTURES_DIR / "billing_dispute.json").read_text())
    script["expect_end"] = "hung_up"
    (tmp_path / "x.json").write_text(json.dumps(script))
    shutil.copy(FIXTURES_DIR / "billing_dispute.wav", tmp_path / "billing_dispute.wav")
    with pytest.raises(FixtureError, match="expect_end"):
        load(tmp_path / "x.json")


# ---------------------------------------------------------------- voxroute replay --assert


def _user_fixture(tmp_path, **changes) -> str:
    """A copy of billing_dispute (first two items) outside the repository, with ``changes``."""
    script = json.loads((FIXTURES_DIR / "billing_dispute.json").read_text())
    script["utterances"] = script["utterances"][:2]
    script["expect_end"] = "completed"
    for key, value in changes.items():
        if key.startswith("class_"):
            script["utterances"][int(key[6:])]["expect_class"] = value
        else:
            script[key] = value
    shutil.copy(FIXTURES_DIR / "billing_dispute.wav", tmp_path / "billing_dispute.wav")
    path = tmp_path / "billing_dispute.json"
    path.write_text(json.dumps(script))
    return str(path)


def _replay_assert(tmp_path, fixture: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["VOXROUTE_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [*VOXROUTE, "replay", fixture, "--assert", "--profile", "zero", "--fast"],
        capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path,
    )  # fmt: skip


def test_replay_assert_passes_a_fixture_whose_expectations_hold(tmp_path):
    proc = _replay_assert(tmp_path, _user_fixture(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok billing_dispute: every expectation met" in proc.stdout


def test_replay_assert_fails_with_a_diff_on_a_wrong_expected_class(tmp_path):
    proc = _replay_assert(tmp_path, _user_fixture(tmp_path, class_1="order_tracking"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAIL billing_dispute: expectations not met (- expected, + got)" in out
    diff = out[out.index("FAIL billing_dispute") :].splitlines()
    head = next(i for i, line in enumerate(diff) if line.startswith('  turn 2 "Both charges'))
    assert diff[head].endswith(": class")
    assert diff[head + 1 : head + 3] == ["    - order_tracking", "    + billing_dispute"]
    assert "call end" not in out  # the call itself ended as expected: only the class is reported


# ---------------------------------------------------------------- the helpers on real replays


async def test_helpers_on_a_replay_with_tools(replay_call):
    retail = FIXTURES_DIR.parent.parent / "examples" / "retail.yaml"  # config= takes a YAML path
    result = await replay_call(
        "order_status", profile="zero", speed=4.0, config=str(retail), voice_speed=FAST_VOICE
    )
    assert_tool_called(result, "lookup_order", {"order_id": "A1745"}, turn=2)
    assert_expectations(result)  # order_status's expect_class and expect_tool
    msg = _message(assert_tool_called, result, "lookup_order", {"order_id": "B2000"})
    assert '+ turn 2: lookup_order({"order_id": "A1745"}) ok' in msg


async def test_helpers_on_a_replay_that_hands_off(replay_call):
    result = await replay_call("angry_complaint", profile="zero", speed=4.0)  # a transfer: the normal voice
    assert_handoff(result, to="+918000000999", routing_class="complaint")
    assert_routed(result, turn=3, cls="human_request")
    msg = _message(assert_handoff, result, entities={"order_ref": "A1745"})
    assert "- order_ref: A1745" in msg and "+ order_ref: (none)" in msg


def test_a_fixture_is_found_by_path_or_by_name_in_the_fixtures_folder(tmp_path):
    from voxroute.testing.plugin import find_fixture

    _user_fixture(tmp_path)
    path = tmp_path / "billing_dispute.json"
    assert find_fixture("billing_dispute", tmp_path) == path  # the folder comes before the default
    assert find_fixture(str(path), None) == path
    assert find_fixture("order_status", tmp_path) == FIXTURES_DIR / "order_status.json"
    with pytest.raises(FixtureError, match=f"no fixture named 'nope' in {tmp_path}"):
        find_fixture("nope", tmp_path)
