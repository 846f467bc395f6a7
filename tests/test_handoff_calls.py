"""Handoff to a person in whole calls (issue 5): the angry-complaint fixture through the fake carrier,
the runtime and the emulators on 127.0.0.1, with the local Twilio REST stand-in and a webhook
receiver. The caller asks for a person; the runtime summarises, signs and posts the summary,
transfers the live call with ``<Dial>`` (whisper and action URLs), and closes the stream. A human
leg that fails brings the caller back to the agent, with the conversation intact. Calls that end in
a transfer keep the agent's normal voice (tests/conftest.py, FAST_VOICE): the transfer goes out while
"connecting you" plays, and the fake caller hangs up 0.3 s after it has played.
"""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET

import httpx
import pytest
from fastapi import FastAPI, Request

from tests.conftest import FAST_VOICE
from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.agent.session import INTERRUPTED_MARK
from voxroute.agent.webhook import SIGNATURE_HEADER, verify_signature
from voxroute.emulators.carrier import dial
from voxroute.replay import local_stack, replay_fixture
from voxroute.routing.table import ClassDef
from voxroute.server import serve_app, ws_url

SECRET = "webhook-secret-for-tests"
API_KEY = "operator-key-for-tests"


def receiver() -> tuple[FastAPI, list[tuple[bytes, dict]]]:
    got: list[tuple[bytes, dict]] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> dict:
        got.append((await request.body(), dict(request.headers)))
        return {"ok": True}

    return app, got


def handoff_config(webhook_url: str, cooldown_s: float = 10.0):
    cfg = load_config()
    cfg.handoff.webhook_url = webhook_url
    cfg.routing.cooldown_s = cooldown_s
    return cfg


def dial_twiml(twilio, call_sid: str) -> ET.Element:
    updates = [r for r in twilio.for_call(call_sid) if r.form.get("Twiml")]
    assert len(updates) == 1, [r.form for r in twilio.for_call(call_sid)]
    return ET.fromstring(updates[0].form["Twiml"])


