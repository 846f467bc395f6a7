"""Transfers to a person on Plivo, Telnyx and Exotel calls: each carrier's own call control
(telephony/carrier_control.py) against the stand-ins (emulators/carrier_rest.py) on 127.0.0.1,
and whole calls where the caller keys 0 for a person."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.test_carriers_replay import SECRETS, carrier_secrets_in_env  # noqa: F401  (a fixture)
from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.emulators.carrier_rest import (
    EMULATED_PLIVO_AUTH_ID,
    EMULATED_PLIVO_AUTH_TOKEN,
    EMULATED_TELNYX_API_KEY,
    CarrierRestEmulator,
)
from voxroute.replay import local_stack, replay_fixture
from voxroute.server import serve_app
from voxroute.telephony.call_control import CallControlError
from voxroute.telephony.carrier_control import (
    CarrierTransfers,
    ExotelHandback,
    PlivoCallControl,
    TelnyxCallControl,
    transfer_xml,
)

QUEUE = "+918000000999"
CALLER_ID = "+918000000000"


def test_transfer_xml_dials_the_queue_after_speaking():
    root = ET.fromstring(transfer_xml(QUEUE, CALLER_ID, "Connecting you now.", timeout_s=25))
    assert root.tag == "Response"
    speak, dial = list(root)
    assert speak.tag == "Speak" and speak.text == "Connecting you now."
    assert dial.tag == "Dial" and dial.get("callerId") == "918000000000" and dial.get("timeout") == "25"
    assert [(n.tag, n.text) for n in dial] == [("Number", "918000000999")]
    sip = ET.fromstring(transfer_xml("sip:desk@pbx.example.com"))
    assert [(n.tag, n.text) for n in sip.find("Dial")] == [("User", "sip:desk@pbx.example.com")]
    for bad in ("8000000999", "desk", "sip:nobody", "+91 800"):
        with pytest.raises(ValueError, match="transfer target"):
            transfer_xml(bad)
    with pytest.raises(ValueError, match="callerId"):
        transfer_xml(QUEUE, "12345")


async def test_plivo_transfer_asks_plivo_then_hands_its_fetch_the_dial():
    emu = CarrierRestEmulator()
    async with serve_app(emu.app) as api:
        control = PlivoCallControl(
            EMULATED_PLIVO_AUTH_ID, EMULATED_PLIVO_AUTH_TOKEN, "https://voice.example.com", api_base_url=api
        )
        try:
            assert await control.transfer("uuid-1", QUEUE, CALLER_ID, "One moment.") is True
            (req,) = emu.for_call("uuid-1")
            assert (req.method, req.status) == ("POST", 202)
            assert req.path == f"/v1/Account/{EMULATED_PLIVO_AUTH_ID}/Call/uuid-1/"
            assert req.body == {
                "legs": "aleg",
                "aleg_url": "https://voice.example.com/plivo/transfer/uuid-1",
                "aleg_method": "POST",
            }
            xml = control.pending("uuid-1")
            assert xml is not None and "<Number>918000000999</Number>" in xml and "One moment." in xml
            assert control.pending("uuid-1") is None  # handed out once

            emu.gone("uuid-2")
            assert await control.transfer("uuid-2", QUEUE, None) is False  # 404: the call had ended
            assert control.pending("uuid-2") is None

            emu.fail_next(3)
            with pytest.raises(CallControlError, match="HTTP 500"):
                await control.transfer("uuid-3", QUEUE, None)
            assert [r.status for r in emu.for_call("uuid-3")] == [500, 500, 500]  # retried

            assert await control.hang_up("uuid-4") is True
            assert emu.for_call("uuid-4")[-1].status == 204
        finally:
            await control.aclose()
        wrong = PlivoCallControl(
            EMULATED_PLIVO_AUTH_ID, "not-the-token", "https://x.example", api_base_url=api
        )
        try:
            with pytest.raises(CallControlError, match="HTTP 401"):
                await wrong.transfer("uuid-5", QUEUE, None)
            assert wrong.pending("uuid-5") is None
        finally:
            await wrong.aclose()


async def test_telnyx_transfer_is_a_call_control_command():
    emu = CarrierRestEmulator()
    async with serve_app(emu.app) as api:
        control = TelnyxCallControl(EMULATED_TELNYX_API_KEY, api_base_url=api)
        try:
            assert await control.transfer("v3:abc", QUEUE, CALLER_ID) is True
            (req,) = emu.for_call("v3:abc")
            assert req.path == "/v2/calls/v3:abc/actions/transfer" and req.status == 200
            assert req.body == {"to": QUEUE, "from": CALLER_ID}
            assert await control.transfer("v3:abc", QUEUE, None) is False  # 422 90018: already ended
            assert await control.hang_up("v3:abc") is False
            assert await control.hang_up("v3:def") is True
        finally:
            await control.aclose()
        wrong = TelnyxCallControl("KEY-wrong", api_base_url=api)
        try:
            with pytest.raises(CallControlError, match="HTTP 401"):
                await wrong.transfer("v3:ghi", QUEUE, None)
        finally:
            await wrong.aclose()


async def test_the_dispatcher_sends_each_call_to_its_carrier():
    carriers = {"c-exotel": "exotel", "c-plivo": "plivo"}
    transfers = CarrierTransfers({"exotel": ExotelHandback()}, carriers.get)
    assert transfers.can_transfer("c-exotel") and not transfers.can_transfer("c-plivo")
    assert not transfers.can_transfer("unknown")  # default twilio: not configured here
    assert await transfers.transfer("c-exotel", QUEUE, None) is True
    with pytest.raises(CallControlError, match="no call control configured for plivo"):
        await transfers.transfer("c-plivo", QUEUE, None)


def keyed_zero():
    """The DTMF fixture cut to its first answer and a 0 for a person."""
    fixture = load("dtmf_entry")
    items = fixture.script.utterances
    keyed = next(u for u in items if u.dtmf)
    fixture.script = fixture.script.model_copy(
        update={"utterances": [items[0], keyed.model_copy(update={"dtmf": "0#"})]}
    )
    return fixture


@pytest.mark.parametrize("carrier", ["plivo", "telnyx", "exotel"])
async def test_keying_zero_transfers_through_the_calls_own_carrier(carrier, carrier_secrets_in_env):  # noqa: F811
    fixture = keyed_zero()
    cfg = load_config()
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        call = await replay_fixture(
            fixture, stack.server_url, speed=2.0, config=cfg, carrier=carrier, carrier_secrets=SECRETS
        )
        rest = stack.emulators.carrier_rest
        await rest.settle()
        sid = call["call_sid"]
        requests, fetched = rest.for_call(sid), [f for f in rest.fetched if f.call_uuid == sid]
        twilio_requests = stack.emulators.twilio.for_call(sid)
    assert call["ended"] == "handoff", call.get("error")
    assert call["handoff"]["transferred"] is True
    assert call["handoff"]["to"] == QUEUE
    assert twilio_requests == []  # never Twilio's REST API for another carrier's call
    if carrier == "plivo":
        (req,) = requests
        assert req.action == "transfer" and req.status == 202
        (got,) = fetched  # Plivo fetched aleg_url, signed, and got the Dial
        assert got.status == 200, got.xml
        dial = ET.fromstring(got.xml).find("Dial")
        assert dial is not None and [n.text for n in dial] == [QUEUE.lstrip("+")]
    elif carrier == "telnyx":
        (req,) = requests
        assert (req.action, req.status) == ("transfer", 200)
        assert req.body["to"] == QUEUE and req.path == f"/v2/calls/{sid}/actions/transfer"
    else:
        assert requests == []  # Exotel: the stream closes, the flow's next applet connects the person
    assert call["carrier"]["closed_by"] == "server"
