"""Exact provider faults, forced on the emulators, through the whole stack: the call still ends
well, the caller hears the agent within budget, and the turn's fallbacks say what happened. The
caller plays at twice real time and the agent's voice speaks at FAST_VOICE (tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import FAST_VOICE
from voxroute.agent.config import load_config


def fallbacks(turn: dict, service: str) -> list[dict]:
    return [f for f in turn["fallbacks"] if f.get("service") == service]


def replay_faulted(replay_call, fixture: str, **kwargs):
    """A fixture call with faults forced (``force``) or models told how to behave (``behave``): zero
    profile, caller at 2x and the emulated voice at FAST_VOICE (these tests are about the fallbacks,
    not the timing)."""
    return replay_call(fixture, profile="zero", speed=2.0, voice_speed=FAST_VOICE, **kwargs)


async def test_llm_hang_is_hedged_to_the_backup_path(replay_call):
    result = await replay_faulted(
        replay_call,
        "order_status",
        force=[("openrouter_llm", "hang")],
        items=2,
    )
    assert result.ended == "completed", result.raw.get("error")
    first = result.turns[0]
    llm = fallbacks(first, "llm")
    assert [(f["kind"], f["action"], f["provider"]) for f in llm] == [("timeout", "hedge lost", "openrouter")]
    assert first["usage"]["model"] == "sarvam-30b" and first["usage"]["rung"] == 2  # the backup answered
    assert first["usage"]["hedges"] == 1
    # The hedge starts when the first token could no longer make the budget: no bridge needed.
    assert first["within_budget"] and first["bridge"] is False
    assert all(t["within_budget"] for t in result.turns)


async def test_errors_before_the_first_token_retry_then_take_the_next_rung(replay_call):
    result = await replay_faulted(
        replay_call,
        "order_status",
        force=[("openrouter_llm", "http_500"), ("openrouter_llm", "http_500"), ("sarvam_llm", "http_429")],
        items=1,
    )
    assert result.ended == "completed", result.raw.get("error")
    first = result.turns[0]
    assert [(f["kind"], f["action"], f["rung"]) for f in fallbacks(first, "llm")] == [
        ("http_500", "retry same path", 1),
        ("http_500", "next rung; path cooling down 10 s", 1),
        ("http_429", "retry same path", 2),
    ]
    assert first["outcome"] == "answered" and first["reply"]
    assert first["usage"]["path"] == "fast_backup"


async def test_every_path_failing_ends_the_turn_with_the_apology(replay_call):
    cfg = load_config()
    # Each path is retried once, then cools down: four failures exhaust the ladder.
    force = [("openrouter_llm", "http_500")] * 2 + [("sarvam_llm", "http_500")] * 2
    result = await replay_faulted(replay_call, "order_status", force=force, items=2)
    assert result.ended == "completed", result.raw.get("error")
    first = result.turns[0]
    assert first["outcome"] == "apology"
    assert len(fallbacks(first, "llm")) == cfg.ladder.max_attempts
    assert first["reply"] == cfg.agent.apology_phrases["en-IN"]
    assert first["within_budget"]
    # The next turn: both paths are cooling down, so the first rung is probed rather than saying nothing.
    second = result.turns[1]
    assert second["outcome"] == "answered"
    assert [f["action"] for f in fallbacks(second, "llm")] == ["skip", "skip"]


async def test_error_mid_stream_continues_on_the_next_rung(replay_call):
    result = await replay_faulted(
        replay_call,
        "order_status",
        force=[("openrouter_llm", "error_midstream")],
        items=1,
    )
    assert result.ended == "completed", result.raw.get("error")
    first = result.turns[0]
    llm = fallbacks(first, "llm")
    assert [(f["kind"], f["action"]) for f in llm] == [("stream_error", "continue on next rung")]
    assert first["within_budget"]


async def test_high_stakes_failure_hands_off(replay_call):
    """A billing dispute whose every rung fails: the class says hand off, so the caller hears the
    handoff phrase, not the plain apology."""
    cfg = load_config()
    result = await replay_faulted(
        replay_call,
        "billing_dispute",
        behave=[("openrouter", None, {"fault": "http_500"}), ("sarvam", None, {"fault": "http_500"})],
        items=1,
    )
    first = result.turns[0]
    assert first["route"]["class"] == "billing_dispute" and first["route"]["on_failure"] == "handoff"
    assert first["outcome"] == "handoff" and first["handoff"]
    assert first["reply"].endswith(cfg.agent.handoff_phrases["en-IN"])
    assert first["within_budget"]


@pytest.mark.parametrize("fault", ["http_500", "drop", "malformed"])
async def test_tts_failure_falls_back_to_rest(replay_call, fault):
    # The first TTS use of the call is the cached phrases (REST); the first websocket utterance follows.
    result = await replay_faulted(replay_call, "billing_dispute", force=[("tts", fault)], items=2)
    assert result.ended == "completed", result.raw.get("error")
    tts = [f for t in result.turns for f in fallbacks(t, "tts")]
    phrases_failed = not tts  # the forced fault may have hit the phrase synthesis at call start instead
    if not phrases_failed:
        assert tts[0]["action"] in ("tts rest fallback", "skip rest of chunk")
    assert all(t["within_budget"] for t in result.turns)
    assert all(t["outcome"] == "answered" for t in result.turns)


async def test_stt_socket_drop_reconnects_and_keeps_the_transcripts(replay_call):
    result = await replay_faulted(replay_call, "billing_dispute", force=[("stt", "drop")])  # whole call
    assert result.ended == "completed", result.raw.get("error")
    stt = [f for t in result.turns for f in fallbacks(t, "stt")] + [
        f for f in result.raw.get("faults", []) if f.get("service") == "stt"
    ]
    assert [f["kind"] for f in stt] == ["disconnected"]
    from tests.test_replay import _norm, expected_items

    assert [_norm(t["transcript"]) for t in result.turns] == [
        _norm(x) for x in expected_items("billing_dispute")
    ]
