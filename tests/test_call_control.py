"""Twilio call control: TwiML builders, the <Dial action> parser, and the REST client (httpx, the
one retry rule of voxroute.agent.retry) against the local Twilio REST stand-in over real sockets. The
official ``twilio`` SDK is the independent peer: what our client sends is what the SDK sends.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from contextlib import asynccontextmanager

import httpx
import pytest

from voxroute.emulators.twilio_rest import TwilioRestEmulator, check_update_form, parse_basic_auth
from voxroute.server import serve_app
from voxroute.telephony.call_control import (
    CallControlError,
    DialResult,
    TwilioCallControl,
    dial_action_result,
    hangup_twiml,
    return_to_agent_twiml,
    transfer_twiml,
    whisper_twiml,
)
from voxroute.testing.ports import free_port

ACCOUNT = "AC00000000000000000000000000000002"
TOKEN = "12345678901234567890123456789012"
CALL = "CA00000000000000000000000000000003"
HUMAN = "+919800012345"
CALLER_ID = "+918000000001"
WHISPER = "https://agent.example.com/twilio/whisper/CA3"
ACTION = "https://agent.example.com/twilio/dial-done"
CALL_PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json"


@asynccontextmanager
async def stand_in(**control_kwargs):
    emulator = TwilioRestEmulator(ACCOUNT, TOKEN)
    async with serve_app(emulator.app) as base:
        kwargs = {"timeout_s": 2.0, "attempts": 3, "backoff_s": 0.01} | control_kwargs
        token = kwargs.pop("auth_token", TOKEN)
        async with TwilioCallControl(ACCOUNT, token, api_base_url=base, **kwargs) as control:
            yield emulator, control, base


# ---------------------------------------------------------------- TwiML (no sockets)


def test_transfer_twiml_dial_number_with_whisper():
    xml = transfer_twiml(HUMAN, CALLER_ID, 25, WHISPER, ACTION, "Connecting you to a colleague.")
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    say, dial = list(root)
    assert (say.tag, say.text) == ("Say", "Connecting you to a colleague.")
    assert dial.tag == "Dial"
    assert dial.attrib == {"callerId": CALLER_ID, "timeout": "25", "action": ACTION, "method": "POST"}
    (number,) = list(dial)
    assert number.tag == "Number"
    assert number.text == HUMAN
    assert number.attrib["url"] == WHISPER


def test_transfer_twiml_sip_and_minimal():
    root = ET.fromstring(transfer_twiml("sip:queue@pbx.example.com", None, 30, WHISPER, None, None))
    (dial,) = list(root)
    assert dial.attrib == {"timeout": "30"}
    (sip,) = list(dial)
    assert (sip.tag, sip.text, sip.attrib["url"]) == ("Sip", "sip:queue@pbx.example.com", WHISPER)
    root = ET.fromstring(transfer_twiml(HUMAN, timeout_s=20))
    (number,) = list(list(root)[0])
    assert number.attrib == {} and number.text == HUMAN


def test_transfer_twiml_say_language_and_escaping():
    root = ET.fromstring(transfer_twiml(HUMAN, None, 20, None, None, "Tom & Jerry <ok>", language="en-IN"))
    say = list(root)[0]
    assert say.text == "Tom & Jerry <ok>" and say.attrib == {"language": "en-IN"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"number_or_sip": "09800012345"},
        {"number_or_sip": "+91 98000 12345"},
        {"number_or_sip": "<Number>"},
        {"number_or_sip": HUMAN, "caller_id": "me"},
        {"number_or_sip": HUMAN, "timeout_s": 2},
        {"number_or_sip": HUMAN, "timeout_s": 601},
        {"number_or_sip": HUMAN, "whisper_url": "ftp://x/y"},
        {"number_or_sip": HUMAN, "action_url": "/relative"},
    ],
)
def test_transfer_twiml_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        transfer_twiml(**kwargs)


def test_whisper_twiml():
    root = ET.fromstring(whisper_twiml("Angry caller,\n charged twice for order 4521.", "en-IN"))
    (say,) = list(root)
    assert say.tag == "Say"
    assert say.text == "Angry caller, charged twice for order 4521."
    assert say.attrib == {"language": "en-IN"}
    long = ET.fromstring(whisper_twiml("word " * 500))
    assert len(list(long)[0].text) <= 400
    with pytest.raises(ValueError):
        whisper_twiml("  \n ")


def test_hangup_and_return_to_agent_twiml():
    assert [e.tag for e in ET.fromstring(hangup_twiml())] == ["Hangup"]
    xml = return_to_agent_twiml(
        "wss://agent.example.com/twilio/stream", {"tenant": "acme", "call_token": "t"}
    )
    (connect,) = list(ET.fromstring(xml))
    (stream,) = list(connect)
    assert stream.attrib["url"] == "wss://agent.example.com/twilio/stream"
    params = {p.attrib["name"]: p.attrib["value"] for p in stream}
    assert params == {"tenant": "acme", "call_token": "t", "resume": "transfer_failed"}
    with pytest.raises(ValueError):
        return_to_agent_twiml("https://agent.example.com/x", {})


# ---------------------------------------------------------------- <Dial action> callback


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("completed", "connected"),
        ("answered", "connected"),
        ("busy", "failed"),
        ("no-answer", "failed"),
        ("failed", "failed"),
        ("canceled", "failed"),
    ],
)
def test_dial_action_result(status, outcome):
    form = {"CallSid": CALL, "DialCallStatus": status, "DialCallDuration": "42", "DialCallSid": "CA9"}
    result = dial_action_result(form)
    assert result == DialResult(outcome, status, 42, CALL, "CA9")
    assert result.connected is (outcome == "connected")


def test_dial_action_result_bad_input_fails_safe(caplog):
    with caplog.at_level(logging.WARNING, logger="voxroute.telephony.call_control"):
        result = dial_action_result({"CallSid": CALL, "DialCallStatus": "weird", "DialCallDuration": "x"})
    assert result.outcome == "failed" and result.duration_s is None
    assert "unknown DialCallStatus" in caplog.text and "bad DialCallDuration" in caplog.text
    assert dial_action_result({}).outcome == "failed"


# ---------------------------------------------------------------- stand-in pieces (no sockets)


def test_stand_in_form_checks_and_basic_auth():
    assert check_update_form({"Status": "completed"}) is None
    assert check_update_form({"Twiml": "<Response/>"}) is None
    assert check_update_form({"Twiml": "<Response>"})[0] == 12100
    assert check_update_form({"Twiml": "<Dial/>"})[0] == 12100
    assert check_update_form({"Twiml": "<Response/>", "Url": "https://x"})[0] == 20001
    assert check_update_form({"Status": "ringing"})[0] == 20001
    assert check_update_form({"Bogus": "1"})[0] == 20001
    assert check_update_form({})[0] == 20001
    assert parse_basic_auth("Basic QUM6dG9r") == ("AC", "tok")
    assert parse_basic_auth("Basic !!!") is None
    assert parse_basic_auth("Bearer x") is None
    assert parse_basic_auth(None) is None


def test_api_base_url_must_be_http():
    with pytest.raises(ValueError):
        TwilioCallControl(ACCOUNT, TOKEN, api_base_url="127.0.0.1:9")


# ---------------------------------------------------------------- the client against the stand-in


async def test_transfer_sends_dial_twiml():
    async with stand_in(
        public_base_url="https://agent.example.com", whisper_path="/twilio/whisper",
        action_path="/twilio/dial-done", dial_timeout_s=25,
    ) as (emulator, control, _):  # fmt: skip
        assert await control.transfer(CALL, HUMAN, CALLER_ID, "Connecting you.") is True
    (req,) = emulator.requests
    assert (req.method, req.path, req.status, req.auth_user) == ("POST", CALL_PATH, 200, ACCOUNT)
    assert list(req.form) == ["Twiml"]
    root = ET.fromstring(req.form["Twiml"])
    assert (root.find("Say").text, root.find("Say").attrib) == ("Connecting you.", {})
    dial = root.find("Dial")
    assert dial.attrib == {
        "callerId": CALLER_ID, "timeout": "25", "action": f"{ACTION}/{CALL}", "method": "POST"
    }  # fmt: skip
    number = dial.find("Number")
    assert number.text == HUMAN and number.attrib["url"] == f"https://agent.example.com/twilio/whisper/{CALL}"


async def test_update_twiml_sends_it_as_given():
    twiml = transfer_twiml(HUMAN, CALLER_ID, 25, WHISPER, ACTION, "Connecting you.")
    async with stand_in() as (emulator, control, _):
        assert await control.update_twiml(CALL, twiml) is True
        with pytest.raises(ValueError):  # a bad target never reaches the wire
            await control.transfer(CALL, "0980", None)
    (req,) = emulator.requests
    assert req.form == {"Twiml": twiml}


async def test_the_wire_is_what_the_twilio_sdk_sends():
    """The same three updates through the official SDK (its own HTTP client, pointed at the stand-in)
    and through ours: same method, path, auth, content type and form."""
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    class ToStandIn(TwilioHttpClient):
        def __init__(self, base: str) -> None:
            super().__init__()
            self.base = base

        def request(self, method, url, *args, **kwargs):
            return super().request(method, url.replace("https://api.twilio.com", self.base), *args, **kwargs)

    emulator = TwilioRestEmulator(ACCOUNT, TOKEN)
    headers: list[tuple[str | None, str | None]] = []

    @emulator.app.middleware("http")
    async def record_headers(request, call_next):
        headers.append((request.headers.get("content-type"), request.headers.get("accept")))
        return await call_next(request)

    twiml = transfer_twiml(HUMAN, CALLER_ID, 25, WHISPER, ACTION, "Connecting you.")
    async with serve_app(emulator.app) as base:
        sdk = Client(ACCOUNT, TOKEN, http_client=ToStandIn(base)).calls(CALL)
        await asyncio.to_thread(sdk.update, twiml=twiml)
        await asyncio.to_thread(sdk.update, url="https://agent.example.com/x", method="POST")
        await asyncio.to_thread(sdk.update, status="completed")
        by_sdk = list(emulator.requests)
        emulator.requests.clear()
        emulator.calls.clear()
        async with TwilioCallControl(ACCOUNT, TOKEN, api_base_url=base) as control:
            assert await control.update_twiml(CALL, twiml) is True
            assert await control.redirect(CALL, "https://agent.example.com/x") is True
            assert await control.hang_up(CALL) is True
        ours = list(emulator.requests)
    assert len(by_sdk) == len(ours) == 3
    for sdk_req, our_req in zip(by_sdk, ours, strict=True):
        assert (our_req.method, our_req.path, our_req.auth_user, our_req.status) == (
            sdk_req.method, sdk_req.path, sdk_req.auth_user, sdk_req.status
        )  # fmt: skip
        assert our_req.form == sdk_req.form and list(our_req.form) == list(sdk_req.form)
    assert headers == [("application/x-www-form-urlencoded", "application/json")] * 6


async def test_hang_up_and_redirect_forms():
    async with stand_in() as (emulator, control, base):
        assert await control.redirect(CALL, "https://agent.example.com/twilio/transfer") is True
        assert await control.hang_up(CALL) is True
        assert emulator.calls[CALL].status == "completed"
        async with httpx.AsyncClient() as http:
            recorded = (await http.get(base + "/_emulator/requests")).json()
    assert [r["form"] for r in recorded] == [
        {"Url": "https://agent.example.com/twilio/transfer", "Method": "POST"},
        {"Status": "completed"},
    ]
    assert all(r["status"] == 200 and r["path"] == CALL_PATH for r in recorded)


async def test_call_gone_returns_false_with_a_log_line(caplog):
    async with stand_in() as (emulator, control, _):
        emulator.gone(CALL)
        with caplog.at_level(logging.INFO, logger="voxroute.telephony.call_control"):
            assert await control.hang_up(CALL) is False
            assert await control.update_twiml(CALL, transfer_twiml(HUMAN)) is False
    assert [r.status for r in emulator.requests] == [404, 404]  # 20404 is not retried
    assert "already ended" in caplog.text and "20404" in caplog.text


async def test_transfer_after_hang_up_is_call_gone():
    async with stand_in() as (emulator, control, _):
        assert await control.hang_up(CALL) is True
        assert await control.transfer(CALL, HUMAN, None) is False  # 400 code 21220
    assert [r.status for r in emulator.requests] == [200, 400]


async def test_retries_on_500_then_succeeds():
    async with stand_in(attempts=3) as (emulator, control, _):
        emulator.fail_next(2)
        assert await control.hang_up(CALL) is True
    assert [r.status for r in emulator.requests] == [500, 500, 200]
    assert all(r.form == {"Status": "completed"} for r in emulator.requests)


async def test_retries_exhausted_raise(caplog):
    async with stand_in(attempts=2) as (emulator, control, _):
        emulator.fail_next(5)
        with caplog.at_level(logging.WARNING, logger="voxroute.telephony.call_control"):
            with pytest.raises(CallControlError) as info:
                await control.hang_up(CALL)
    assert (info.value.status, info.value.code, info.value.call_sid) == (500, 20500, CALL)
    assert len(emulator.requests) == 2
    assert "after 2 attempts" in caplog.text


async def test_bad_credentials_raise_without_retry():
    async with stand_in(auth_token="wrong" * 6) as (emulator, control, _):
        with pytest.raises(CallControlError) as info:
            await control.hang_up(CALL)
    assert (info.value.status, info.value.code) == (401, 20003)
    assert [r.status for r in emulator.requests] == [401]


async def test_bad_twiml_is_a_400_not_retried():
    async with stand_in() as (emulator, control, _):
        with pytest.raises(CallControlError) as info:
            await control.update_twiml(CALL, "<Response><Dial>")
    assert (info.value.status, info.value.code) == (400, 12100)
    assert len(emulator.requests) == 1


async def test_timeout_is_retried():
    # the hung request ends when the client gives up; the bound is generous for a busy machine
    async with stand_in(timeout_s=0.75, attempts=4) as (emulator, control, _):
        emulator.hang_next(1, 30.0)
        assert await control.hang_up(CALL) is True
    assert len(emulator.requests) >= 2 and emulator.requests[-1].status == 200
    assert emulator.requests[0].form == emulator.requests[-1].form == {"Status": "completed"}


async def test_bad_call_sid_never_reaches_the_wire():
    async with stand_in() as (emulator, control, _):
        for sid in ("CA../../Accounts", "", "XX" + "0" * 32):
            with pytest.raises(CallControlError):
                await control.hang_up(sid)
    assert emulator.requests == []


async def test_connection_refused_raises():
    port = free_port()  # a port that nothing listens on
    async with TwilioCallControl(
        ACCOUNT, TOKEN, api_base_url=f"http://127.0.0.1:{port}", attempts=2, backoff_s=0.01
    ) as control:
        with pytest.raises(CallControlError) as info:
            await control.hang_up(CALL)
    assert info.value.status is None


async def test_stand_in_rejects_garbage_without_crashing():
    emulator = TwilioRestEmulator(ACCOUNT, TOKEN)
    async with serve_app(emulator.app) as base:
        async with httpx.AsyncClient(base_url=base, auth=(ACCOUNT, TOKEN)) as http:
            bad = await http.post(CALL_PATH, content=b"\xff\xfe=%%%", headers={"Content-Type": "x"})
            assert bad.status_code == 400 and bad.json()["code"] == 20001
            unauth = await http.post(CALL_PATH, data={"Status": "completed"}, auth=(ACCOUNT, "nope"))
            assert unauth.status_code == 401
            assert unauth.json() == {
                "code": 20003,
                "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401,
            }
            other = await http.post(CALL_PATH.replace(ACCOUNT, "AC" + "9" * 32), data={"Status": "completed"})
            assert other.status_code == 401
            fetched = await http.get(CALL_PATH)
            assert fetched.status_code == 200
            assert fetched.json()["sid"] == CALL and fetched.json()["status"] == "in-progress"
            assert (await http.post("/_emulator/fail", json={"count": "x"})).status_code == 400
            assert (await http.post("/_emulator/fail", json={"count": 1})).status_code == 200
            assert (await http.post(CALL_PATH, data={"Status": "completed"})).status_code == 500
            assert (await http.post(f"/_emulator/gone/{CALL}")).status_code == 200
            gone = await http.post(CALL_PATH, data={"Status": "completed"})
            assert gone.status_code == 404 and gone.json()["code"] == 20404
