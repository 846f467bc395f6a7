"""Whole calls over SIP/RTP through the runtime: the fake SIP carrier (emulators/sip_carrier.py)
dials fixtures into ``sip_edge`` (the UA ``voxroute serve --sip`` runs), on 127.0.0.1."""

from __future__ import annotations

from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.emulators.sip_carrier import dial as dial_sip
from voxroute.replay import local_stack, replay_fixture
from voxroute.telephony.carrier_control import CarrierTransfers
from voxroute.telephony.sip.service import sip_edge
from voxroute.telephony.sip.transport import SipTransfers


def first_items(name: str, n: int):
    fixture = load(name)
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:n]})
    return fixture


async def test_the_same_fixture_gives_the_same_turns_over_twilio_and_sip() -> None:
    fixture = first_items("order_status", 1)
    cfg = load_config()
    async with local_stack("reference", 0, [fixture], cfg, sip=True) as stack:
        twilio = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg)
        # local_stack(sip=True) runs the SIP edge beside the HTTP server, as `replay --carrier sip` does
        result = await replay_fixture(fixture, stack.server_url, config=cfg, carrier="sip")
        call = stack.services.call_json(result["call_sid"])
    assert twilio["ended"] == "completed", twilio.get("error")
    sip = result["carrier"]
    assert sip["completed"] and not sip["errors"] and sip["closed_by"] == "carrier"
    assert call is not None and call["carrier"] == "sip" and call["ended"] == "completed"
    sip_turns = call["turns"]
    assert [t["transcript"] for t in sip_turns] == [t["transcript"] for t in twilio["turns"]]
    assert [t["route"]["class"] for t in sip_turns] == [t["route"]["class"] for t in twilio["turns"]]
    assert all(t["within_budget"] for t in sip_turns), [t["first_audio_ms"] for t in sip_turns]
    assert sip["agent_audio_ms"] > 2000  # the caller heard the replies


async def test_keying_zero_transfers_a_sip_call_by_refer() -> None:
    fixture = load("dtmf_entry")
    items = fixture.script.utterances
    keyed = next(u for u in items if u.dtmf)
    fixture.script = fixture.script.model_copy(
        update={"utterances": [items[0], keyed.model_copy(update={"dtmf": "0#"})]}
    )
    cfg = load_config()
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        controls = stack.services.call_control
        assert isinstance(controls, CarrierTransfers) and "sip" not in controls.controls
        async with sip_edge(stack.services, sip="127.0.0.1:0") as edge:
            # the edge mounts its REFER transfers for SIP calls; the carriers' controls stay
            assert isinstance(controls.controls["sip"], SipTransfers) and "twilio" in controls.controls
            assert edge.sip_url is not None
            result = await dial_sip(fixture, edge.sip_url)
        assert stack.services.call_control is controls and "sip" not in controls.controls
        call = stack.services.call_json(result.call_sid)
        twilio_requests = list(stack.emulators.twilio.for_call(result.call_sid))
    assert call is not None and call["ended"] == "handoff", call and call.get("error")
    assert call["handoff"]["transferred"] is True  # the carrier's NOTIFY said 200
    assert result.closed_by == "server"  # the agent's BYE after the transfer
    assert twilio_requests == []  # a SIP call never goes to Twilio's REST API
