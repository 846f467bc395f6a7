"""The answer's pure parts (the answer itself runs end to end in test_replay and test_routing_calls)."""

from __future__ import annotations

from voxroute.agent.answer import with_guidance


def test_a_class_guidance_is_said_just_before_the_callers_words():
    history = [{"role": "system", "content": "prompt"}, {"role": "user", "content": "who won the match?"}]
    guided = with_guidance(history, "Redirect politely.")
    assert [m["role"] for m in guided] == ["system", "system", "user"]
    assert guided[1]["content"] == "Redirect politely." and guided[-1] is history[-1]
    assert with_guidance(history, "") is history