async def test_angry_caller_is_transferred_and_a_failed_human_leg_comes_back(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXROUTE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("VOXROUTE_API_KEY", API_KEY)
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))  # a call log of its own (SQLite)
    monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
    fixture = load("angry_complaint")
    app, got = receiver()
    async with serve_app(app) as hook_url:
        cfg = handoff_config(hook_url + "/hook")
        async with local_stack("zero", 0, [fixture], cfg) as stack:
            raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg)
            sid = raw["call_sid"]
            twilio = stack.emulators.twilio
            async with httpx.AsyncClient(base_url=stack.server_url, timeout=10) as http:
                whisper = await http.post(f"/twilio/whisper/{sid}", data={"CallSid": "CA" + "1" * 32})
                denied = await http.get(f"/calls/{sid}/handoff")
                record = await http.get(f"/calls/{sid}/handoff", headers={"X-API-Key": API_KEY})
                # The human does not answer: Twilio calls the <Dial action>; the caller goes back.
                back = await http.post(
                    f"/twilio/dial-action/{sid}",
                    data={"CallSid": sid, "DialCallStatus": "no-answer", "From": "+919800000001", "To": "+918000000000"},
                )  # fmt: skip
            resume = ET.fromstring(back.text)
            params = {p.get("name"): p.get("value") for p in resume.iter("Parameter")}
            again = load("order_status")
            again.script = again.script.model_copy(update={"utterances": again.script.utterances[:1]})
            result = await dial(
                again,
                ws_url(stack.server_url) + "/twilio/stream",
                custom_parameters=params,
                call_sid=sid,
                speed=2.0,
            )
            resumed = stack.services.call_json(sid)

    # The call ended in a handoff, carrying the summary.
    assert raw["ended"] == "handoff", raw.get("error")
    h = raw["handoff"]
    assert h["transferred"] and h["to"] == "+918000000999" and h["trigger"] == "the caller asked for a person"
    assert (
        h["routing_class"] in ("complaint", "human_request")
        and h["tone"] == "angry"
        and h["urgency"] == "high"
    )
    assert set(h) >= {"reason", "routing_class", "entities", "tone", "urgency", "tried", "next_action"}
    assert raw["turns"][-1]["route"]["class"] == "human_request" and raw["turns"][-1]["outcome"] == "handoff"
    assert raw["turns"][-1]["reply"] == cfg.agent.transfer_phrases["en-IN"]

    # The live call was updated with a <Dial> to the tenant's queue, whisper and action on our public URL.
    root = dial_twiml(twilio, sid)
    dial_el = root.find("Dial")
    assert dial_el is not None and dial_el.get("callerId") == "+918000000000"
    assert dial_el.get("timeout") == str(cfg.handoff.dial_timeout_s)
    assert dial_el.get("action") == f"{cfg.telephony.public_base_url}/twilio/dial-action/{sid}"
    number = dial_el.find("Number")
    assert number is not None and number.text == "+918000000999"
    assert number.get("url") == f"{cfg.telephony.public_base_url}/twilio/whisper/{sid}"

    # The whisper speaks the one-sentence summary to the human.
    assert whisper.status_code == 200
    say = ET.fromstring(whisper.text).find("Say")
    assert say is not None and say.text == h["whisper"] and "complaint" in say.text.lower()

    # The webhook got the signed summary.
    assert len(got) == 1
    body, headers = got[0]
    assert verify_signature(body, SECRET, headers[SIGNATURE_HEADER.lower()])
    posted = json.loads(body)
    assert posted["call_sid"] == sid and posted["summary"]["urgency"] == "high"
    assert posted["summary"]["reason"] == h["reason"]

    # The operator API needs the key.
    assert denied.status_code == 401
    assert record.status_code == 200 and record.json()["whisper"] == h["whisper"]

    # The failed human leg: back to the agent, which apologises, offers a callback, and remembers.
    assert params.get("resume") == "transfer_failed" and params.get("call_sid") == sid
    assert resumed["handoff"]["human_leg"] == {"status": "no-answer", "connected": False, "duration_s": None}
    history = [m["content"] for m in resumed["history"]]
    assert "I want to talk to a real person, right now." in history
    # the callback offer, which the caller talked over (the fixture's caller speaks at once)
    assert f"{cfg.agent.callback_phrases['en-IN']} {INTERRUPTED_MARK}" in history
    assert result.completed
    # The caller who talks over the callback phrase cuts it: their turn is answered within budget,
    # not after the phrase (it played outside any turn, so the answer queued behind it).
    print([(t["index"], t.get("first_audio_ms"), t.get("within_budget")) for t in resumed["turns"]])
    assert all(t["within_budget"] for t in resumed["turns"]), resumed["turns"]

    # The call log keeps both legs: the resumed leg's turns continue the first leg's numbering.
    with sqlite3.connect(tmp_path / "voxroute.db") as db:
        rows = db.execute("SELECT turn_index, leg FROM turns WHERE call_sid = ? ORDER BY turn_index", (sid,))
        rows = rows.fetchall()
        legs, turn_count = db.execute(
            "SELECT legs, turn_count FROM calls WHERE call_sid = ?", (sid,)
        ).fetchone()
    first = [t["index"] for t in raw["turns"]]
    assert rows[: len(first)] == [(i, 1) for i in first]
    second = rows[len(first) :]
    assert len(second) == len(resumed["turns"]) >= 1
    assert second == [(max(first) + n, 2) for n in range(1, len(second) + 1)]
    assert legs == 2 and turn_count == len(rows)


async def test_reasoning_model_hung_still_transfers_with_the_deterministic_summary(monkeypatch):
    monkeypatch.setenv("VOXROUTE_WEBHOOK_SECRET", SECRET)
    fixture = load("angry_complaint")
    app, got = receiver()
    async with serve_app(app) as hook_url:
        cfg = handoff_config(hook_url + "/hook", cooldown_s=120)
        reasoning = cfg.models["reasoning"].model
        async with local_stack("reference", 4, [fixture], cfg) as stack:
            stack.emulators.llm["openrouter"].behave(reasoning, fault="hang")
            raw = await replay_fixture(fixture, stack.server_url, config=cfg)
            twilio = stack.emulators.twilio
            dial_twiml(twilio, raw["call_sid"])  # exactly one transfer
    assert raw["ended"] == "handoff", raw.get("error")
    h = raw["handoff"]
    assert h["source"] == "deterministic" and h["summary_ms"] <= 2500
    assert h["transferred"] and h["urgency"] == "high"
    assert len(got) == 1 and json.loads(got[0][0])["summary"]["source"] == "deterministic"


