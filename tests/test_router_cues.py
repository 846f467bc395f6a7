"""The stakes classifier's domain-independent cues (routing/classifier.py, issue 14): what a turn is
about, whatever the business. A request for help with a task is not a request for a person, money
asked about is not money owed, and a change to an order in flight or a problem reported in general
words are stakes. Each assertion is on the feature function alone (no model)."""

from __future__ import annotations

import pytest

from voxroute.routing.classifier import cue_features


def feats(text: str) -> set[str]:
    return set(cue_features(text))


@pytest.mark.parametrize(
    "text",
    [
        "Can I speak to an agent?",
        "Please transfer me to a real person.",
        "kisi insaan se baat karwao",
        "मुझे किसी व्यक्ति से बात करनी है।",
    ],
)
def test_a_person_asked_for(text):
    assert "k ask_person" in feats(text) and "k task_not_person" not in feats(text)


@pytest.mark.parametrize(
    "text",
    [
        "Please assist me to buy a mattress for my parents.",
        "Can you help me choose a plan?",
        "I need assistance to book a table for 6.",
    ],
)
def test_help_with_a_task_is_not_a_request_for_a_person(text):
    f = feats(text)
    assert {"k task_not_person", "k help_buy"} <= f and "k ask_person" not in f


def test_money_asked_about_is_not_money_owed():
    asked = feats("What is your refund policy for opened products?")
    assert {"k money_moved", "k money_question"} <= asked and "k money_owed" not in asked
    owed = feats("My refund has not been credited yet.")
    assert "k money_owed" in owed and "k money_question" not in owed
    # a problem named in general words makes money a problem, not a question
    problem = feats("How do I report a problem with my payment?")
    assert "k money_problem" in problem and "k money_question" not in problem


def test_a_change_to_an_order_in_flight_is_a_change():
    assert "k cancel" in feats("Change the delivery address on my current order.")
    assert "k cancel" in feats("Please change my travel date to the 15th.")
    assert "k cancel" not in feats("How do I change the ringtone?")


def test_a_problem_said_in_general_words():
    assert "k problem" in feats("I want to file a complaint about the delivery.")
    assert "k problem" in feats("mujhe ek dikkat hai payment mein")
    assert "k problem" not in feats("Which mattress is best for back pain?")
