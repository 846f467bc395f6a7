"""TwilioStream / TwilioPeer without sockets: a real call's message sequence, errors, fuzzing;
and one call over a real websocket with payloads that are not 20 ms."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from voxroute.agent.link import CallEnded, InboundAudio, InboundDtmf
from voxroute.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voxroute.server import serve_app, ws_url
from voxroute.telephony.app import TelephonySettings, create_app
from voxroute.telephony.mediastream import (
    Audio,
    AudioFormat,
    Connected,
    Dtmf,
    MarkPlayed,
    MediaStreamCodec,
    Stopped,
    StreamStart,
)
from voxroute.telephony.twilio import (
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    TwilioPeer,
    TwilioProtocolError,
    TwilioStream,
)

SID = "MZ00000000000000000000000000000001"
ACCOUNT = "AC00000000000000000000000000000002"
CALL = "CA00000000000000000000000000000003"
FRAME = bytes(range(0, 160))  # 160 mu-law codes: one 20 ms frame
FRAME_B64 = base64.b64encode(FRAME).decode()

# docs/reference/telephony.md §1.5: Twilio's echo sample, a live log (2020), re-typed message by message.
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": SID,
        "start": {
            "streamSid": SID,
            "accountSid": ACCOUNT,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {"tenant": "acme"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)


def media_msg(seq: int, chunk: int, ts: int, payload: str = FRAME_B64) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": SID,
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts), "payload": payload},
        }
    )


def mark_msg(seq: int, name: str) -> str:
    return json.dumps({"event": "mark", "sequenceNumber": str(seq), "streamSid": SID, "mark": {"name": name}})


DTMF = json.dumps(
    {
        "event": "dtmf",
        "sequenceNumber": "57",
        "streamSid": SID,
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
)
STOP = json.dumps(
    {
        "event": "stop",
        "sequenceNumber": "412",
        "streamSid": SID,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
)


def started() -> TwilioStream:
    s = TwilioStream()
    s.feed(CONNECTED)
    s.feed(START)
    return s


def test_twilio_is_a_media_stream_codec_that_leaves_clears_to_twilio():
    """One codec shape for every carrier; Twilio echoes pending marks itself on ``clear``, so the
    codec neither reports them at once nor drops Twilio's echoes (the others' codecs do both)."""
    s = started()
    assert isinstance(s, MediaStreamCodec) and s.carrier == "twilio" and s.echoes_marks_on_clear
    s.mark("a")
    s.clear()
    assert s.take_flushed() == []
    assert s.feed(mark_msg(3, "a")) == [MarkPlayed("a")]


def test_real_call_conformance_sequence():
    s = TwilioStream()
    assert s.feed(CONNECTED) == [Connected("1.0.0")]
    [start] = s.feed(START)
    assert start == StreamStart(
        call_id=CALL,
        stream_id=SID,
        audio=AudioFormat("ulaw", 8000),
        account_id=ACCOUNT,
        parameters={"tenant": "acme"},
        sequence_number=1,
    )
    assert s.stream_sid == SID
    # media from chunk "1", timestamp "52", 216 base64 characters each
    assert len(FRAME_B64) == 216
    [m] = s.feed(media_msg(2, 1, 52))
    assert isinstance(m, Audio) and m.timestamp_ms == 52
    assert m.ulaw == FRAME and m.pcm == ulaw_to_pcm16(FRAME) and len(m.pcm) == 320
    for i in range(2, 51):
        [m] = s.feed(media_msg(i + 1, i, 52 + 20 * (i - 1)))
        assert m.timestamp_ms == 52 + 20 * (i - 1)
    # the server sent 1 s of audio in one message, then a mark; the mark echoed about 1.03 s later
    [text] = s.media(bytes(16000))
    out = json.loads(text)
    assert out["streamSid"] == SID and len(base64.b64decode(out["media"]["payload"])) == 8000
    [text] = s.mark("echo-1")
    assert json.loads(text) == {"event": "mark", "streamSid": SID, "mark": {"name": "echo-1"}}
    assert s.feed(mark_msg(103, "echo-1")) == [MarkPlayed("echo-1")]
    assert s.feed(DTMF) == [Dtmf("5")]
    assert s.feed(STOP) == [Stopped()]
    assert s.stopped


def test_numbers_parse_leniently_as_ints_or_strings():
    s = TwilioStream()
    s.feed(START.replace('"sequenceNumber":"1"', '"sequenceNumber":1').replace("8000", '"8000"'))
    msg = json.loads(media_msg(2, 1, 52))
    msg["sequenceNumber"], msg["media"]["chunk"], msg["media"]["timestamp"] = 2, 1, 52
    [m] = s.feed(json.dumps(msg))
    assert m.timestamp_ms == 52


def test_bytes_input_and_start_without_connected():
    s = TwilioStream()
    [start] = s.feed(START.encode())
    assert start.call_id == CALL


def test_outbound_messages():
    s = started()
    pcm = b"\x10\x00\xf0\xff" * 80
    [text] = s.media(pcm)
    assert json.loads(text) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(pcm16_to_ulaw(pcm)).decode()},
    }
    [text] = s.mark('we"ird\\name')
    assert json.loads(text) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": 'we"ird\\name'},
    }
    [text] = s.clear()
    assert json.loads(text) == {"event": "clear", "streamSid": SID}
    assert json.loads(s.media_ulaw(b"\xff" * 3))["media"]["payload"] == "////"


def test_cannot_send_before_start():
    with pytest.raises(RuntimeError):
        TwilioStream().media(bytes(320))
    with pytest.raises(ValueError):
        started().media(b"\x00")  # odd length is not PCM16


def test_unknown_event_types_are_ignored():
    s = started()
    assert s.feed('{"event":"future_thing","x":{"y":1}}') == []
    assert s.feed('{"event":"future_thing"}') == []
    assert TwilioStream().feed('{"event":"something_before_start"}') == []


def _mutate(base: str, path: tuple, value) -> str:
    msg = json.loads(base)
    d = msg
    for key in path[:-1]:
        d = d[key]
    if value is ...:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return json.dumps(msg)


BAD_AFTER_START = {
    "not json": "{not json",
    "truncated": media_msg(2, 1, 52)[:-3],
    "array": "[1,2,3]",
    "string": '"media"',
    "no event": '{"streamSid":"x"}',
    "event not a string": '{"event":7}',
    "media without body": _mutate(media_msg(2, 1, 52), ("media",), ...),
    "media body not object": _mutate(media_msg(2, 1, 52), ("media",), "abc"),
    "payload missing": _mutate(media_msg(2, 1, 52), ("media", "payload"), ...),
    "payload not base64": media_msg(2, 1, 52, payload="!!!" + FRAME_B64[3:]),
    "payload empty": media_msg(2, 1, 52, payload=""),
    "payload a number": _mutate(media_msg(2, 1, 52), ("media", "payload"), 5),
    "chunk negative": _mutate(media_msg(2, 1, 52), ("media", "chunk"), "-1"),
    "timestamp float": _mutate(media_msg(2, 1, 52), ("media", "timestamp"), 52.5),
    "sequence bool": _mutate(media_msg(2, 1, 52), ("sequenceNumber",), True),
    "sequence huge": _mutate(media_msg(2, 1, 52), ("sequenceNumber",), "9" * 5000),
    "other stream": _mutate(media_msg(2, 1, 52), ("streamSid",), "MZother"),
    "dtmf not a digit": _mutate(DTMF, ("dtmf", "digit"), "55"),
    "dtmf digit missing": _mutate(DTMF, ("dtmf", "digit"), ...),
    "mark without name": _mutate(mark_msg(3, "a"), ("mark", "name"), ...),
    "mark name not string": _mutate(mark_msg(3, "a"), ("mark", "name"), ["a"]),
    "second start": START,
    "late connected": CONNECTED,
    "stop body not object": _mutate(STOP, ("stop",), 3),
    "too large": media_msg(2, 1, 52).replace('"track"', '"pad":"%s","track"' % ("x" * 70000)),
    "too large in bytes": '{"event":"mark","mark":{"name":"%s"}}' % ("\u00e9" * 40000),
    "nested deep": "[" * 100000,
    "invalid utf-8 bytes": b'{"event":"mark","mark":{"name":"\xff"}}',
}


@pytest.mark.parametrize("text", BAD_AFTER_START.values(), ids=BAD_AFTER_START.keys())
def test_malformed_known_events_are_errors(text):
    with pytest.raises(TwilioProtocolError):
        started().feed(text)


BAD_START = {
    "media before start": media_msg(2, 1, 52),
    "mark before start": mark_msg(2, "x"),
    "no callSid": _mutate(START, ("start", "callSid"), ...),
    "empty callSid": _mutate(START, ("start", "callSid"), ""),
    "no streamSid": _mutate(_mutate(START, ("start", "streamSid"), ...), ("streamSid",), ...),
    "streamSid mismatch": _mutate(START, ("streamSid",), "MZelse"),
    "no mediaFormat": _mutate(START, ("start", "mediaFormat"), ...),
    "alaw": _mutate(START, ("start", "mediaFormat", "encoding"), "audio/x-alaw"),
    "16 kHz": _mutate(START, ("start", "mediaFormat", "sampleRate"), 16000),
    "stereo": _mutate(START, ("start", "mediaFormat", "channels"), 2),
    "tracks not list": _mutate(START, ("start", "tracks"), "inbound"),
    "customParameters not object": _mutate(START, ("start", "customParameters"), ["a"]),
    "customParameter value object": _mutate(START, ("start", "customParameters"), {"a": {"b": 1}}),
    "start not object": _mutate(START, ("start",), None),
}


@pytest.mark.parametrize("text", BAD_START.values(), ids=BAD_START.keys())
def test_malformed_start_and_order_errors(text):
    s = TwilioStream()
    s.feed(CONNECTED)
    with pytest.raises(TwilioProtocolError):
        s.feed(text)


def test_nothing_after_stop():
    s = started()
    s.feed(STOP)
    with pytest.raises(TwilioProtocolError):
        s.feed(media_msg(413, 100, 2000))


def test_media_of_any_size_is_reframed_to_20ms_with_derived_timestamps():
    """Payloads that are not 160 bytes (100, 161, 1000 bytes of mu-law) are audio, not a protocol
    error: they come out as exact 20 ms frames, the remainder waiting for the next message."""
    s = TwilioStream()
    s.feed(START)
    ulaw = bytes(range(256)) * 8  # 2048 distinct-ish bytes to follow through the cuts
    sizes = [96, 168, 1000, 160, 8, 296]  # whole ms, so the wire's timestamps are exact
    out, pos, ts = [], 0, 1000
    for seq, size in enumerate(sizes, start=2):
        chunk = ulaw[pos : pos + size]
        out += s.feed(media_msg(seq, seq - 1, ts, payload=base64.b64encode(chunk).decode()))
        pos += size
        ts += size // 8
    assert len(out) == 10
    assert [len(m.ulaw) for m in out] == [160] * (sum(sizes) // 160)
    assert b"".join(m.ulaw for m in out) == ulaw[: len(out) * 160]  # nothing lost or reordered
    assert all(m.pcm == ulaw_to_pcm16(m.ulaw) for m in out)
    # each frame's media time: the message's timestamp less what was held over from before
    assert [m.timestamp_ms for m in out] == [1000 + 20 * i for i in range(len(out))]
    held = sum(sizes) - 1600  # 128 bytes wait for the next message
    [odd] = s.feed(media_msg(9, 8, ts, payload=base64.b64encode(bytes(161)).decode()))
    assert odd.ulaw == ulaw[1600 : 1600 + held] + bytes(160 - held) and odd.timestamp_ms == 1000 + 200
    assert s.feed(media_msg(10, 9, 3000, payload=base64.b64encode(bytes(1)).decode())) == []  # 130 held


def test_outbound_track_media_is_dropped_and_holds_no_inbound_audio_back():
    """The agent's own audio echoed back (track ``outbound``) is not the caller's: no event, and
    none of it joins the inbound frames."""
    s = TwilioStream()
    s.feed(START)
    msg = json.loads(media_msg(2, 1, 52, payload=base64.b64encode(bytes(100)).decode()))
    msg["media"]["track"] = "outbound"
    assert s.feed(json.dumps(msg)) == []
    [m] = s.feed(media_msg(3, 2, 72))
    assert m.ulaw == FRAME and m.timestamp_ms == 72


def test_peer_and_stream_talk_to_each_other():
    peer = TwilioPeer(
        SID, CALL, account_sid=ACCOUNT, custom_parameters={"tenant": "acme"}, first_timestamp_ms=52
    )
    s = TwilioStream()
    assert s.feed(peer.connected()) == [Connected("1.0.0")]
    [start] = s.feed(peer.start())
    assert (start.call_id, start.sequence_number, dict(start.parameters)) == (CALL, 1, {"tenant": "acme"})
    ms = [s.feed(peer.media(FRAME))[0] for _ in range(3)]
    assert [m.timestamp_ms for m in ms] == [52, 72, 92]
    assert s.feed(peer.dtmf("#")) == [Dtmf("#")]
    assert s.feed(peer.mark("m1")) == [MarkPlayed("m1")]
    assert s.feed(peer.stop()) == [Stopped()]
    [media], [mark], [clear] = s.media(bytes(320)), s.mark("m2"), s.clear()
    assert peer.feed(media) == [OutboundMedia(b"\xff" * 160)]
    assert peer.feed(mark) == [OutboundMark("m2")]
    assert peer.feed(clear) == [OutboundClear()]
    with pytest.raises(TwilioProtocolError):
        riff = base64.b64encode(b"RIFF....").decode()
        peer.feed(json.dumps({"event": "media", "streamSid": SID, "media": {"payload": riff}}))


# ---------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
EVENT_NAMES = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", "other"])
FIELD_NAMES = st.sampled_from(
    ["sequenceNumber", "streamSid", "start", "media", "dtmf", "mark", "stop", "payload", "chunk", "timestamp",
     "track", "digit", "name", "callSid", "accountSid", "mediaFormat", "customParameters", "tracks"]
)  # fmt: skip


@st.composite
def twilio_like(draw):
    """JSON objects shaped like Twilio messages, with random values in random places."""
    msg = draw(st.dictionaries(FIELD_NAMES, json_values, max_size=4))
    msg["event"] = draw(EVENT_NAMES)
    body_key = draw(st.sampled_from(["start", "media", "dtmf", "mark", "stop"]))
    msg[body_key] = draw(st.dictionaries(FIELD_NAMES, json_values | st.text(max_size=220), max_size=5))
    if draw(st.booleans()):
        msg[body_key]["payload"] = draw(st.sampled_from([FRAME_B64, FRAME_B64[:-4], "", "====", "YQ"]))
    return json.dumps(msg)


def _feed_only_protocol_errors(stream: TwilioStream, text) -> None:
    try:
        events = stream.feed(text)
    except TwilioProtocolError:
        return
    assert isinstance(events, list) and len(events) <= 1


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_fuzz_random_text_fresh_and_started(text):
    _feed_only_protocol_errors(TwilioStream(), text)
    _feed_only_protocol_errors(started(), text)


@FUZZ
@given(json_values.map(json.dumps))
def test_fuzz_random_json(text):
    _feed_only_protocol_errors(TwilioStream(), text)
    _feed_only_protocol_errors(started(), text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(twilio_like(), max_size=4))
def test_fuzz_twilio_shaped_sequences(texts):
    fresh, live = TwilioStream(), started()
    for text in texts:
        _feed_only_protocol_errors(fresh, text)
        _feed_only_protocol_errors(live, text)


@FUZZ
@given(st.integers(0, len(START) - 1), st.integers(0, 255))
def test_fuzz_byte_flips_of_a_real_start(pos, byte):
    mutated = bytearray(START.encode())
    mutated[pos] = byte
    _feed_only_protocol_errors(TwilioStream(), bytes(mutated))


async def test_media_that_is_not_160_bytes_keeps_a_live_call_going():
    """Over a real websocket: 100, 161 and 1000-byte payloads are audio (re-framed to 20 ms), the
    call goes on to its DTMF and its stop; before, the first of them closed the call (1008)."""
    events: list = []
    ended = asyncio.Event()

    async def on_call(link) -> None:
        async for ev in link.events():
            events.append(ev)
        ended.set()

    settings = TelephonySettings(
        public_base_url="https://agent.example.com", carriers=("twilio",), allow_unsigned=True
    )
    peer = TwilioPeer("MZodd", "CAodd")
    ulaw = bytes(range(1, 256)) * 8
    sizes = [100, 161, 1000, 160, 219]  # 1640 bytes: 10 frames and 40 bytes left over
    async with serve_app(create_app(settings, on_call)) as url:
        async with connect(ws_url(url) + "/twilio/stream") as ws:
            await ws.send(peer.connected())
            await ws.send(peer.start())
            pos = 0
            for size in sizes:
                await ws.send(peer.media(ulaw[pos : pos + size]))
                pos += size
            await ws.send(peer.dtmf("4"))
            await ws.send(peer.stop())
            async with asyncio.timeout(5):
                await ended.wait()
    audio = [e for e in events if isinstance(e, InboundAudio)]
    assert [len(a.ulaw) for a in audio] == [160] * 10 and all(len(a.pcm) == 320 for a in audio)
    assert b"".join(a.ulaw for a in audio) == ulaw[:1600]
    assert isinstance(events[-2], InboundDtmf) and events[-1] == CallEnded("stop")
