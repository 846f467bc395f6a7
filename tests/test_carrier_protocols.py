"""Exotel, Plivo and Telnyx media streams: the sans-I/O codecs (every message, both directions,
native encodings), fuzzing (malformed input is a CarrierProtocolError, never another exception),
and the FastAPI routes over real sockets: set-up answers, signature/token checks, and bad input
closing only its own call."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.streamedge import STREAM_SERVERS, serve_edge, ws_url
from voxroute.agent.link import CallEnded, InboundAudio, InboundDtmf, MarkEcho
from voxroute.audio import InboundFramer, Reframer, pcm16_to_ulaw, ulaw_to_pcm16
from voxroute.emulators.carriers import sign_telnyx
from voxroute.telephony import plivo, telnyx
from voxroute.telephony.app import TelephonySettings, create_app
from voxroute.telephony.carriers import CarrierSettings
from voxroute.telephony.exotel import ExotelPeer, ExotelStream
from voxroute.telephony.mediastream import (
    Audio,
    CarrierError,
    CarrierProtocolError,
    Cleared,
    Connected,
    Dtmf,
    MarkPlayed,
    Stopped,
    StreamStart,
)
from voxroute.telephony.twiml import call_token

EXOTEL_START = (
    '{"event":"start","sequence_number":"1","stream_sid":"a1b2c3","start":{"stream_sid":"a1b2c3",'
    '"call_sid":"c9d8","account_sid":"acct1","from":"+919800000000","to":"+918000000000",'
    '"custom_parameters":{"lead":"77"},"media_format":{"encoding":"audio/x-raw","sample_rate":"8000",'
    '"bit_rate":"16"}}}'
)


def tone(ms: int, rate: int, hz: float = 440.0, amp: int = 8000) -> bytes:
    t = np.arange(ms * rate // 1000) / rate
    return (amp * np.sin(2 * math.pi * hz * t)).astype("<i2").tobytes()


def level(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


# ---------------------------------------------------------------- Exotel


def exotel_started(rate: int = 8000) -> tuple[ExotelStream, ExotelPeer]:
    peer = ExotelPeer(
        "a1b2c3", "c9d8", account_sid="acct1", custom_parameters={"lead": "77"}, sample_rate=rate
    )
    stream = ExotelStream()
    assert stream.feed(peer.connected()) == [Connected(None)]
    [start] = stream.feed(peer.start())
    assert isinstance(start, StreamStart)
    return stream, peer


def test_exotel_reference_messages_parse():
    stream = ExotelStream()
    [start] = stream.feed(EXOTEL_START)
    assert isinstance(start, StreamStart)
    assert (start.call_id, start.stream_id, start.account_id) == ("c9d8", "a1b2c3", "acct1")
    assert (start.from_number, start.to_number) == ("+919800000000", "+918000000000")
    assert dict(start.parameters) == {"lead": "77"}
    assert (start.audio.encoding, start.audio.sample_rate, start.sequence_number) == ("l16le", 8000, 1)
    pcm = tone(100, 8000)  # Exotel sends ~100 ms per message
    msg = {
        "event": "media",
        "sequence_number": "3",
        "stream_sid": "a1b2c3",
        "media": {"chunk": "2", "timestamp": "200", "payload": base64.b64encode(pcm).decode()},
    }
    frames = stream.feed(json.dumps(msg))
    assert [type(f) for f in frames] == [Audio] * 5
    assert [f.timestamp_ms for f in frames] == [200, 220, 240, 260, 280]
    assert b"".join(f.pcm for f in frames) == pcm  # 8 kHz s16le passes through unchanged
    assert all(f.ulaw is None for f in frames)
    dtmf = (
        '{"event":"dtmf","sequence_number":"7","stream_sid":"a1b2c3","dtmf":{"digit":"5","duration":"100"}}'
    )
    assert stream.feed(dtmf) == [Dtmf("5", 100)]
    stop = (
        '{"event":"stop","sequence_number":"90","stream_sid":"a1b2c3",'
        '"stop":{"call_sid":"c9d8","account_sid":"acct1","reason":"callended"}}'
    )
    assert stream.feed(stop) == [Stopped("callended")]
    with pytest.raises(CarrierProtocolError, match="after stop"):
        stream.feed(json.dumps(msg))


def test_exotel_16k_is_resampled_to_20ms_8k_frames():
    stream, peer = exotel_started(16000)
    assert stream.start.audio.sample_rate == 16000
    pcm16k = tone(200, 16000, hz=1000)
    frames = stream.feed(peer.media(pcm16k[:3200])) + stream.feed(peer.media(pcm16k[3200:]))
    assert len(frames) == 10 and all(len(f.pcm) == 320 for f in frames)
    out = b"".join(f.pcm for f in frames)
    assert abs(level(out[640:]) - level(tone(200, 8000, hz=1000))) < 300  # the tone survives at level
    # our answer goes back at 16 kHz: 60 ms at 8 kHz = 1920 bytes at 16 kHz (buffered to >= 3200)
    assert stream.media(tone(60, 8000)) == []
    texts = stream.media(tone(60, 8000))
    assert len(texts) == 1
    kind, native = peer.parse(texts[0])
    assert kind == "media" and len(native) == 3840


def test_exotel_outbound_chunks_are_320_multiples_and_marks_flush():
    stream, peer = exotel_started()
    sent = []
    for _ in range(7):  # 7 x 60 ms = 420 ms = 6720 bytes
        sent += stream.media(tone(60, 8000))
    sizes = [len(peer.parse(t)[1]) for t in sent]
    assert sizes and all(s % 320 == 0 and s >= 3200 for s in sizes)
    texts = stream.mark("t1:end")
    kinds = [peer.parse(t) for t in texts]
    assert kinds[-1] == ("mark", "t1:end")
    flushed = [v for k, v in kinds if k == "media"]
    assert flushed and all(len(v) % 320 == 0 for v in flushed)
    assert sum(sizes) + sum(len(v) for v in flushed) >= 6720  # nothing lost (padding only)
    # the echo comes back as MarkPlayed; a clear flushes pending marks at once
    assert stream.feed(peer.mark("t1:end")) == [MarkPlayed("t1:end")]
    stream.media(tone(60, 8000))
    stream.mark("t2:0")
    assert [peer.parse(t) for t in stream.clear()] == [("clear", None)]
    assert stream.take_flushed() == [MarkPlayed("t2:0", flushed=True)]
    assert stream.take_flushed() == []
    assert stream.feed(peer.mark("t2:0")) == []  # the carrier's late echo is not reported twice
    assert stream.media(tone(20, 8000)) == []  # the clear dropped what was buffered too
    assert [peer.parse(t)[0] for t in stream.mark("t3")] == ["media", "mark"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"event":"media","stream_sid":"a1b2c3","media":{"payload":"AAAA"}}', "before start"),
        ("{not json", "malformed JSON"),
        ("[1,2]", "JSON object"),
        ('{"event":5}', "'event'"),
        ('{"event":"media","stream_sid":"other","media":{"payload":"AAAA"}}', "expected 'a1b2c3'"),
        ('{"event":"media","stream_sid":"a1b2c3","media":{"payload":"%%%"}}', "not valid base64"),
        ('{"event":"media","stream_sid":"a1b2c3","media":{"payload":""}}', "empty"),
        ('{"event":"dtmf","stream_sid":"a1b2c3","dtmf":{"digit":"x"}}', "keypad"),
        ('{"event":"mark","stream_sid":"a1b2c3","mark":{}}', "mark.name"),
        ('{"event":"media","stream_sid":"a1b2c3","media":{"payload":"AAAA","timestamp":"-1"}}', "unsigned"),
        (
            '{"event":"start","start":{"stream_sid":"s","call_sid":"c","media_format":{"bit_rate":"8"}}}',
            "16-bit",
        ),
        (
            '{"event":"start","start":{"stream_sid":"s","call_sid":"c","media_format":{"sample_rate":"11025"}}}',
            "11025",
        ),
    ],
)
def test_exotel_bad_messages_are_clear_errors(text, match):
    stream = ExotelStream()
    if "before start" not in match and '"start"' not in text:
        stream.feed(EXOTEL_START)
    with pytest.raises(CarrierProtocolError, match=match):
        stream.feed(text)


def test_an_odd_length_pcm16_payload_drops_one_byte_and_the_call_goes_on():
    """A stray byte must not end the call nor shift every later sample by a byte."""
    stream = ExotelStream()
    stream.feed(EXOTEL_START)
    pcm = np.arange(1, 201, dtype="<i2").tobytes()  # 200 samples: 1.25 frames

    def media(data: bytes) -> str:
        payload = base64.b64encode(data).decode()
        return json.dumps({"event": "media", "stream_sid": "a1b2c3", "media": {"payload": payload}})

    assert stream.feed(media(pcm[:3])) == []  # 1 sample, then a stray byte
    [first] = stream.feed(media(pcm[4:]))  # the sample the stray byte began is lost, nothing else
    assert first.pcm == pcm[:2] + pcm[4:322]
    assert stream.feed(media(b"\x01")) == [] and not stream.stopped


def test_huge_message_is_refused():
    stream = ExotelStream(max_message_bytes=10_000)
    stream.feed(EXOTEL_START)
    big = json.dumps({"event": "media", "media": {"payload": "A" * 20_000}})
    with pytest.raises(CarrierProtocolError, match="limit"):
        stream.feed(big)
    with pytest.raises(CarrierProtocolError, match="limit"):
        stream.feed(big.encode())


# ---------------------------------------------------------------- Plivo


@pytest.mark.parametrize("content_type", plivo.CONTENT_TYPES)
def test_plivo_every_message_in_each_content_type(content_type):
    fmt = plivo.content_type_format(content_type)
    peer = plivo.PlivoPeer(
        "87654321-aaaa", "call-1", content_type=content_type, extra_headers="tenant=acme,to=9180"
    )
    stream = plivo.PlivoStream()
    start_text = peer.start()
    assert json.loads(start_text)["sequenceNumber"] == 1  # a number, not a string as elsewhere
    [start] = stream.feed(start_text)
    assert (start.call_id, start.stream_id) == ("call-1", "87654321-aaaa")
    assert start.audio == fmt and dict(start.parameters) == {"tenant": "acme", "to": "9180"}
    assert start.to_number == "9180"
    pcm = tone(20, fmt.sample_rate)
    native = pcm16_to_ulaw(pcm) if fmt.encoding == "ulaw" else pcm
    frames = stream.feed(peer.media(native)) + stream.feed(peer.media(native))
    assert [f.timestamp_ms for f in frames] == [0, 20]  # epoch ms made relative to the first media
    assert all(len(f.pcm) == 320 for f in frames)
    assert (frames[0].ulaw == native) if fmt.encoding == "ulaw" else frames[0].ulaw is None
    assert stream.feed(peer.dtmf("#")) == [Dtmf("#")]
    # outbound: playAudio in the stream's own format, checkpoint -> playedStream, clearAudio -> clearedAudio
    [play] = stream.media(tone(60, 8000))
    body = json.loads(play)
    assert body["event"] == "playAudio"
    assert body["media"]["contentType"] == plivo.content_type_of(fmt)
    assert body["media"]["sampleRate"] == fmt.sample_rate
    kind, audio = peer.parse(play)
    assert kind == "media" and len(audio) == 60 * fmt.bytes_per_ms
    [cp] = stream.mark("seg-4")
    assert json.loads(cp) == {"event": "checkpoint", "streamId": "87654321-aaaa", "name": "seg-4"}
    assert stream.feed(peer.played_stream("seg-4")) == [MarkPlayed("seg-4")]
    stream.mark("seg-5")
    [clear] = stream.clear()
    assert json.loads(clear) == {"event": "clearAudio", "streamId": "87654321-aaaa"}
    assert stream.take_flushed() == [MarkPlayed("seg-5", flushed=True)]
    assert stream.feed(peer.cleared_audio()) == [Cleared()]
    assert json.loads(stream.send_dtmf("12#")) == {"event": "sendDTMF", "dtmf": "12#"}
    assert stream.feed('{"event":"somethingNew"}') == []


def test_plivo_answer_xml_and_extra_headers():
    xml = plivo.stream_xml(
        "wss://agent.example.com/plivo/stream",
        content_type="audio/x-l16;rate=16000",
        headers={"callToken": "ab12", "to": "918000000000"},
        status_callback_url="https://agent.example.com/plivo/stream-status",
    )
    stream = ET.fromstring(xml).find("Stream")
    assert stream is not None and stream.text == "wss://agent.example.com/plivo/stream"
    assert stream.get("bidirectional") == "true" and stream.get("audioTrack") == "inbound"
    assert stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-l16;rate=16000"
    assert plivo.parse_extra_headers(stream.get("extraHeaders")) == {
        "callToken": "ab12",
        "to": "918000000000",
    }
    with pytest.raises(ValueError, match="alphanumeric"):
        plivo.extra_headers({"tenant": "a-b"})
    with pytest.raises(ValueError, match="contentType"):
        plivo.stream_xml("wss://x/y", content_type="audio/wav")
    with pytest.raises(CarrierProtocolError, match="key=value"):
        plivo.parse_extra_headers("novalue")


def test_plivo_signature_v3_matches_the_sdk():
    # vectors computed with plivo-python 4.63.0's own plivo/utils/signature_v3.py
    params = {"CallUUID": "abc-123", "From": "919800000001", "To": "918000000000"}
    url = "https://agent.example.com/plivo/answer"
    assert (
        plivo.signature_v3("MYAUTHTOKEN", url, "12345678", params)
        == "b1e/QSC6ZYtGbAtoIEzt3MWC3fpZfdf20ck0hweslPc="
    )
    assert (
        plivo.signature_v3("MYAUTHTOKEN", url + "?b=2&a=1", "nonce9", {"Event": "StartApp"})
        == "lyM3xyfFeeZw+g2COCNK2AjZnvmevjulP/UiS+O5oyM="
    )
    assert plivo.signature_v3("MYAUTHTOKEN", url, "n0", {}) == "i6SlQq3MclL9V8a78GLcsSVgD4Tm70Kp5o0HYmrUBD4="
    good = "b1e/QSC6ZYtGbAtoIEzt3MWC3fpZfdf20ck0hweslPc="
    assert plivo.validate_signature_v3("MYAUTHTOKEN", url, "12345678", "other," + good, params)
    assert not plivo.validate_signature_v3("MYAUTHTOKEN", url, "12345679", good, params)
    assert not plivo.validate_signature_v3("MYAUTHTOKEN", url, None, good, params)


# ---------------------------------------------------------------- Telnyx


def telnyx_started(codec: str = "PCMU", rate: int = 8000, window: int = 5):
    peer = telnyx.TelnyxPeer(
        "32DE0DEA", "v3:abc", custom_parameters={"call_token": "t"}, codec=codec, sample_rate=rate
    )
    stream = telnyx.TelnyxStream(reorder_window=window)
    assert stream.feed(peer.connected()) == [Connected("1.0.0")]
    [start] = stream.feed(peer.start())
    return stream, peer, start


def test_telnyx_every_message():
    stream, peer, start = telnyx_started()
    assert (start.call_id, start.stream_id, start.audio.encoding) == ("v3:abc", "32DE0DEA", "ulaw")
    assert start.parameters["call_token"] == "t"
    ulaw = pcm16_to_ulaw(tone(20, 8000))
    [frame] = stream.feed(peer.media(ulaw))
    assert frame.ulaw == ulaw and len(frame.pcm) == 320
    assert stream.feed(peer.dtmf("9")) == [Dtmf("9")]
    [err] = stream.feed(peer.error(100003, "Malformed frame", "media payload not base64"))
    assert isinstance(err, CarrierError) and err.code == "100003" and "Malformed" in err.detail
    assert json.loads(stream.mark("seg-1")[0]) == {"event": "mark", "mark": {"name": "seg-1"}}
    assert stream.feed(peer.mark("seg-1")) == [MarkPlayed("seg-1")]
    [media] = stream.media(tone(20, 8000))
    assert json.loads(media) == {"event": "media", "media": {"payload": base64.b64encode(ulaw).decode()}}
    assert stream.clear() == ['{"event":"clear"}']
    assert stream.feed(peer.stop()) == [Stopped(None)]


def test_telnyx_outbound_chunks_hold_at_least_20ms():
    stream, peer, _ = telnyx_started()
    assert stream.media(tone(10, 8000)) == []  # under 20 ms: held
    [media] = stream.media(tone(30, 8000))
    assert peer.parse(media) == ("media", pcm16_to_ulaw(tone(10, 8000) + tone(30, 8000)))
    stream.media(tone(6, 8000))
    flushed, mark = (peer.parse(t) for t in stream.mark("seg-9"))
    assert mark == ("mark", "seg-9")
    assert flushed[0] == "media" and len(flushed[1]) == 160 and flushed[1].endswith(b"\xff" * 112)
    with pytest.raises(CarrierProtocolError, match="20 ms to 30 s"):
        peer.parse('{"event":"media","media":{"payload":"' + base64.b64encode(b"\xff" * 80).decode() + '"}}')


def test_telnyx_reorders_by_sequence_number_and_skips_lasting_gaps():
    stream, peer, _ = telnyx_started(window=3)
    frames = [pcm16_to_ulaw(bytes([i]) * 320) for i in range(1, 9)]
    texts = [peer.media(f) for f in frames]  # sequence numbers 2..9
    got = []
    for i in (0, 2, 1, 3):  # 2, 4, 3, 5: the late 3 is put back in place
        got += stream.feed(texts[i])
    assert [g.ulaw for g in got] == frames[:4]
    assert stream.reordered == 1
    assert stream.feed(texts[1]) == [] and stream.late == 1  # a duplicate is dropped
    # 7 is lost: 8, 9 and one more are held, then the gap is given up on
    got = stream.feed(texts[5]) + stream.feed(texts[6]) + stream.feed(texts[7])
    assert [g.ulaw for g in got] == []
    got = stream.feed(peer.media(frames[0]))  # seq 10: the window overflows
    assert [g.ulaw for g in got] == [frames[5], frames[6], frames[7], frames[0]]
    assert stream.skipped == 1


def test_telnyx_l16_is_network_byte_order_and_pcma_decodes():
    stream, peer, start = telnyx_started("L16", 16000)
    assert start.audio.encoding == "l16be"
    pcm = tone(20, 16000, hz=500)
    big_endian = np.frombuffer(pcm, "<i2").astype(">i2").tobytes()
    [frame] = stream.feed(peer.media(big_endian))
    assert abs(level(frame.pcm) - level(tone(20, 8000, hz=500))) < 800
    stream, peer, start = telnyx_started("PCMA")
    assert start.audio.encoding == "alaw"
    with pytest.raises(CarrierProtocolError, match="codec"):
        telnyx.TelnyxStream().feed(
            '{"event":"start","sequence_number":"1","stream_id":"s","start":{"call_control_id":"c",'
            '"media_format":{"encoding":"OPUS","sample_rate":48000,"channels":1}}}'
        )


def test_telnyx_texml_and_webhook_signature():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    texml = telnyx.connect_stream_texml("wss://a.example/telnyx/stream", {"call_token": "x"})
    stream = ET.fromstring(texml).find("Connect/Stream")
    assert stream is not None and stream.get("bidirectionalMode") == "rtp"
    assert stream.get("bidirectionalCodec") == "PCMU" and stream.get("url") == "wss://a.example/telnyx/stream"
    assert [(p.get("name"), p.get("value")) for p in stream.iter("Parameter")] == [("call_token", "x")]
    seed = bytes(range(32))
    public = (
        Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    body = b"CallSid=v3%3Aabc&From=%2B1"
    headers = sign_telnyx(seed, body, timestamp=1_700_000_000)
    sig, ts = headers[telnyx.SIGNATURE_HEADER], headers[telnyx.TIMESTAMP_HEADER]
    assert telnyx.verify_webhook(public, body, sig, ts, now=1_700_000_010) is None
    assert (
        telnyx.verify_webhook(public, body + b"x", sig, ts, now=1_700_000_010) == "signature does not verify"
    )
    assert "away from now" in telnyx.verify_webhook(public, body, sig, ts, now=1_700_001_000)
    assert telnyx.verify_webhook(public, body, "###", ts, now=1_700_000_010) == "signature does not verify"
    assert telnyx.verify_webhook(public, body, None, ts) == "missing signature or timestamp header"


# ---------------------------------------------------------------- fuzz: never anything but CarrierProtocolError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
EVENTS = st.sampled_from(
    [
        "connected",
        "start",
        "media",
        "dtmf",
        "mark",
        "stop",
        "playedStream",
        "clearedAudio",
        "error",
        "clear",
        "x",
    ]
)
FIELDS = st.sampled_from(
    [
        "event",
        "media",
        "payload",
        "start",
        "stop",
        "dtmf",
        "mark",
        "name",
        "digit",
        "stream_sid",
        "streamId",
        "stream_id",
        "sequence_number",
        "sequenceNumber",
        "timestamp",
        "chunk",
        "track",
        "media_format",
        "mediaFormat",
        "sample_rate",
        "sampleRate",
        "encoding",
        "call_sid",
        "callId",
        "call_control_id",
        "custom_parameters",
        "extra_headers",
        "payload",
    ]
)
MESSAGE = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(
        lambda ev, extra: json.dumps({"event": ev, **extra}),
        EVENTS,
        st.dictionaries(FIELDS, JSON, max_size=6),
    ),
)


def _started_codecs():
    exo = ExotelStream()
    exo.feed(EXOTEL_START)
    pl = plivo.PlivoStream()
    pl.feed(plivo.PlivoPeer("s1", "c1").start())
    tx, _, _ = telnyx_started()
    return [ExotelStream(), exo, plivo.PlivoStream(), pl, telnyx.TelnyxStream(), tx]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGE, min_size=1, max_size=6))
def test_fuzz_codecs_raise_only_protocol_errors(messages):
    for codec in _started_codecs():
        for text in messages:
            try:
                events = codec.feed(text)
            except CarrierProtocolError as exc:
                assert str(exc)  # a clear message, never empty
                continue
            assert isinstance(events, list)
            for ev in events:
                if isinstance(ev, Audio):
                    assert len(ev.pcm) == 320


# ---------------------------------------------------------------- routes over real sockets

EXOTEL_CREDS = "KEY1:TOKEN1"
PLIVO_TOKEN = "PLIVOTOKEN123"
TELNYX_SEED = bytes(range(1, 33))
TELNYX_SECRET = "telnyx-stream-secret"


def _telnyx_public() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(TELNYX_SEED).public_key()
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@pytest.fixture(params=STREAM_SERVERS)
async def edge(request):
    """The telephony app with every carrier's check on; on_call echoes DTMF as a mark and audio back.
    Its streams are served on the ASGI port and (second run) on the websockets media server."""
    calls: list[dict] = []

    async def on_call(link) -> None:
        record = {"start": link.start, "events": []}
        calls.append(record)
        async for ev in link.events():
            record["events"].append(ev)
            if isinstance(ev, InboundDtmf):
                await link.send_audio(tone(60, 8000))
                await link.send_mark(f"dtmf-{ev.digit}")
            if isinstance(ev, CallEnded):
                break

    settings_ = TelephonySettings(
        public_base_url="https://agent.example.com", carriers=("exotel", "plivo", "telnyx")
    )
    carriers = CarrierSettings(
        exotel_credentials=EXOTEL_CREDS,
        plivo_auth_token=PLIVO_TOKEN,
        telnyx_public_key=_telnyx_public(),
        telnyx_stream_secret=TELNYX_SECRET,
    )
    app = create_app(
        settings_,
        on_call,
        tenant_for_number=lambda n: "acme" if n.endswith("2222") else None,
        carriers=carriers,
    )
    async with serve_edge(app, request.param) as url:
        yield url, calls


def _basic(creds: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}


async def test_exotel_routes_basic_auth_and_bad_input_closes_only_that_call(edge, caplog):
    url, calls = edge
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/exotel/voicebot", params={"CallSid": "c1"})).status_code == 403
        r = await http.get(
            "/exotel/voicebot",
            params={"CallSid": "c1", "CallTo": "+15550002222"},
            headers=_basic(EXOTEL_CREDS),
        )
        assert r.status_code == 200
        stream_url = r.json()["url"]
        assert stream_url.startswith("wss://KEY1:TOKEN1@agent.example.com/exotel/stream?")
        assert "sample-rate=8000" in stream_url and "tenant=acme" in stream_url
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(url) + "/exotel/stream", additional_headers=_basic("KEY1:WRONG")):
            pass
    assert refused.value.response.status_code == 403
    good = connect(ws_url(url) + "/exotel/stream", additional_headers=_basic(EXOTEL_CREDS))
    bad = connect(ws_url(url) + "/exotel/stream", additional_headers=_basic(EXOTEL_CREDS))
    async with good as ws_good, bad as ws_bad:
        p_good = ExotelPeer("s-good", "call-good", custom_parameters={"tenant": "t1"})
        p_bad = ExotelPeer("s-bad", "call-bad")
        for ws, peer in ((ws_good, p_good), (ws_bad, p_bad)):
            await ws.send(peer.connected())
            await ws.send(peer.start())
        await ws_bad.send('{"event":"media","stream_sid":"s-bad","media":{"payload":"!!notbase64"}}')
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws_bad.recv(), 5)
        assert closed.value.rcvd.code == 1008
        await ws_good.send(p_good.media(tone(100, 8000)))
        await ws_good.send(p_good.dtmf("7"))
        got = [p_good.parse(await asyncio.wait_for(ws_good.recv(), 5)) for _ in range(2)]
        assert got[0][0] == "media" and got[1] == ("mark", "dtmf-7")  # the mark flushed the short chunk
        await ws_good.send(p_good.stop())
    await asyncio.sleep(0.2)
    by_call = {c["start"].call_sid: c for c in calls}
    good_call = by_call["call-good"]
    assert good_call["start"].carrier == "exotel" and good_call["start"].tenant == "t1"
    kinds = [type(e) for e in good_call["events"]]
    assert kinds.count(InboundAudio) == 5 and InboundDtmf in kinds and kinds[-1] is CallEnded
    assert good_call["events"][-1].reason == "stop"
    assert by_call["call-bad"]["events"][-1] == CallEnded("error")
    assert "exotel call call-bad: protocol error, closing the stream (1008)" in caplog.text
    assert "not valid base64" in caplog.text


async def test_plivo_answer_signature_and_call_token(edge):
    url, calls = edge
    form = {"CallUUID": "uuid-1", "From": "15550001111", "To": "15550002222"}
    public = "https://agent.example.com/plivo/answer"
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/plivo/answer", data=form)).status_code == 403
        bad = {
            plivo.NONCE_HEADER: "n1",
            plivo.SIGNATURE_HEADER: plivo.signature_v3("WRONG", public, "n1", form),
        }
        assert (await http.post("/plivo/answer", data=form, headers=bad)).status_code == 403
        good = {
            plivo.NONCE_HEADER: "n1",
            plivo.SIGNATURE_HEADER: plivo.signature_v3(PLIVO_TOKEN, public, "n1", form),
        }
        r = await http.post("/plivo/answer", data=form, headers=good)
        assert r.status_code == 200
        stream = ET.fromstring(r.text).find("Stream")
        assert stream is not None and stream.text == "wss://agent.example.com/plivo/stream"
        headers = plivo.parse_extra_headers(stream.get("extraHeaders"))
        assert headers == {
            "from": "15550001111",
            "to": "15550002222",
            "tenant": "acme",
            "callToken": call_token(PLIVO_TOKEN, "uuid-1"),
        }
        status_form = {"CallUUID": "uuid-1", "Event": "StopStream"}
        status_url = "https://agent.example.com/plivo/stream-status"
        sig = {
            plivo.NONCE_HEADER: "n2",
            plivo.SIGNATURE_HEADER: plivo.signature_v3(PLIVO_TOKEN, status_url, "n2", status_form),
        }
        assert (await http.post("/plivo/stream-status", data=status_form, headers=sig)).status_code == 204
    extra = stream.get("extraHeaders")
    # a start with a forged token is closed; the signed one runs, and a clean close is a normal end
    async with connect(ws_url(url) + "/plivo/stream") as ws:
        await ws.send(plivo.PlivoPeer("s1", "uuid-1", extra_headers="callToken=forged").start())
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008
    # a huge message (over the 256 kB limit, under the websocket's 1 MB) ends that call only
    async with connect(ws_url(url) + "/plivo/stream", max_size=None) as ws:
        await ws.send(plivo.PlivoPeer("s-huge", "uuid-1", extra_headers=extra).start())
        await ws.send(
            json.dumps({"event": "media", "streamId": "s-huge", "media": {"payload": "A" * 300_000}})
        )
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008
    peer = plivo.PlivoPeer("s2", "uuid-1", extra_headers=extra)
    async with connect(ws_url(url) + "/plivo/stream") as ws:
        await ws.send(peer.start())
        await ws.send(peer.media(tone(20, 8000)))
        await ws.send(peer.dtmf("3"))
        kinds = [peer.parse(await asyncio.wait_for(ws.recv(), 5))[0] for _ in range(2)]
        assert kinds == ["media", "mark"]
    await asyncio.sleep(0.2)
    [call] = [c for c in calls if c["start"].stream_sid == "s2"]
    assert call["start"].carrier == "plivo" and call["start"].tenant == "acme"
    assert call["start"].to_number == "15550002222"
    assert call["events"][-1] == CallEnded("stop")


async def test_telnyx_texml_signature_and_call_token(edge):
    url, calls = edge
    body = b"CallSid=v3%3Acall-9&From=%2B15550001111&To=%2B15550002222"
    ctype = {"content-type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/telnyx/texml", content=body, headers=ctype)).status_code == 403
        stale = {**ctype, **sign_telnyx(TELNYX_SEED, body, timestamp=1_000_000_000)}
        assert (await http.post("/telnyx/texml", content=body, headers=stale)).status_code == 403
        r = await http.post(
            "/telnyx/texml", content=body, headers={**ctype, **sign_telnyx(TELNYX_SEED, body)}
        )
        assert r.status_code == 200
    stream = ET.fromstring(r.text).find("Connect/Stream")
    assert stream is not None and stream.get("bidirectionalMode") == "rtp"
    params = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert params["call_token"] == call_token(TELNYX_SECRET, "v3:call-9") and params["tenant"] == "acme"
    async with connect(ws_url(url) + "/telnyx/stream") as ws:
        peer = telnyx.TelnyxPeer("st-1", "v3:call-9", custom_parameters={"call_token": "nope"})
        await ws.send(peer.connected())
        await ws.send(peer.start())
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008
    peer = telnyx.TelnyxPeer("st-2", "v3:call-9", custom_parameters=params)
    async with connect(ws_url(url) + "/telnyx/stream") as ws:
        await ws.send(peer.connected())
        await ws.send(peer.start())
        await ws.send(peer.dtmf("1"))
        await ws.send(peer.media(pcm16_to_ulaw(tone(20, 8000))))
        got = [peer.parse(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
        assert [k for k, _ in got] == ["media", "mark"]
        await ws.send(peer.stop())
    await asyncio.sleep(0.2)
    [call] = [c for c in calls if c["start"].stream_sid == "st-2"]
    assert call["start"].carrier == "telnyx" and call["start"].tenant == "acme"
    kinds = [type(e) for e in call["events"]]
    assert kinds == [InboundDtmf, InboundAudio, CallEnded] and MarkEcho not in kinds
    assert call["events"][-1] == CallEnded("stop")


# ---------------------------------------------------------------- re-framing (any packet size)


@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40, 60, 100])
def test_inbound_framer_cuts_any_packet_size_into_20ms_frames(ptime_ms: int):
    """RTP at 10-60 ms, Exotel's 100 ms: the same exact 20 ms frames, mu-law kept beside the PCM,
    each frame's media time derived from its packet's."""
    framer = InboundFramer("ulaw")
    ulaw = pcm16_to_ulaw((np.sin(np.arange(8 * 600) / 7) * 8000).astype("<i2").tobytes())  # 600 ms
    size = 8 * ptime_ms
    out = []
    for start in range(0, len(ulaw), size):
        out += framer.push(ulaw[start : start + size], timestamp_ms=5000 + start // 8)
    assert len(out) == 30 and all(len(pcm) == 320 and len(u) == 160 for pcm, u, _ in out)
    assert b"".join(u for _, u, _ in out) == ulaw
    assert b"".join(pcm for pcm, _, _ in out) == ulaw_to_pcm16(ulaw)
    assert [ts for _, _, ts in out] == [5000 + 20 * i for i in range(30)]


def test_inbound_framer_resamples_16k_pcm_in_odd_sized_packets():
    framer = InboundFramer("l16le", 16000)
    pcm16k = (np.sin(np.arange(16 * 200) / 5) * 8000).astype("<i2").tobytes()  # 200 ms
    out = []
    for start in range(0, len(pcm16k), 1001):  # not whole samples: the stray bytes are dropped
        out += framer.push(pcm16k[start : start + 1001])
    assert all(len(pcm) == 320 and u is None and ts is None for pcm, u, ts in out)
    assert framer.reframer.stray_bytes > 0 and 7 <= len(out) <= 9  # no call closed, audio goes on


def test_reframer_keeps_the_remainder_and_dates_the_first_frame_from_the_packet():
    r = Reframer(frame_bytes=160, sample_bytes=1, bytes_per_ms=8)
    assert r.feed(bytes(100), 0) == (b"", 0)
    block, first = r.feed(bytes(range(240)), 12.5)  # 100 held = 12.5 ms before this packet
    assert len(block) == 320 and first == 0 and r.pending == 20
    assert r.feed(b"", None) == (b"", None)
