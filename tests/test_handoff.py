"""The handoff summary: entity rules, the deterministic summary on every fixture, the model path over
real sockets (the LLM emulator, and a tiny structured-output stand-in), the whisper, webhook signing."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from voxroute.agent.fixture import all_fixture_names, load
from voxroute.agent.handoff import (
    HandoffSummary,
    deterministic_summary,
    extract_entities,
    llm_summary_request,
    parse_llm_summary,
    parse_spoken_number,
    spoken_digits,
    summarise,
    summary_json_schema,
    whisper_sentence,
)
from voxroute.agent.providers.openai_compat import OpenAICompatLLM
from voxroute.emulators.llm import LLMEmulator
from voxroute.emulators.profiles import ZERO, Dice
from voxroute.routing.table import BUILTIN_CLASSES
from voxroute.server import serve_app

REASONING = "emu-reasoner"


# ---------------------------------------------------------------- helpers


def fixture_turns(name: str) -> tuple[list[dict[str, Any]], str]:
    """Turn dicts (TurnRecord.as_dict() shape) from a fixture script: the texts as transcripts, the
    expected class as the route, keypad items as dtmf turns that follow the previous class."""
    script = load(name).script
    turns: list[dict[str, Any]] = []
    last_class = "faq"
    for i, utt in enumerate(u for u in script.utterances if u.expect_turn):
        cls = utt.expect_class or last_class
        stakes = BUILTIN_CLASSES[cls].stakes
        turns.append(
            {
                "index": i,
                "kind": "dtmf" if utt.is_dtmf else "speech",
                "transcript": utt.dtmf if utt.is_dtmf else utt.text,
                "language": script.language_of(utt),
                "route": {"class": cls, "stakes": stakes, "escalated": stakes != "low", "signals": []},
                "fallbacks": [],
                "reply": "",
                "heard": "",
                "interrupted": utt.play == "barge_in",
                "outcome": "answered",
                "handoff": stakes == "human",
            }
        )
        last_class = cls
    return turns, script.language


def values(summary: HandoffSummary, kind: str) -> list[str]:
    return [e.value for e in summary.entities if e.kind == kind]


def kinds(text: str, language: str = "en-IN") -> list[tuple[str, str]]:
    return [(e.kind, e.value) for e in extract_entities(text, 3, language)]


# ---------------------------------------------------------------- spoken numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("two thousand four hundred", 2400),
        ("twenty four hundred", 2400),
        ("two hundred and fifty five", 255),
        ("one hundred thousand", 100_000),
        ("one lakh twenty thousand", 120_000),
        ("two lakhs", 200_000),
        ("one crore twenty lakh", 12_000_000),
        ("a thousand", 1000),
        ("1.5 lakh", 150_000),
        ("12 hundred", 1200),
        ("2,400", 2400),
        ("thirty five", 35),
        ("zero", 0),
        ("बारह सौ", 1200),
        ("दो हज़ार चार सौ", 2400),
        ("दो हजार चार सौ", 2400),  # without the nukta
        ("पाँच सौ", 500),
        ("पांच सौ", 500),  # anusvara spelling
        ("डेढ़ लाख", 150_000),
        ("ढाई हज़ार", 2500),
        ("साढ़े तीन हज़ार", 3500),
        ("सवा सौ", 125),
        ("पौने तीन सौ", 275),
        ("निन्यानबे", 99),
        ("एक करोड़", 10_000_000),
        ("१२००", 1200),  # Devanagari digits
    ],
)
def test_parse_spoken_number(text: str, value: int) -> None:
    assert parse_spoken_number(text.replace("a thousand", "thousand")) == value


@pytest.mark.parametrize(
    "text",
    ["", "one seven four five", "five five", "thousand crore", "hundred hundred", "twenty thirty", "hello"],
)
def test_parse_spoken_number_rejects(text: str) -> None:
    assert parse_spoken_number(text) is None


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("one seven four five", "1745"),
        ("double five two", "552"),
        ("oh nine", "09"),
        ("चार पाँच दो एक", "4521"),
        ("4 5 2 1", "4521"),
        ("seven", None),
        ("two thousand", None),
        ("", None),
    ],
)
def test_spoken_digits(text: str, digits: str | None) -> None:
    assert spoken_digits(text) == digits


# ---------------------------------------------------------------- entity extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It's A one seven four five.", [("order_ref", "A1745")]),
        ("my order is A1745", [("order_ref", "A1745")]),
        ("order number A-1745 please", [("order_ref", "A1745")]),
        ("order B two nine eight one", [("order_ref", "B2981")]),
        ("my order number is 4521", [("order_ref", "4521")]),
        ("मेरा ऑर्डर नंबर चार पाँच दो एक है।", [("order_ref", "4521")]),
        ("booking reference XK42P7", [("booking_ref", "XK42P7")]),
        ("two thousand four hundred rupees", [("amount", "2400 INR")]),
        ("I paid Rs 1,200 yesterday", [("amount", "1200 INR"), ("date", "yesterday")]),
        ("it cost Rs. 1200", [("amount", "1200 INR")]),
        ("₹2,400 twice", [("amount", "2400 INR")]),
        ("they took $35", [("amount", "35 USD")]),
        ("$35.50 was charged", [("amount", "35.50 USD")]),
        ("two lakh rupees", [("amount", "200000 INR")]),
        ("बारह सौ रुपये कटे", [("amount", "1200 INR")]),
        ("on the twelfth of March", [("date", "12 March")]),
        ("5th April", [("date", "5 April")]),
        ("March 12th", [("date", "12 March")]),
        ("the twenty first of June", [("date", "21 June")]),
        ("बारह मार्च को", [("date", "12 March")]),
        ("move it to next Friday", [("date", "next Friday")]),
        ("from the fifth of April to the eighth", [("date", "5 April"), ("date", "8 April")]),
        ("from the 5th to the 8th of April", [("date", "5 April"), ("date", "8 April")]),
        ("पिछले हफ्ते", [("date", "last week")]),
        ("card ending 4521", [("card_last4", "4521")]),
        ("my card ending four five two one", [("card_last4", "4521")]),
        ("account ending in 7788", [("account_last4", "7788")]),
        ("my name is Priya Sharma", [("name", "Priya Sharma")]),
        ("my name is priya sharma", [("name", "Priya Sharma")]),
        ("My name is Priya, I was charged", [("name", "Priya")]),
        ("this is Rahul from Delhi", [("name", "Rahul")]),
        ("मेरा नाम प्रिया शर्मा है", [("name", "प्रिया शर्मा")]),
        ("call me on +91 98000 00001", [("phone", "+919800000001")]),
        ("my number is nine eight seven six five four three two one zero", [("phone", "9876543210")]),
    ],
)
def test_extract_entities(text: str, expected: list[tuple[str, str]]) -> None:
    assert sorted(kinds(text)) == sorted(expected)
    assert all(e.turn == 3 for e in extract_entities(text, 3, "en-IN"))


@pytest.mark.parametrize(
    "text",
    [
        "This is the third time I am calling about the same problem!",
        "I am calling about my order",
        "wait a second",
        "I may come later",
        "Thank you, that's all.",
        "ठीक है, बहुत धन्यवाद।",
        "मेरे कार्ड से दो बार पैसे कट गए हैं।",  # "two times" is no amount
    ],
)
def test_no_false_entities(text: str) -> None:
    assert kinds(text) == []


def test_number_list_is_not_one_number() -> None:
    assert kinds("card ending 4521, Rs 1,200") == [("amount", "1200 INR"), ("card_last4", "4521")]


def test_dtmf_entities() -> None:
    assert [(e.kind, e.value) for e in extract_entities("4521#", 2, "en-IN", dtmf=True)] == [
        ("order_ref", "4521")
    ]
    card = extract_entities("4521", 2, "en-IN", dtmf=True, hint="card_last4")
    assert [(e.kind, e.value, e.turn) for e in card] == [("card_last4", "4521", 2)]
    assert extract_entities("0", 2, "en-IN", dtmf=True) == []  # the operator key is no entity


@pytest.mark.parametrize(
    "bad", [None, 42, "", "   ", "\x00\xff" * 50, "१" * 5000, "one " * 3000, "₹₹₹$$$", "the the of of"]
)
def test_bad_input_never_raises(bad: Any) -> None:
    extract_entities(bad, 0, "en-IN")
    extract_entities(bad, -5, "xx", dtmf=True)
    parse_spoken_number(bad if isinstance(bad, str) else "")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_extraction_never_raises(text: str) -> None:
    for e in extract_entities(text, 1, "hi-IN"):
        assert e.value
    parse_spoken_number(text)
    spoken_digits(text)


# ---------------------------------------------------------------- the deterministic summary on every fixture


def test_every_fixture_gives_a_useful_summary() -> None:
    for name in all_fixture_names():
        turns, language = fixture_turns(name)
        s = deterministic_summary(turns, language)
        assert s.source == "deterministic"
        assert s.reason.endswith(".") and s.reason.count(". ") == 0, (name, s.reason)
        assert s.next_action.endswith(".") and s.tried, name
        assert s.routing_class in BUILTIN_CLASSES, name
        w = whisper_sentence(s)
        assert w.endswith(".") and w.count(". ") == 0 and len(w) <= 300, (name, w)
        HandoffSummary.model_validate_json(s.model_dump_json())  # round trips as JSON


def test_angry_complaint() -> None:
    s = deterministic_summary(*fixture_turns("angry_complaint"))
    assert s.routing_class in ("complaint", "human_request")
    assert (s.tone, s.urgency) == ("angry", "high")
    assert "third time" in s.reason and "asked for a person" in s.reason
    assert any("asked for a person" in t for t in s.tried)
    assert s.next_action.startswith("Apologise first")
    assert whisper_sentence(s) == (
        'Complaint, angry caller, urgent: "This is the third time I am calling about the same problem", '
        "asked for a person; apologise and own the fix."
    )


def test_billing_dispute() -> None:
    s = deterministic_summary(*fixture_turns("billing_dispute"))
    assert s.routing_class == "billing_dispute" and s.urgency == "high"
    assert [(e.kind, e.value, e.turn) for e in s.entities if e.kind == "amount"] == [
        ("amount", "2400 INR", 1)
    ]
    assert "12 March" in values(s, "date") and "last week" in values(s, "date")
    assert "2400 INR" in s.next_action and "refund" in s.next_action
    w = whisper_sentence(s)
    assert w.startswith("Billing dispute, calm caller, urgent: 2400 rupees on 12 March")


def test_booking_change() -> None:
    s = deterministic_summary(*fixture_turns("booking_change"))
    assert s.routing_class == "booking_change"
    assert values(s, "date") == ["5 April", "8 April"]
    assert "from 5 April to 8 April" in s.next_action
    assert s.urgency == "low" and s.tone == "calm"


def test_order_status_and_talk_over() -> None:
    s = deterministic_summary(*fixture_turns("order_status"))
    assert values(s, "order_ref") == ["A1745"] and s.entities[0].turn == 1
    assert s.routing_class == "order_tracking" and "A1745" in s.next_action
    t = deterministic_summary(*fixture_turns("talk_over"))
    assert values(t, "order_ref") == ["B2981"] and "Monday" in values(t, "date")
    assert any("interrupted" in x for x in t.tried)


def test_dtmf_entry() -> None:
    s = deterministic_summary(*fixture_turns("dtmf_entry"))
    assert [(e.kind, e.value, e.turn) for e in s.entities] == [("order_ref", "4521", 1)]
    assert any("keyed in 4521" in t for t in s.tried)


def test_dtmf_follows_the_agents_question() -> None:
    turns, lang = fixture_turns("dtmf_entry")
    turns[0]["reply"] = "Please key in the last four digits of your card."
    s = deterministic_summary(turns, lang)
    assert values(s, "card_last4") == ["4521"]


def test_hindi_fixtures() -> None:
    s = deterministic_summary(*fixture_turns("hindi_billing_dispute"))
    assert values(s, "amount") == ["1200 INR"] and s.routing_class == "billing_dispute"
    assert "last week" in values(s, "date") and s.urgency == "high"
    assert "1200 rupees" in whisper_sentence(s)
    o = deterministic_summary(*fixture_turns("hindi_order_status"))
    assert values(o, "order_ref") == ["4521"]


def test_pause_mid_sentence() -> None:
    s = deterministic_summary(*fixture_turns("pause_mid_sentence"))
    assert s.routing_class == "booking_change"
    assert values(s, "date") == ["last month", "next Friday"]
    assert "to next Friday" in s.next_action and "last month" not in s.next_action  # when it was booked


def test_failures_and_unresolved_turns_count() -> None:
    turns, lang = fixture_turns("order_status")
    turns[1]["outcome"] = "apology"
    turns[1]["fallbacks"] = [
        {
            "provider": "openrouter",
            "model": "fast-1",
            "kind": "timeout",
            "error": "x",
            "action": "hedge",
            "service": "llm",
        },
        {
            "provider": "sarvam",
            "model": "sarvam-m",
            "kind": "http_500",
            "error": "x",
            "action": "apologise",
            "service": "llm",
        },
    ]
    turns[2]["outcome"] = "not_heard"
    turns[2]["route"]["signals"] = ["repeated request"]
    s = deterministic_summary(turns, lang)
    assert "llm openrouter/fast-1: timeout" in s.tried and "llm sarvam/sarvam-m: http_500" in s.tried
    assert any("2 turns ended unresolved" in t for t in s.tried)
    assert s.tone == "frustrated"


def test_malformed_turns_do_not_break_the_summary() -> None:
    junk: list[Any] = [None, 3, {}, {"route": "x", "transcript": 5, "fallbacks": [1, None]}, {"index": -1}]
    s = deterministic_summary(junk, "en-IN")
    assert s.reason and s.next_action and s.routing_class
    assert deterministic_summary([], "en-IN").tried


def test_regulated_is_urgent() -> None:
    turns = [
        {
            "index": 0,
            "transcript": "My card was stolen, block it",
            "route": {"class": "regulated", "stakes": "high"},
        }
    ]
    s = deterministic_summary(turns, "en-IN")
    assert s.urgency == "high" and "procedure" in s.next_action


# ---------------------------------------------------------------- the model's summary


def test_request_has_schema_and_conversation() -> None:
    turns, lang = fixture_turns("billing_dispute")
    request = llm_summary_request(turns, lang, REASONING)
    assert request.model == REASONING and request.messages[0]["role"] == "system"
    assert "two thousand four hundred rupees" in request.messages[1]["content"]
    rf = request.response_format
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema == summary_json_schema()
    assert set(schema["properties"]) == {
        "reason", "routing_class", "entities", "tone", "urgency", "tried", "next_action"
    }  # fmt: skip
    assert schema["additionalProperties"] is False and "source" not in schema["properties"]


def _good_summary() -> dict[str, Any]:
    return {
        "reason": "Charged twice for one order.",
        "routing_class": "billing_dispute",
        "entities": [{"kind": "amount", "value": "2400 INR", "turn": 1}],
        "tone": "calm",
        "urgency": "high",
        "tried": ["agent answered 3 turns"],
        "next_action": "Refund the duplicate charge.",
    }


def test_parse_llm_summary() -> None:
    s = parse_llm_summary(json.dumps(_good_summary()))
    assert s.source == "llm" and s.entities[0].value == "2400 INR"
    assert parse_llm_summary("```json\n" + json.dumps(_good_summary()) + "\n```").source == "llm"
    assert parse_llm_summary(json.dumps({**_good_summary(), "source": "deterministic"})).source == "llm"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Sure, I can help with that.", "not JSON"),
        ("", "no text"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**_good_summary(), "tone": "livid"}), "tone"),
        (json.dumps({k: v for k, v in _good_summary().items() if k != "reason"}), "reason"),
        (json.dumps({**_good_summary(), "extra": 1}), "extra"),
        (
            json.dumps({**_good_summary(), "entities": [{"kind": "iban", "value": "x", "turn": 0}]}),
            "entities",
        ),
    ],
)
def test_parse_llm_summary_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_llm_summary(text)


@contextlib.asynccontextmanager
async def llm_emulator() -> AsyncIterator[tuple[LLMEmulator, OpenAICompatLLM]]:
    emu = LLMEmulator(Dice(ZERO, seed=1), "openrouter", api_key="k", reasoning_models={REASONING})
    async with serve_app(emu.app) as url:
        llm = OpenAICompatLLM("openrouter", "openrouter", url + "/api/v1", "k")
        try:
            yield emu, llm
        finally:
            await llm.aclose()


async def test_summarise_falls_back_when_the_model_hangs() -> None:
    turns, lang = fixture_turns("angry_complaint")
    async with llm_emulator() as (emu, llm):
        emu.behave(None, fault="hang")
        t0 = time.monotonic()
        s = await summarise(turns, lang, llm, REASONING, timeout_s=0.3)
        elapsed = time.monotonic() - t0
    assert s.source == "deterministic" and s.urgency == "high"
    assert elapsed < 0.3 + 0.5
    assert [f.fault for f in emu.faults] == ["hang"]


async def test_summarise_falls_back_on_text_that_is_not_json() -> None:
    # The emulator answers its template reply whatever response_format says: not the schema.
    turns, lang = fixture_turns("billing_dispute")
    async with llm_emulator() as (emu, llm):
        s = await summarise(turns, lang, llm, REASONING, timeout_s=5.0)
    assert s.source == "deterministic" and values(s, "amount") == ["2400 INR"]
    assert emu.requests == 1


async def test_summarise_falls_back_on_provider_error() -> None:
    turns, lang = fixture_turns("order_status")
    async with llm_emulator() as (emu, llm):
        emu.behave(None, fault="http_500")
        s = await summarise(turns, lang, llm, REASONING, timeout_s=5.0)
    assert s.source == "deterministic" and values(s, "order_ref") == ["A1745"]


async def test_summarise_without_a_model() -> None:
    turns, lang = fixture_turns("order_status")
    assert (await summarise(turns, lang, None, None)).source == "deterministic"


def structured_output_app(answer: str, seen: list[dict[str, Any]]) -> Starlette:
    """A minimal OpenAI-compatible endpoint that streams ``answer`` and records request bodies: the
    LLM emulator has no structured output yet (see the report), this stands in for a provider that does."""

    async def chat(request: Request) -> Response:
        seen.append(json.loads(await request.body()))

        async def events() -> AsyncIterator[bytes]:
            base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
            for i in range(0, len(answer), 40):
                chunk = {**base, "choices": [{"index": 0, "delta": {"content": answer[i : i + 40]}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def test_summarise_uses_the_models_structured_output() -> None:
    turns, lang = fixture_turns("billing_dispute")
    seen: list[dict[str, Any]] = []
    async with serve_app(structured_output_app(json.dumps(_good_summary()), seen)) as url:
        llm = OpenAICompatLLM("openai", "openai", url + "/v1", "k")
        try:
            s = await summarise(turns, lang, llm, "gpt-x", timeout_s=5.0)
        finally:
            await llm.aclose()
    assert s.source == "llm" and s.reason == "Charged twice for one order."
    rf = seen[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == summary_json_schema()


# ---------------------------------------------------------------- whisper and webhook signature


def test_whisper_sentence() -> None:
    s = HandoffSummary(**{**_good_summary(), "tone": "angry"})
    assert whisper_sentence(s) == ("Billing dispute, angry caller, urgent: 2400 rupees; verify and refund.")
