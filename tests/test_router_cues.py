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


def test_a_fee_or_a_policy_asked_about_is_not_a_cancellation():
    for text in (
        "What is the cancellation fee?",
        "Tell me your cancellation policy.",
        "how long do refunds usually take?",
    ):
        f = feats(text)
        assert "k policy_question" in f and "k cancel" not in f, text
    assert "k cancel" in feats("Please cancel my booking.")
    # a fee charged wrongly is trouble, not a question about the rules
    assert "k policy_question" not in feats("You charged me a cancellation fee twice, this is wrong.")


def test_changes_to_an_order_in_flight_said_other_ways():
    assert "k cancel" in feats("Could you help me with changing the shipping address?")
    assert "k cancel" in feats("I need to remove some items from my order.")
    assert "k cancel" not in feats("I want to add a new shipping address to my profile.")


def test_opening_or_editing_an_account_is_admin():
    for text in (
        "Help me create an account.",
        "How do I edit my profile?",
        "khata kaise khole, registration karna hai",
    ):
        assert "k account_task" in feats(text), text
    assert "k account_task" not in feats("I cannot log in to my account, it is blocked.")


def test_a_home_assistant_request_is_off_topic_not_a_cancellation():
    f = feats("Cancel my alarm for tomorrow morning.")
    assert "k off_topic" in f and "k cancel" not in f
    assert "k off_topic" in feats("koi gaana bajao")
    assert "k off_topic" in feats("आज मौसम कैसा है?")
    assert "k off_topic" not in feats("The bulb you delivered is broken.")


@pytest.mark.parametrize(
    "text",
    [
        "I need to call customer assistance.",
        "Can I get in touch with your staff?",
        "ऑपरेटर से जोड़िए।",
        "मुझे किसी प्रतिनिधि से जोड़िए।",
    ],
)
def test_more_ways_to_name_a_person(text):
    assert {"k person", "k talk_to"} & feats(text)


def test_the_human_offset_applies_only_when_a_person_is_named():
    """A trained model's human_request offset (routing/train.py tune_human_boost) is added only to
    turns with a person or put-through cue: a vague turn ("retry please") is no request for a person."""
    import numpy as np

    from voxroute.routing.classifier import CLASSES, HIGH_CLASSES, StakesModel

    k = len(CLASSES)
    human = CLASSES.index("human_request")
    offset = np.zeros(k)
    offset[human] = 5.0
    model = StakesModel(
        CLASSES, ["w x"], np.zeros((1, k)), np.zeros(k), 0.5, HIGH_CLASSES, "test", human_offset=offset
    )
    assert model.scores("Can I speak to someone, please?").best()[0] == "human_request"
    assert model.scores("kisi insaan se baat karwao").best()[0] == "human_request"
    for text in ("retry please", "subscribe to the company newsletter", ""):
        assert model.scores(text).prob("human_request") == pytest.approx(1 / k), text


@pytest.mark.parametrize(
    "text",
    [
        "I want to book a table for four tonight.",
        "Can I get an appointment with the dentist?",
        "kal ke liye train ticket book karna hai",
        "doctor ka appointment lena hai",
        "मुझे कल की ट्रेन का टिकट बुक करना है।",
    ],
)
def test_booking_something_new_is_a_new_booking(text):
    assert "k book_new" in feats(text) and "k cancel" not in feats(text)


@pytest.mark.parametrize(
    "text",
    [
        "I booked a table for Saturday but need Sunday instead.",
        "I'd like to cancel my hotel booking and book another date.",
        "ticket book karna tha par paise kat gaye",
        "appointment kal ke liye shift kar do",
        "मेरी बुकिंग रद्द कर दीजिए।",
        "मुझे अपनी अपॉइंटमेंट की तारीख बदलनी है, दूसरे दिन बुक कर दीजिए।",
    ],
)
def test_a_booking_changed_or_gone_wrong_is_no_new_booking(text):
    assert "k book_new" not in feats(text)


def test_a_policy_cancelled_is_a_cancellation_not_a_policy_question():
    for text in ("policy cancel karni hai", "I want to cancel my insurance policy."):
        f = feats(text)
        assert "k cancel" in f and not {"k policy_question", "k task_not_person", "k info"} & f, text
    assert "k policy_question" in feats("What is your cancellation policy?")


# Fourth round (2026-12-05): stakes asked as a how-to, and routine matters said with trouble words.
@pytest.mark.parametrize(
    "text",
    [
        "how do I change my shipping address?",
        "Can you redirect my parcel to my office?",
        "I forgot to include one more item in my order",
        "please remove two products from the order",
        "I want information about deleting my account",
    ],
)
def test_an_orders_items_or_address_changed_or_an_account_closed_is_a_change(text):
    assert "k cancel" in feats(text)


@pytest.mark.parametrize(
    "text",
    ["I want to set up another shipping address", "cancel my newsletter subscription"],
)
def test_the_address_on_file_and_a_newsletter_are_no_change(text):
    f = feats(text)
    assert "k cancel" not in f and "k account_task" in f, f
    assert "k cancel" not in feats("How do I change my address?")  # Banking77's personal details


@pytest.mark.parametrize(
    "text",
    [
        "I need to recover my account PIN",
        "how can I reset my password?",
        "password bhool gaya",
        "मैं पासवर्ड भूल गया",
    ],
)
def test_a_lost_password_or_pin_is_account_access(text):
    assert "k account_security" in feats(text)
    assert "k account_security" not in feats("How do I change my PIN?")


def test_a_refund_wanted_or_tracked_is_owed_and_its_timing_is_policy():
    for text in ("how do I get a refund?", "where can I track my refund?", "मुझे रिफंड कैसे मिलेगा"):
        assert "k money_back" in feats(text), text
    for text in ("how long do refunds usually take?", "under what circumstances can I ask for a refund?"):
        f = feats(text)
        assert "k policy_question" in f and "k money_back" not in f, text


def test_trouble_signing_up_is_admin_but_money_or_access_is_not():
    assert "k account_task" in feats("I have issues trying to register")
    assert "k account_task" in feats("sign up nahi ho raha")
    assert "k account_task" not in feats("I signed up but was charged twice")
    assert "k account_task" not in feats("I want to register a complaint")


def test_arithmetic_and_a_horoscope_are_no_stakes():
    assert "k failure_repeat" not in feats("What's 25 times 4?")
    assert "k failure_repeat" in feats("I have called 5 times about this")
    assert "k money_moved" not in feats("आज का राशिफल बताइए।")
    assert "k money_moved" in feats("राशि कट गई")
    assert "k failure_repeat" in feats("I'm very disappointed with the product quality.")
