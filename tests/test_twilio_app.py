"""The Twilio edge over real sockets: TwiML, signatures, and media streams reaching ``on_call``.

The app runs under uvicorn on 127.0.0.1; httpx plays Twilio's webhook request, the ``websockets``
client plays Twilio's media stream, and signatures come from the twilio SDK's RequestValidator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.streamedge import STREAM_SERVERS, serve_edge, ws_url
from voxroute.agent.link import CallEnded, CallStart, InboundAudio, InboundDtmf, MarkEcho
from voxroute.audio import MULAW_8K, pcm_to_wire, ulaw_to_pcm16
from voxroute.telephony.admission import CallGate
from voxroute.telephony.app import TelephonySettings, create_app
from voxroute.telephony.carriers import TWILIO_STREAM_PATH as STREAM_PATH
from voxroute.telephony.carriers import TWILIO_VOICE_PATH as VOICE_PATH
from voxroute.telephony.carriers import CarrierSettings
from voxroute.telephony.twilio import TwilioPeer
from voxroute.telephony.twiml import (
    call_token,
    check_call_token,
    connect_stream_twiml,
    public_url,
    public_ws_url,
    validate_signature,
)

TOKEN = "12345678901234567890123456789012"
BASE = "https://agent.example.com"
WSS = "wss://agent.example.com/twilio/stream"
VOICE_FORM = {
    "CallSid": "CA00000000000000000000000000000003",
    "AccountSid": "AC00000000000000000000000000000002",
    "From": "+15550001111",
    "To": "+15550002222",
    "CallStatus": "ringing",
    "Direction": "inbound",
}
STEP = 5.0  # generous bound on each wait: a hang fails the test instead of blocking it


# ---------------------------------------------------------------- TwiML and signatures (no sockets)


def test_signature_test_vectors():
    url = "https://agent.example.com/twilio/voice"
    assert validate_signature(TOKEN, url, VOICE_FORM, "Wu+ejz5EYf7kKnNDvASmOvlqSuY=")
    assert validate_signature(
        TOKEN, "https://agent.example.com:443/twilio/voice", VOICE_FORM, "Wu+ejz5EYf7kKnNDvASmOvlqSuY="
    )
    assert validate_signature(
        TOKEN, "wss://agent.example.com/twilio/media", None, "OgDvxhsS0O3ZsbXzI25k6+P3F/4="
    )
    body_url = "https://agent.example.com/hook?bodySHA256=015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    assert validate_signature(TOKEN, body_url, '{"a":1}', "pBPJOTeqhXGBick70f4Y6rJZx5c=")
    assert not validate_signature(TOKEN, body_url, '{"a":2}', "pBPJOTeqhXGBick70f4Y6rJZx5c=")
    assert not validate_signature(
        TOKEN, url, {**VOICE_FORM, "To": "+15550009999"}, "Wu+ejz5EYf7kKnNDvASmOvlqSuY="
    )
    assert not validate_signature(
        TOKEN, "https://agent.example.com/twilio/media", None, "OgDvxhsS0O3ZsbXzI25k6+P3F/4="
    )
    assert not validate_signature(TOKEN, url, VOICE_FORM, None)
    assert not validate_signature("other-token", url, VOICE_FORM, "Wu+ejz5EYf7kKnNDvASmOvlqSuY=")


def test_sdk_computed_signatures_validate():
    validator = RequestValidator(TOKEN)
    url = public_url(BASE, "/twilio/voice", "x=1")
    assert validate_signature(TOKEN, url, VOICE_FORM, validator.compute_signature(url, VOICE_FORM))
    hmac256 = validator.compute_signature(url, VOICE_FORM, algorithm="HMAC_SHA256")
    settings_header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    assert validate_signature(TOKEN, url, VOICE_FORM, hmac256, signature_settings=settings_header)
    assert not validate_signature(TOKEN, url, VOICE_FORM, hmac256)


def test_public_urls():
    assert public_url(BASE, "/twilio/voice") == "https://agent.example.com/twilio/voice"
    assert public_ws_url(BASE + "/", "/twilio/stream") == WSS
    assert (
        public_ws_url("https://h.example:8443/edge", "twilio/stream")
        == "wss://h.example:8443/edge/twilio/stream"
    )
    assert public_ws_url("http://localhost:8000", "/s", "a=1") == "ws://localhost:8000/s?a=1"
    with pytest.raises(ValueError):
        public_url("agent.example.com", "/x")


def test_connect_stream_twiml():
    xml = connect_stream_twiml(
        "wss://agent.example.com/twilio/media",
        {"tenant": "acme", "call_token": "hmac-of-callsid"},
        action_url="https://agent.example.com/twilio/after-stream",
        status_callback="https://agent.example.com/twilio/stream-status",
    )
    root = ET.fromstring(xml)
    [conn] = root
    assert (root.tag, conn.tag, conn.get("action")) == (
        "Response",
        "Connect",
        "https://agent.example.com/twilio/after-stream",
    )
    [stream] = conn
    assert stream.get("url") == "wss://agent.example.com/twilio/media"
    assert stream.get("statusCallback") == "https://agent.example.com/twilio/stream-status"
    assert [(p.get("name"), p.get("value")) for p in stream] == [
        ("tenant", "acme"),
        ("call_token", "hmac-of-callsid"),
    ]
    with pytest.raises(ValueError):
        connect_stream_twiml("https://agent.example.com/x", {})
    with pytest.raises(ValueError):
        connect_stream_twiml("wss://agent.example.com/x?tenant=a", {})


def test_call_token():
    assert check_call_token(TOKEN, "CA1", call_token(TOKEN, "CA1"))
    assert not check_call_token(TOKEN, "CA2", call_token(TOKEN, "CA1"))
    assert not check_call_token(TOKEN, "CA1", None)
    assert not check_call_token(TOKEN, "CA1", "\udcff\u00e9")
    assert not check_call_token(TOKEN, "CA\ud800", "x")  # a hostile callSid must not raise


def test_settings_reject_a_bad_base():
    with pytest.raises(ValueError):
        TelephonySettings(public_base_url="wss://agent.example.com")
    assert "12345" not in repr(TelephonySettings(public_base_url=BASE, twilio_auth_token=TOKEN))


# ---------------------------------------------------------------- the app over real sockets


class Recorder:
    """A test ``on_call``: records what reaches the core, echoes audio, reacts to keypad digits."""

    def __init__(self) -> None:
        self.starts: dict[str, CallStart] = {}
        self.events: dict[str, list] = {}
        self.finished: dict[str, asyncio.Event] = {}

    def done(self, call_sid: str) -> asyncio.Event:
        return self.finished.setdefault(call_sid, asyncio.Event())

    async def __call__(self, link) -> None:
        sid = link.start.call_sid
        self.starts[sid] = link.start
        seen = self.events.setdefault(sid, [])
        try:
            async for event in link.events():
                seen.append(event)
                match event:
                    case InboundAudio(pcm=pcm):
                        await link.send_audio(pcm_to_wire(pcm, link.audio_format))
                    case InboundDtmf(digit="*"):
                        await link.clear()
                    case InboundDtmf(digit="0"):
                        await link.hangup()
                    case InboundDtmf(digit=digit):
                        await link.send_mark(f"dtmf-{digit}")
                    case MarkEcho(name="boom"):
                        raise RuntimeError("on_call bug")
        finally:
            self.done(sid).set()


def sign(url: str, params=None) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, params or {})}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=STREAM_SERVERS)
def stream_server(request) -> str:
    """Each stream test runs on the ASGI port and on the websockets media server."""
    return request.param


@pytest.fixture
async def server(recorder, stream_server):
    settings = TelephonySettings(public_base_url=BASE, twilio_auth_token=TOKEN, carriers=("twilio",))
    app = create_app(settings, recorder, tenant_for_number={"+15550002222": "acme"}.get)
    async with serve_edge(app, stream_server) as url:
        yield url


@pytest.fixture
async def open_server(recorder, stream_server):
    settings = TelephonySettings(
        public_base_url=BASE,
        default_tenant="walkin",
        start_timeout_s=0.3,
        carriers=("twilio",),
        allow_unsigned=True,
    )
    async with serve_edge(create_app(settings, recorder), stream_server) as url:
        yield url


async def fetch_parameters(http_url: str, form: dict[str, str]) -> dict[str, str]:
    """Do what Twilio does on an incoming call: POST the webhook, read Stream parameters from the TwiML."""
    async with httpx.AsyncClient(base_url=http_url) as client:
        resp = await client.post(VOICE_PATH, data=form, headers=sign(BASE + VOICE_PATH, form))
    assert resp.status_code == 200, resp.text
    stream = ET.fromstring(resp.text).find("Connect/Stream")
    assert stream is not None and stream.get("url") == WSS
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


async def recv_json(ws) -> dict:
    async with asyncio.timeout(STEP):
        return json.loads(await ws.recv())


async def close_code(ws) -> int | None:
    async with asyncio.timeout(STEP):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


def frame(seed: int) -> bytes:
    # mu-law frames avoid 0x7F ("negative zero" decodes to 0 and re-encodes as 0xFF)
    return bytes((seed * 7 + i) % 256 or 1 for i in range(160)).replace(b"\x7f", b"\x7e")


async def test_webhook_returns_twiml_with_stream_and_parameters(server):
    params = await fetch_parameters(server, VOICE_FORM)
    assert params == {
        "call_sid": VOICE_FORM["CallSid"],
        "from": "+15550001111",
        "to": "+15550002222",
        "tenant": "acme",  # from tenant_for_number(To)
        "call_token": call_token(TOKEN, VOICE_FORM["CallSid"]),
    }
    other = await fetch_parameters(server, {**VOICE_FORM, "To": "+15550003333"})
    assert other["tenant"] == "default"


async def test_forged_or_missing_signature_is_403_on_the_webhook(server):
    async with httpx.AsyncClient(base_url=server) as client:
        forged_sig = RequestValidator("not-the-token").compute_signature(BASE + VOICE_PATH, VOICE_FORM)
        forged = await client.post(VOICE_PATH, data=VOICE_FORM, headers={"X-Twilio-Signature": forged_sig})
        missing = await client.post(VOICE_PATH, data=VOICE_FORM)
        # signed for another URL (the app's own local address instead of the public base)
        wrong_url = await client.post(
            VOICE_PATH, data=VOICE_FORM, headers=sign(server + VOICE_PATH, VOICE_FORM)
        )
        garbage = await client.post(VOICE_PATH, content=b"\xff\xfe", headers=sign(BASE + VOICE_PATH))
        health = await client.get("/healthz")
    assert [r.status_code for r in (forged, missing, wrong_url)] == [403, 403, 403]
    assert garbage.status_code == 400
    assert health.json() == {"status": "ok", "active_calls": 0, "draining": False}


FORGED_WS = [
    {"X-Twilio-Signature": RequestValidator("not-the-token").compute_signature(WSS, {})},
    {"X-Twilio-Signature": "OgDvxhsS0O3ZsbXzI25k6+P3F/4="},  # valid, but for /twilio/media
    {},
]


@pytest.mark.parametrize("headers", FORGED_WS)
async def test_forged_signature_is_403_at_the_websocket_handshake(server, headers):
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(STEP), connect(ws_url(server) + STREAM_PATH, additional_headers=headers):
            pass
    assert info.value.response.status_code == 403


async def test_signed_call_reaches_on_call_with_the_right_events(server, recorder):
    params = await fetch_parameters(server, VOICE_FORM)
    call_sid = VOICE_FORM["CallSid"]
    peer = TwilioPeer(
        "MZ00000000000000000000000000000001", call_sid, custom_parameters=params, first_timestamp_ms=52
    )
    frames = [frame(i) for i in range(3)]
    async with connect(ws_url(server) + STREAM_PATH, additional_headers=sign(WSS)) as ws:
        await ws.send(peer.connected())
        await ws.send(peer.start())
        for f in frames:
            await ws.send(peer.media(f))
        for f in frames:  # on_call echoes each frame: one media message per send_audio
            out = await recv_json(ws)
            assert out["event"] == "media" and out["streamSid"] == peer.stream_sid
            assert ulaw_to_pcm16(base64.b64decode(out["media"]["payload"])) == ulaw_to_pcm16(f)
        await ws.send(peer.dtmf("5"))
        assert await recv_json(ws) == {
            "event": "mark",
            "streamSid": peer.stream_sid,
            "mark": {"name": "dtmf-5"},
        }
        await ws.send(peer.mark("dtmf-5"))  # the phone played everything before the mark
        await ws.send(peer.dtmf("*"))
        assert await recv_json(ws) == {"event": "clear", "streamSid": peer.stream_sid}
        await ws.send('{"event":"some_future_event","streamSid":"MZ00000000000000000000000000000001"}')
        await ws.send(peer.stop())
        assert await close_code(ws) == 1000
    async with asyncio.timeout(STEP):
        await recorder.done(call_sid).wait()
    start = recorder.starts[call_sid]
    assert (start.call_sid, start.stream_sid, start.tenant) == (call_sid, peer.stream_sid, "acme")
    assert (start.from_number, start.to_number, start.language) == ("+15550001111", "+15550002222", None)
    assert recorder.events[call_sid] == [
        InboundAudio(ulaw_to_pcm16(frames[0]), 52, frames[0]),
        InboundAudio(ulaw_to_pcm16(frames[1]), 72, frames[1]),
        InboundAudio(ulaw_to_pcm16(frames[2]), 92, frames[2]),
        InboundDtmf("5"),
        MarkEcho("dtmf-5"),
        InboundDtmf("*"),
        CallEnded("stop"),
    ]


async def test_malformed_json_closes_only_that_call(server, recorder):
    async def start_call(n: int):
        form = {**VOICE_FORM, "CallSid": f"CA{n:032d}"}
        params = await fetch_parameters(server, form)
        peer = TwilioPeer(f"MZ{n:032d}", form["CallSid"], custom_parameters=params)
        ws = await connect(ws_url(server) + STREAM_PATH, additional_headers=sign(WSS))
        await ws.send(peer.connected())
        await ws.send(peer.start())
        await ws.send(peer.media(frame(n)))
        assert (await recv_json(ws))["event"] == "media"  # on_call is running for this call
        return peer, ws

    (good, good_ws), (bad, bad_ws) = await start_call(1), await start_call(2)
    async with httpx.AsyncClient(base_url=server) as client:
        assert (await client.get("/healthz")).json()["active_calls"] == 2
        await bad_ws.send('{"event":"media","streamSid":"' + bad.stream_sid + '","media":{"payload":')
        assert await close_code(bad_ws) == 1008
        async with asyncio.timeout(STEP):
            await recorder.done(bad.call_sid).wait()
        assert recorder.events[bad.call_sid][-1] == CallEnded("error")
        # the other call goes on as if nothing happened
        for i in range(5):
            await good_ws.send(good.media(frame(10 + i)))
            out = await recv_json(good_ws)
            assert ulaw_to_pcm16(base64.b64decode(out["media"]["payload"])) == ulaw_to_pcm16(frame(10 + i))
        assert not recorder.done(good.call_sid).is_set()
        assert (await client.get("/healthz")).json()["active_calls"] == 1
        await good_ws.send(good.stop())
        assert await close_code(good_ws) == 1000
        async with asyncio.timeout(STEP):
            await recorder.done(good.call_sid).wait()
        assert recorder.events[good.call_sid][-1] == CallEnded("stop")
        assert len(recorder.events[good.call_sid]) == 7
        for _ in range(500):  # the handler counts the call down just after the socket closed
            if (await client.get("/healthz")).json()["active_calls"] == 0:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/healthz")).json()["active_calls"] == 0


async def test_start_without_a_valid_call_token_is_refused(server, recorder):
    peer = TwilioPeer("MZ1", "CA9", custom_parameters={"call_token": call_token(TOKEN, "CA-other")})
    async with connect(ws_url(server) + STREAM_PATH, additional_headers=sign(WSS)) as ws:
        await ws.send(peer.connected())
        await ws.send(peer.start())
        assert await close_code(ws) == 1008
    assert "CA9" not in recorder.starts


@pytest.mark.parametrize(
    "first",
    [
        "{garbage",
        '{"event":"media","streamSid":"MZ1","media":{"payload":""}}',  # media before start
        '{"event":"start","start":{"streamSid":"MZ1","callSid":"CA1","mediaFormat":{"encoding":"audio/l16","sampleRate":8000,"channels":1}}}',
        "x" * 70000,  # over max_message_bytes
    ],
)
async def test_protocol_errors_before_start_close_with_1008(open_server, recorder, first):
    async with connect(ws_url(open_server) + STREAM_PATH) as ws:
        await ws.send(first)
        assert await close_code(ws) == 1008
    assert recorder.starts == {}


async def test_no_start_in_time_closes_with_1008(open_server, recorder):
    async with connect(ws_url(open_server) + STREAM_PATH) as ws:
        await ws.send(TwilioPeer("MZ1", "CA1").connected())
        assert await close_code(ws) == 1008  # start_timeout_s=0.3
    assert recorder.starts == {}


async def test_unsigned_app_hangup_and_on_call_failure(open_server, recorder):
    async with httpx.AsyncClient(base_url=open_server) as client:
        resp = await client.post(VOICE_PATH, data=VOICE_FORM)
    params = {p.get("name"): p.get("value") for p in ET.fromstring(resp.text).iter("Parameter")}
    assert params["tenant"] == "walkin" and "call_token" not in params

    # hang-up from our side: on_call calls link.hangup(), the socket closes with 1000
    peer = TwilioPeer("MZ1", "CA1", custom_parameters={"language": "hi-IN"})
    async with connect(ws_url(open_server) + STREAM_PATH) as ws:
        await ws.send(peer.connected())
        await ws.send(peer.start())
        await ws.send(peer.dtmf("0"))
        assert await close_code(ws) == 1000
    async with asyncio.timeout(STEP):
        await recorder.done("CA1").wait()
    assert recorder.starts["CA1"].tenant == "walkin" and recorder.starts["CA1"].language == "hi-IN"
    assert recorder.events["CA1"] == [InboundDtmf("0"), CallEnded("closed")]

    # on_call raising closes that call with 1011; the server keeps serving
    peer = TwilioPeer("MZ2", "CA2")
    async with connect(ws_url(open_server) + STREAM_PATH) as ws:
        await ws.send(peer.connected())
        await ws.send(peer.start())
        await ws.send(peer.mark("boom"))
        assert await close_code(ws) == 1011

    # the caller hanging up (socket closed without stop) ends the call as "closed"
    peer = TwilioPeer("MZ3", "CA3")
    async with connect(ws_url(open_server) + STREAM_PATH) as ws:
        await ws.send(peer.connected())
        await ws.send(peer.start())
        await ws.send(peer.media_pcm(bytes(320)))
        await recv_json(ws)
    async with asyncio.timeout(STEP):
        await recorder.done("CA3").wait()
    assert recorder.events["CA3"] == [InboundAudio(bytes(320), 0, b"\xff" * 160), CallEnded("closed")]
    async with httpx.AsyncClient(base_url=open_server) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok", "active_calls": 0, "draining": False}


async def test_send_audio_of_any_length_is_one_media_message_of_the_same_mu_law(stream_server):
    ulaw = bytes(range(256)) * 31 + bytes(64)  # 1 s of mu-law: every code, as the TTS would send it

    async def on_call(link):
        assert link.audio_format == MULAW_8K
        await link.send_audio(ulaw)  # 1 s in one message, as Twilio's own sample does
        await link.send_audio(b"\x01")  # one sample
        await link.send_mark("end")
        async for event in link.events():
            if isinstance(event, CallEnded):
                return

    settings = TelephonySettings(public_base_url=BASE, carriers=("twilio",), allow_unsigned=True)
    async with serve_edge(create_app(settings, on_call), stream_server) as url:
        peer = TwilioPeer("MZ1", "CA1")
        async with connect(ws_url(url) + STREAM_PATH) as ws:
            await ws.send(peer.connected())
            await ws.send(peer.start())
            first, second, mark = [peer.feed(json.dumps(await recv_json(ws)))[0] for _ in range(3)]
            assert first.payload == ulaw and len(first.payload) == 8000  # byte for byte: no re-encode
            assert second.payload == b"\x01"
            assert mark.name == "end"
            await ws.send(peer.stop())
            assert await close_code(ws) == 1000


# ---------------------------------------------------------------- fail closed, bounded


def test_an_enabled_carrier_without_its_secret_is_an_error_unless_unsigned_is_allowed():
    with pytest.raises(ValueError, match="Twilio is enabled but has no auth token"):
        create_app(TelephonySettings(public_base_url=BASE, carriers=("twilio",)), Recorder())
    with pytest.raises(ValueError) as info:
        create_app(
            TelephonySettings(
                public_base_url=BASE, twilio_auth_token=TOKEN, carriers=("twilio", "plivo", "telnyx")
            ),
            Recorder(),
            carriers=CarrierSettings(telnyx_stream_secret="s"),
        )
    assert "plivo_auth_token" in str(info.value) and "telnyx_public_key" in str(info.value)
    assert "telnyx_stream_secret" not in str(info.value)
    create_app(
        TelephonySettings(public_base_url=BASE, carriers=("twilio", "plivo"), allow_unsigned=True), Recorder()
    )
    with pytest.raises(ValueError, match="unknown carrier"):
        TelephonySettings(public_base_url=BASE, carriers=("skype",))


async def test_carriers_that_are_not_enabled_have_no_routes(server):
    async with httpx.AsyncClient(base_url=server) as client:
        for method, path in (
            ("POST", "/plivo/answer"),
            ("POST", "/telnyx/texml"),
            ("GET", "/exotel/voicebot"),
        ):
            assert (
                await client.request(method, path, data={} if method == "POST" else None)
            ).status_code == 404
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(server) + "/plivo/stream"):
            pass
    assert info.value.response.status_code in (403, 404)


async def test_over_the_call_cap_webhooks_answer_busy_and_streams_close_1013(recorder, stream_server):
    gate = CallGate(1)
    settings = TelephonySettings(public_base_url=BASE, carriers=("twilio",), allow_unsigned=True)
    async with (
        serve_edge(create_app(settings, recorder, gate=gate), stream_server) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        first = TwilioPeer("MZ1", "CA1")
        async with connect(ws_url(url) + STREAM_PATH) as ws1:
            await ws1.send(first.connected())
            await ws1.send(first.start())
            await ws1.send(first.media_pcm(bytes(320)))
            await recv_json(ws1)  # echoed: the first call is on
            assert gate.active == 1
            busy = await http.post(VOICE_PATH, data=VOICE_FORM)
            assert busy.status_code == 200
            assert ET.fromstring(busy.text).find("Reject").get("reason") == "busy"
            assert (await http.get("/readyz")).status_code == 503
            second = TwilioPeer("MZ2", "CA2")
            async with connect(ws_url(url) + STREAM_PATH) as ws2:
                await ws2.send(second.connected())
                await ws2.send(second.start())
                assert await close_code(ws2) == 1013
            assert "CA2" not in recorder.starts
            await ws1.send(first.stop())
            assert await close_code(ws1) == 1000
        assert gate.refused[("twilio", "busy")] == 2 and gate.active == 0
        assert (await http.get("/readyz")).json()["ready"] is True
        gate.draining = True  # shutting down: refused whatever the count
        assert (await http.get("/readyz")).json() == {"ready": False, "active_calls": 0, "max_calls": 1,
                                                      "reason": "draining"}  # fmt: skip


async def test_while_draining_new_calls_get_503_so_a_proxy_retries_another_worker(recorder, stream_server):
    """Not the busy answer, which ends the call: 503 on every carrier's set-up and on stream upgrades
    (before they are accepted), so nginx's proxy_next_upstream http_503 tries the next worker."""
    gate = CallGate(5)
    settings = TelephonySettings(public_base_url=BASE, allow_unsigned=True)  # every carrier
    async with (
        serve_edge(create_app(settings, recorder, gate=gate), stream_server) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.post(VOICE_PATH, data=VOICE_FORM)).status_code == 200
        gate.draining = True
        setups = {
            "twilio": await http.post(VOICE_PATH, data=VOICE_FORM),
            "plivo": await http.post("/plivo/answer", data={"CallUUID": "u1", "From": "1", "To": "2"}),
            "telnyx": await http.post("/telnyx/texml", data={"CallSid": "v3:x", "From": "1", "To": "2"}),
            "exotel": await http.get("/exotel/voicebot", params={"CallSid": "e1"}),
        }
        for carrier, answer in setups.items():
            assert answer.status_code == 503, (carrier, answer.text)
            assert "Reject" not in answer.text and "Hangup" not in answer.text
        for path in (STREAM_PATH, "/plivo/stream", "/telnyx/stream", "/exotel/stream"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(ws_url(url) + path):
                    pass
            assert info.value.response.status_code == 503, path
        assert gate.refused[("twilio", "draining")] == 2 and gate.refused[("plivo", "draining")] == 2
        assert recorder.starts == {}


async def test_no_media_for_the_silence_timeout_ends_the_call(recorder, caplog, stream_server):
    settings = TelephonySettings(
        public_base_url=BASE, carriers=("twilio",), allow_unsigned=True, media_silence_timeout_s=0.3
    )
    async with serve_edge(create_app(settings, recorder), stream_server) as url:
        peer = TwilioPeer("MZ1", "CA1")
        async with connect(ws_url(url) + STREAM_PATH) as ws:
            await ws.send(peer.connected())
            await ws.send(peer.start())
            await ws.send(peer.media_pcm(bytes(320)))
            await recv_json(ws)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await close_code(ws) == 1000  # nothing more sent: closed by the server
            assert 0.25 <= loop.time() - started < 2.0
        async with asyncio.timeout(STEP):
            await recorder.done("CA1").wait()
    assert recorder.events["CA1"][-1] == CallEnded("closed")
    assert "no media for 0.3 s" in caplog.text
