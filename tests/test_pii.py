"""PII: card numbers (Luhn-checked), phone numbers and e-mail addresses never appear in clear in the
call log, the server's log lines, webhook bodies, the handoff summary or the operator views, in every
form a caller says them (issue 18): a number split over two turns of one call, with dashes, spaces or
slashes, in Devanagari digits, as digit words in English, Hindi and Hinglish, a spoken e-mail, a card
followed by expiry and CVV in one digit run. Order references, amounts, dates, times and sizes stay.

The corpus is one list; every sink is checked against all of it, over real sockets where production
has one (the webhook receiver, the operator pages) and through the real writer into SQLite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from voxroute.agent.calllog.redact import (
    LOG_MAX_CHARS,
    ConversationRedactor,
    RedactingFilter,
    luhn_ok,
    mask_number,
    redact,
    redact_async,
    redact_call,
    redact_conversation,
    redact_json,
    redact_turns,
    redact_turns_async,
)
from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.calllog.source import DatabaseCallSource
from voxroute.agent.calllog.store import CallLog, make_engine
from voxroute.agent.config import load_config
from voxroute.agent.handoff import summarise
from voxroute.agent.services import Services
from voxroute.agent.session import CallSummary
from voxroute.agent.timeline import TurnRecord
from voxroute.agent.webhook import SIGNATURE_HEADER, WebhookSender, verify_signature
from voxroute.routing.route import Route
from voxroute.runtime import build_router, create_runtime_app
from voxroute.server import serve_app

KEY = "operator-key-for-pii-tests"
SECRET = "whsec-pii-0123456789"
STEP = 10.0  # bound on every wait: a hang fails the test instead of blocking it


@dataclass(frozen=True)
class Case:
    name: str
    turns: tuple[str, ...]  # what the caller said, turn by turn (one call)
    secrets: tuple[str, ...]  # none of these may appear in clear anywhere


CORPUS = [
    # Cards (all Luhn-valid) in every shape.
    Case("card spaces", ("my card is 4111 1111 1111 1111 thanks",), ("4111 1111",)),
    Case("card dashes", ("card 5500-0055-5555-5559 please",), ("5500-0055", "5555-5559")),
    Case("card slashes", ("it is 6011/1111/1111/1117",), ("6011/1111", "1111/1117")),
    Case("card plain 15", ("amex 378282246310005 ok",), ("378282246310005", "3782822")),
    Case("card devanagari", ("मेरा कार्ड ४००० ०५६६ ५५६६ ५५५६ है",), ("४००० ०५६६", "५५६६ ५५५६")),
    Case(
        "card english words",
        ("five one zero five one zero five one zero five one zero five one zero zero",),
        ("five one zero five",),
    ),
    Case("card hindi words", ("कार्ड चार एक एक एक एक एक एक एक एक एक एक एक एक एक एक एक",), ("चार एक एक एक",)),
    Case(
        "card hinglish words",
        ("card number char ek ek ek, ek ek ek ek, ek ek ek ek, ek ek ek ek",),
        ("char ek ek ek", "ek ek ek ek"),
    ),
    Case(
        "card with expiry and cvv",
        ("4012888888881881 12 27 123 is the card",),
        ("4012888888881881", "12 27 123"),
    ),
    Case("card grouped with expiry and cvv", ("5105 1051 0510 5100 1229 456",), ("5105 1051", "1229 456")),
    # Split over two consecutive turns of one call.
    Case("split card", ("my card number is 4242 4242", "4242 4242 yes"), ("4242 4242",)),
    Case("split card dashes", ("card 3056-9309", "0259-04"), ("3056-9309", "0259-04")),
    Case(
        "split card hindi words",
        ("मेरा कार्ड चार दो दो दो दो दो दो दो", "दो दो दो दो दो"),
        ("चार दो दो दो", "दो दो दो दो"),
    ),
    Case("split phone", ("you can call me on 98450", "67123 ok"), ("98450", "67123")),
    # Phone numbers.
    Case("phone +91 dashes", ("call +91-98000-00002 now",), ("98000-00002", "98000")),
    Case("phone brackets", ("(555) 123-4567 is my office",), ("123-4567",)),
    Case("phone devanagari", ("मेरा नंबर ९८७६५ ४३२१० है",), ("९८७६५", "४३२१०")),
    Case(
        "phone english words",
        ("call me on nine eight seven six five four three two one zero",),
        ("nine eight seven six", "three two one zero"),
    ),
    Case("phone english double", ("it's double nine eight seven triple six five four",), ("double nine",)),
    Case(
        "phone hindi words",
        ("मेरा नंबर नौ आठ सात छह पांच चार तीन दो एक शून्य है",),
        ("नौ आठ सात", "तीन दो एक शून्य"),
    ),
    Case(
        "phone hinglish words",
        ("mera number hai nau aath saat chhe paanch char teen do ek shunya",),
        ("nau aath saat", "teen do ek shunya"),
    ),
    # E-mail addresses, written and spoken.
    Case("email written", ("mail a.b+x@example.co.in please",), ("a.b+x@example", "example.co.in")),
    Case("email spoken", ("my email is john dot doe at gmail dot com",), ("john dot doe", "gmail dot com")),
    Case(
        "email at the rate",
        ("it's priya underscore sharma at the rate yahoo dot co dot in",),
        ("priya underscore sharma", "yahoo dot co"),
    ),
    Case("email spoken glued", ("send it to ravi.k at outlook.com",), ("ravi.k", "outlook.com")),
    Case("email hindi", ("मेरा ईमेल राहुल डॉट वर्मा एट जीमेल डॉट कॉम है",), ("राहुल डॉट वर्मा", "जीमेल डॉट कॉम")),
]

# What must stay in clear (false positives cost the operator the facts of the call).
KEPT = [
    "order A 1745 please",
    "I paid 2,400 rupees",
    "₹1,20,000 was charged",
    "on 12/03/2024 at 10:30",
    "2026-12-03 12:26:59",
    "a bed of 72 by 36 inches",
    "room 204 for 3 nights",
    "order four five two one",
    "flight AI 302 leaves at 14:45",
    "card ending 4521",
    "look at this. Then at home dot",
    "we arrive at gate 5.",
]


def assert_clean(blob: str, where: str) -> None:
    leaks = [(c.name, s) for c in CORPUS for s in c.secrets if s in blob]
    assert not leaks, f"{where}: in clear: {leaks}"


def joined(case: Case) -> str:
    return " ".join(case.turns)


# ---------------------------------------------------------------- the redactor itself


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_every_form_is_masked(case: Case) -> None:
    redacted = redact_conversation(case.turns)
    for secret in case.secrets:
        assert all(secret not in text for text in redacted), (secret, redacted)
        assert secret not in redact(joined(case))
    assert any("[" in text for text in redacted)  # masked, not dropped: the turn still says something


def test_labels_and_the_text_around_stay() -> None:
    assert redact("my card is 4111 1111 1111 1111 thanks") == "my card is [card] thanks"
    assert redact("4111111111111111 12 27 123 is it") == "[card] is it"  # expiry and CVV go too
    assert redact("call +91 98000 00001 now") == "call [phone] now"
    assert redact("a 16-digit 1234 5678 9012 3456") == "a 16-digit [card]"  # grouped 4-4-4-4
    assert redact("ref 12345678901234567") == "ref [number]"  # 17 digits, no card
    assert redact("my email is john dot doe at gmail dot com ok") == "my email is [email] ok"
    assert redact("write to priya.s+orders@mail.example.co.in.") == "write to [email]."
    assert redact(None) is None and redact("") == ""


@pytest.mark.parametrize("text", KEPT)
def test_short_numbers_dates_times_and_sizes_stay(text: str) -> None:
    assert redact(text) == text
    assert redact_conversation([text, text]) == [text, text]


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("४१११११११११११११११")
    assert not luhn_ok("4111111111111112")


def test_a_card_split_over_turns_re_masks_the_earlier_turn() -> None:
    conversation = ConversationRedactor()
    first = conversation.redact_turn("t1", "my card is 4111 1111")
    assert first == [("t1", "my card is 4111 1111")]  # eight digits alone: nothing to mask yet
    second = conversation.redact_turn("t2", "1111 1111")
    assert second == [("t2", "[card]"), ("t1", "my card is [card]")]  # the earlier turn again
    assert conversation.redact_turn("t3", "thanks") == [("t3", "thanks")]
    # Four turns of four digits each; a word between turns ends the run.
    assert redact_conversation(["4111", "1111", "1111", "1111 ok"]) == ["[card]"] * 3 + ["[card] ok"]
    assert redact_conversation(["order 1745", "thanks", "2400"]) == ["order 1745", "thanks", "2400"]


def test_conversation_memory_is_bounded() -> None:
    """A run that goes on over many turns (DTMF one key a turn) keeps only the last texts."""
    conversation = ConversationRedactor()
    for i in range(1000):
        out = conversation.redact_turn(i, "1")
        assert out[0] == (i, "[number]" if i >= 15 else out[0][1])
    assert len(conversation._texts) <= 2


def test_long_inputs_are_redacted_correctly() -> None:
    """Linear time by construction (one tokenizer pass, walks that never go back over a token twice);
    bench/redact.py has the figures. Here: the adversarial shapes finish and come out right."""
    assert redact("1" * 20_000) == "[number]"
    assert redact("1 " * 20_000) == "[number] "
    assert redact("4111111111111111" + "2" * 20_000) == "[card]"
    assert redact("७" * 20_000 + "@") == "[number]@"
    assert redact("x" * 20_000 + "@example.com") == "[email]"
    chain = "at a dot " * 20_000
    assert redact(chain) == chain
    assert redact("a@" * 20_000) == "a@" * 20_000
    prose = "hello my order is A 1745 and I paid 2,400 rupees, call me at nine eight zero. " * 13_000
    text = (prose[:500_000] + " card 4111 1111 1111 1111 ") + prose[:500_000]
    out = redact(text)
    assert len(text) > 1_000_000 and out.count("[card]") == 1 and "4111" not in out
    assert out.startswith(prose[:1000])


async def test_redact_async_gives_the_same_answer_off_the_loop() -> None:
    long = "my card is 4111 1111 1111 1111 " * 5000
    assert await redact_async(long) == redact(long)
    assert await redact_async("9800000001") == "[phone]"
    turns = [
        {"index": 1, "transcript": long},
        {"index": 2, "transcript": "4111 1111"},
        {"transcript": "1111 1111"},
    ]
    assert await redact_turns_async(turns) == redact_turns(turns)
    assert [t["transcript"] for t in redact_turns(turns)[1:]] == ["[card]", "[card]"]


# ---------------------------------------------------------------- the call log (SQLite, real writer)


def _call(sid: str, **kw) -> dict:
    return {
        "call_sid": sid,
        "stream_sid": "MZ" + sid,
        "tenant": "default",
        "carrier": "twilio",
        "channel": "voice",
        "from_number": "+919812345670",
        "to_number": "+918000000000",
        "language": "en-IN",
        "started_at": time.time(),
        "ended_at": None,
        "ended": "in_progress",
        "outcome": "unknown",
        "outcome_reason": None,
        "error": None,
        "mode": "emulated",
        "policy": "p1",
        **kw,
    }


def _turn(index: int, transcript: str) -> dict:
    t = TurnRecord(index=index, transcript=transcript, budget_ms=1000)
    t.route = Route(
        routing_class="billing_dispute", stakes="high", tier="fast", model="m", paths=("m",), reason="rule"
    )
    t.reply = "Let me check that for you."
    return t.as_dict()


def _turns(case: Case) -> list[dict]:
    return [_turn(i + 1, text) for i, text in enumerate(case.turns)]


@asynccontextmanager
async def running(call_log: CallLog):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(call_log.run())
        try:
            yield call_log
        finally:
            await call_log.aclose()


async def _database_text(url: str) -> tuple[str, list[dict]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            calls = (await conn.execute(select(calls_table))).mappings().all()
            turns = (await conn.execute(select(turns_table))).mappings().all()
    finally:
        await engine.dispose()
    rows = [dict(r) for r in [*calls, *turns]]
    return json.dumps(rows, default=str, ensure_ascii=False), [dict(t) for t in turns]


async def test_the_call_log_stores_none_of_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
    calls = {f"CApii{i}": case for i, case in enumerate(CORPUS)}
    log = CallLog(make_engine(url), salt=b"salt", directory=tmp_path)
    async with running(log):
        for sid, case in calls.items():
            call = _call(sid)
            log.call_started(call)
            for turn in _turns(case):
                log.turn_finished(call, turn)
        await log.flush()
        # Before the calls end: a turn that a later turn completed was written again, masked.
        blob, turns = await _database_text(url)
        assert_clean(blob, "database, calls in progress")
        split = {(t["call_sid"], t["turn_index"]): t["transcript"] for t in turns}
        assert split[("CApii10", 1)] == "my card number is [card]" and split[("CApii10", 2)] == "[card] yes"
        for sid, case in calls.items():
            log.call_ended(_call(sid, ended="completed", ended_at=time.time(), turns=_turns(case)))
        await log.flush()
    blob, turns = await _database_text(url)
    assert_clean(blob, "database, calls ended")
    assert "+919812345670" not in blob and "9812345670" not in blob  # the caller: a hash only
    assert len(turns) == sum(len(c.turns) for c in CORPUS)


# ---------------------------------------------------------------- log lines


def test_log_lines_are_redacted(tmp_path: Path, capsys) -> None:
    from voxroute.cli import _setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    log_file = tmp_path / "serve.log"
    try:
        _setup_logging(True, log_file)
        log = logging.getLogger("voxroute.pii-test")
        for case in CORPUS:
            log.info("caller said %s", joined(case))
            log.warning("caller said " + joined(case))  # no arguments: the message itself
        try:
            raise ValueError("bad input: " + joined(CORPUS[0]))
        except ValueError:
            log.exception("turn failed for %s", "+919812345670")
        log.info("call CA1 from %s", mask_number("+919812345670"))
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    written = log_file.read_text()
    printed = capsys.readouterr().err
    for output in (written, printed):
        assert output.count("caller said") == 2 * len(CORPUS)
        assert_clean(output, "log output")
        assert "9812345670" not in output and "from ••••••••5670" in output
        assert "ValueError: bad input: my card is [card] thanks" in output  # the traceback too


def test_the_filter_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "from %s: %s", ("+91 98000 00001", "ok"), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "from [phone]: ok"
    assert mask_number("+91 98000 00001") == "••••••••0001" and mask_number(None) == ""
    long = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", ("9800000001 " * 100_000,), None)
    assert RedactingFilter().filter(long)  # cut before it is redacted: logging runs on the loop
    message = long.getMessage()
    assert len(message) < LOG_MAX_CHARS + 100 and message.endswith("(1100000 characters, cut)")
    assert "9800000001" not in message


# ---------------------------------------------------------------- webhook bodies (a real receiver)


@dataclass
class Receiver:
    bodies: list[bytes]
    got: asyncio.Event

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request):
            body = await request.body()
            if not verify_signature(body, SECRET, request.headers.get(SIGNATURE_HEADER)):
                return JSONResponse({"error": "bad signature"}, 401)
            self.bodies.append(body)
            if len(self.bodies) >= 2:
                self.got.set()
            return JSONResponse({})

        return app


async def test_webhook_bodies_are_redacted_and_signed_as_sent() -> None:
    receiver = Receiver([], asyncio.Event())
    summary = {
        "reason": [joined(c) for c in CORPUS],
        "entities": [{"kind": "phone", "value": "+919812345670"}],
    }
    async with serve_app(receiver.app()) as base, asyncio.TaskGroup() as tg:
        sender = WebhookSender(SECRET, base_delay_s=0.01)
        tg.create_task(sender.run())
        try:
            body = json.dumps({"call_sid": "CA1", "summary": summary}, ensure_ascii=False).encode()
            assert sender.submit(base + "/hook", body)
            assert sender.submit(base + "/hook", " / ".join(joined(c) for c in CORPUS).encode())  # not JSON
            async with asyncio.timeout(STEP):
                await receiver.got.wait()
        finally:
            await sender.aclose(deadline_s=STEP)
    json_body, text_body = receiver.bodies  # both verified against their signatures on arrival
    data = json.loads(json_body)
    assert data["call_sid"] == "CA1" and len(data["summary"]["reason"]) == len(CORPUS)
    for body in (json_body, text_body):
        assert_clean(body.decode(), "webhook body")
        assert "9812345670" not in body.decode()
    plain = b'{"call_sid": "CA2", "n": 1}'
    from voxroute.agent.webhook import redact_body

    assert redact_body(plain) is plain or redact_body(plain) == plain  # nothing to mask: same bytes


# ---------------------------------------------------------------- the handoff summary


async def test_the_handoff_summary_has_none_of_it() -> None:
    turns = [_turn(i, text) for i, text in enumerate((t for c in CORPUS for t in c.turns), start=1)]
    turns.append(_turn(len(turns) + 1, "please call me back on +91 98123 45670, I want a person"))
    summary = await summarise(turns, "en-IN", None, None)
    blob = json.dumps(summary.model_dump(mode="json"), ensure_ascii=False)
    assert_clean(blob, "handoff summary")
    assert "98123" not in blob and "45670" not in blob
    assert turns[0]["transcript"] == CORPUS[0].turns[0]  # the caller's turns are not changed


# ---------------------------------------------------------------- operator views


class _Live:
    """A call in progress as ``Services`` sees it: something with a summary."""

    def __init__(self, summary: CallSummary) -> None:
        self._summary = summary

    def summary(self) -> CallSummary:
        return self._summary


def _summary(sid: str, case: Case, ended: str = "completed") -> CallSummary:
    turns = _turns(case)
    history = [{"role": "system", "content": "be kind"}]
    for t in turns:
        history += [
            {"role": "user", "content": t["transcript"]},
            {"role": "assistant", "content": t["reply"]},
        ]
    return CallSummary(
        call_sid=sid,
        stream_sid="MZ" + sid,
        tenant="default",
        language="en-IN",
        started_at=time.time(),
        ended=ended,
        from_number="+919812345670",
        to_number="+918000000000",
        turns=turns,
        history=history,
        outcome_reason="caller gave " + joined(case),
    )


def _services() -> Services:
    config = load_config()
    return Services(config, None, None, {}, build_router(config), mode="emulated")  # type: ignore[arg-type]


async def test_operator_views_live_and_finished_are_redacted_as_stored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOXROUTE_API_KEY", KEY)
    services = _services()
    sids = {}
    for i, case in enumerate(CORPUS):
        sid = f"CAview{i}"
        sids[sid] = case
        if i % 2:
            services.finished[sid] = _summary(sid, case)
        else:
            services.calls[sid] = _Live(_summary(sid, case, ended="in_progress"))  # type: ignore[assignment]
    services.handoffs["CAview0"] = {
        "reason": joined(CORPUS[0]),
        "whisper": joined(CORPUS[1]),
        "error": "TransferError: caller +919812345670 said " + joined(CORPUS[2]),
    }
    app = create_runtime_app(services, dev=True)  # the runtime's own routes: pages, JSON, handoff
    headers = {"X-API-Key": KEY}
    views = {}
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=STEP) as http:
        listing = await http.get("/calls", headers={**headers, "Accept": "text/html"})
        assert listing.status_code == 200
        assert_clean(listing.text, "call list")
        handoff = await http.get("/calls/CAview0/handoff", headers=headers)
        assert handoff.status_code == 200 and handoff.json()["reason"] == "my card is [card] thanks"
        assert_clean(handoff.text, "/calls/CAview0/handoff")
        assert "9812345670" not in handoff.text
        for sid in sids:
            as_json = await http.get(f"/calls/{sid}", headers=headers)
            as_html = await http.get(f"/calls/{sid}", headers={**headers, "Accept": "text/html"})
            assert as_json.status_code == as_html.status_code == 200
            views[sid] = as_json.json()
            for blob in (as_json.text, as_html.text):
                assert_clean(blob, f"/calls/{sid}")
                assert "9812345670" not in blob
    # Exactly as the call log stores them: the same calls through the writer, read back.
    url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
    log = CallLog(make_engine(url), salt=b"salt", directory=tmp_path)
    async with running(log):
        for sid, case in sids.items():
            log.call_ended(_call(sid, ended="completed", ended_at=time.time(), turns=_turns(case)))
        await log.flush()
    engine = make_engine(url)
    try:
        source = DatabaseCallSource(engine)
        for sid in sids:
            stored = await source.get(sid)
            assert stored is not None
            shown = [t["transcript"] for t in views[sid]["turns"]]
            assert shown == [t["transcript"] for t in stored["turns"]], sid
            assert [t["reply"] for t in views[sid]["turns"]] == [t["reply"] for t in stored["turns"]]
    finally:
        await engine.dispose()


def test_redact_call_leaves_the_held_call_alone() -> None:
    summary = _summary("CAx", CORPUS[10])
    call = {
        "call_sid": "CAx",
        "from_number": summary.from_number,
        "turns": summary.turns,
        "history": summary.history,
    }
    view = redact_call(call)
    assert [t["transcript"] for t in view["turns"]] == ["my card number is [card]", "[card] yes"]
    assert [m["content"] for m in view["history"] if m["role"] == "user"] == [
        "my card number is [card]",
        "[card] yes",
    ]
    assert (
        view["from_number"] == "••••••••5670"
        and redact_call(call, keep_number=True)["from_number"] == "+919812345670"
    )
    assert call["turns"][0]["transcript"] == "my card number is 4242 4242"  # the call's own record
    assert redact_json({"a": ["9800000001", 3]}) == {"a": ["[phone]", 3]}


@pytest.mark.parametrize(
    "identifier", ["CA9f8e7d6c5b4a39281716151413121110", "CAdrain0000000000000001", "MZ5551234567890123"]
)
def test_call_ids_in_log_lines_stay_readable(identifier):
    """A number glued to letters is part of an identifier (a CallSid): operators need it in the logs."""
    assert redact(f"call {identifier} ended; caller 9800000001") == f"call {identifier} ended; caller [phone]"
