"""Barge-in done right (issue 5): what interrupts the agent and what does not.

The policy is sans-I/O (agent/bargein.py); the whole-call tests replay the ``backchannel`` fixture
(an "Mm-hm.", an "Okay." and a cough over the agent's reply) and ``talk_over`` (a real
interruption) through the fake carrier, the runtime and the emulators on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from voxroute.agent.bargein import BargeInPolicy, words
from voxroute.agent.session import INTERRUPTED_MARK

POLICY = BargeInPolicy(min_voiced_ms=300, confirm_ms=700)


@pytest.mark.parametrize("text", ["", "Stop", "mm-hm"])
def test_nothing_interrupts_below_the_minimum_voice(text):
    assert POLICY.decide(280, text) is None


@pytest.mark.parametrize("text", ["Okay.", "Mm-hm.", "mhm", "yeah, right", "Haan ji", "हाँ जी", "ठीक है।", ""])
def test_backchannels_and_unrecognised_sound_keep_the_agent_talking(text):
    assert POLICY.decide(500, text) is None


@pytest.mark.parametrize("text", ["Sorry,", "stop", "okay but wait", "नहीं", "मेरा ऑर्डर"])
def test_a_word_that_is_not_a_backchannel_interrupts_at_once(text):
    assert POLICY.decide(320, text) == "caller words"


def test_long_speech_without_words_yet_interrupts_but_a_long_backchannel_does_not():
    assert POLICY.decide(700, "") == "caller speech"
    assert POLICY.decide(900, "Okay.") is None


def test_configured_backchannels_replace_the_defaults():
    policy = BargeInPolicy(300, 700, ["sahi"])
    assert policy.decide(400, "sahi") is None
    assert policy.decide(400, "okay") == "caller words"


def test_words_keep_devanagari_vowel_signs_and_hyphens():
    assert words("Mm-hm. ठीक है। हाँ!") == ["mm-hm", "ठीक", "है", "हाँ"]
    assert words("it's B-29") == ["it's", "b-29"]


@pytest.mark.slow
async def test_backchannels_and_a_cough_do_not_cut_the_agent_off(replay_call):
    result = await replay_call("backchannel", profile="reference")
    assert result.ended == "completed", result.raw.get("error")
    # Only the two real caller turns are turns; the three sounds over the agent are not.
    assert [t["transcript"] for t in result.turns] == ["Can you tell me where my order is, and when it will arrive?", "It's A one seven four five."]  # fmt: skip
    first = result.turns[0]
    assert not first["interrupted"] and first["outcome"] == "answered"
    assert [o["kind"] for o in first["overlaps"]] == ["backchannel", "backchannel", "noise"]
    assert [o["text"] for o in first["overlaps"][:2]] == ["Mm-hm.", "Okay."]
    # The carrier never got a clear, and the caller heard the whole reply.
    assert result.carrier["clears"] == []
    assert first["heard"] == first["reply"]
    assistant = [m["content"] for m in result.history if m["role"] == "assistant"]
    assert first["reply"] in assistant and not any(INTERRUPTED_MARK in a for a in assistant)