async def test_keying_zero_asks_for_a_person():
    """DTMF 0 alone (configurable) is a request for a person: the call is transferred."""
    fixture = load("dtmf_entry")
    items = fixture.script.utterances
    keyed = next(u for u in items if u.dtmf)
    cfg = load_config()
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        fixture.script = fixture.script.model_copy(
            update={"utterances": [items[0], keyed.model_copy(update={"dtmf": "0#"})]}
        )
        raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg)
        twilio = stack.emulators.twilio
        dial_twiml(twilio, raw["call_sid"])
    assert raw["ended"] == "handoff", raw.get("error")
    assert raw["handoff"]["trigger"] == "the caller pressed 0"
    assert raw["turns"][-1]["kind"] == "dtmf" and raw["turns"][-1]["outcome"] == "handoff"


async def test_a_class_that_always_ends_with_a_person():
    """A class configured with ``ends_with_human`` (the bank example's ``regulated``): the agent
    answers, then says it is connecting the caller, and the call is transferred."""
    cfg = load_config()
    cfg.routing.classes["billing_dispute"] = ClassDef(
        stakes="high", on_failure="handoff", ends_with_human=True
    )
    fixture = load("billing_dispute")
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:1]})
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg)
        dial_twiml(stack.emulators.twilio, raw["call_sid"])
    assert raw["ended"] == "handoff", raw.get("error")
    turn = raw["turns"][0]
    assert turn["route"]["ends_with_human"] and turn["outcome"] == "handoff"
    assert turn["reply"].endswith(cfg.agent.transfer_phrases["en-IN"]) and len(turn["reply"]) > len(
        cfg.agent.transfer_phrases["en-IN"]
    )
    assert raw["handoff"]["trigger"] == "billing_dispute calls end with a person"


async def test_a_webhook_without_a_secret_fails_at_start(monkeypatch):
    monkeypatch.delenv("VOXROUTE_WEBHOOK_SECRET", raising=False)
    cfg = handoff_config("http://127.0.0.1:9/hook")
    with pytest.raises(ExceptionGroup) as info:
        async with local_stack("zero", 0, [load("order_status")], cfg):
            pass
    assert info.group_contains(RuntimeError, match=r"\$VOXROUTE_WEBHOOK_SECRET holds no signing secret")


async def test_the_model_hands_off_with_its_transfer_tool():
    """A tenant lets the model decide (``human_request`` is routed to the model instead of straight
    to a person): the model calls ``transfer_to_human`` with a reason, and the call is transferred."""
    cfg = load_config()
    cfg.routing.classes["human_request"] = ClassDef(stakes="high", bridge_then_escalate=False)
    fixture = load("angry_complaint")
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg)
        root = dial_twiml(stack.emulators.twilio, raw["call_sid"])
    assert raw["ended"] == "handoff", raw.get("error")
    last = raw["turns"][-1]
    assert last["route"]["class"] == "human_request" and not last["route"]["handoff"]
    assert last["tools"] == [
        {
            "name": "transfer_to_human",
            "arguments": {"reason": "caller asked for a person"},
            "status": "ok",
            "latency_ms": 0.0,
        }
    ]
    assert last["outcome"] == "handoff" and last["reply"] == cfg.agent.transfer_phrases["en-IN"]
    assert raw["handoff"]["trigger"] == "the agent asked for a person: caller asked for a person"
    assert root.find("Dial/Number").text == "+918000000999"
    assert raw["outcome"] == "handoff"
    # Earlier turns offered the tool too, and the model did not use it.
    assert all(t["tools"] == [] for t in raw["turns"][:-1])


async def test_the_model_marks_a_settled_call_resolved(replay_call):
    """The caller says thanks: the model answers and calls ``mark_resolved``; the call's outcome is
    ``resolved`` (the call log's containment counts it)."""
    result = await replay_call("order_status", profile="zero", speed=2.0, voice_speed=FAST_VOICE)
    assert result.ended == "completed", result.raw.get("error")
    assert result.raw["outcome"] == "resolved"
    last = result.turns[-1]
    assert [t["name"] for t in last["tools"]] == ["mark_resolved"] and last["reply"]
    assert all(t["tools"] == [] for t in result.turns[:-1])
