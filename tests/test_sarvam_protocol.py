"""Sans-I/O Sarvam wire formats: URLs, client messages, server message parsing (with fuzzing)."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxroute.agent.providers import sarvam_protocol as sp


def _query(url: str) -> tuple[str, dict[str, str]]:
    parts = urllib.parse.urlsplit(url)
    return parts.path, dict(urllib.parse.parse_qsl(parts.query))


# ---------------------------------------------------------------- URLs


def test_realtime_url_has_exact_query() -> None:
    path, q = _query(sp.realtime_stt_url("wss://api.sarvam.ai", "hi-IN", silence_duration_ms=500))
    assert path == "/speech-to-text-realtime/ws"
    assert q == {
        "language_code": "hi-IN",
        "model": "saaras:v3-realtime",
        "stream_type": "fast",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "endpointing": "vad",
        "silence_duration_ms": "500",
    }
    assert "key" not in url_lower(sp.realtime_stt_url("wss://x", "en-IN"))


def url_lower(url: str) -> str:
    return urllib.parse.urlsplit(url).query.lower()


@pytest.mark.parametrize(
    ("ours", "realtime", "legacy"),
    [
        ("od-IN", "or-IN", "od-IN"),
        ("or-IN", "or-IN", "od-IN"),
        ("auto", "auto", "unknown"),
        ("hi", "hi-IN", "hi-IN"),
    ],
)
def test_language_spelling_per_socket(ours: str, realtime: str, legacy: str) -> None:
    assert sp.realtime_language(ours) == realtime
    assert sp.legacy_language(ours) == legacy


def test_legacy_url_uses_hyphen_key_and_8k_pcm() -> None:
    path, q = _query(sp.legacy_stt_url("wss://api.sarvam.ai/", "od-IN"))
    assert path == "/speech-to-text/ws"
    assert q["language-code"] == "od-IN"
    assert "language_code" not in q
    assert q["sample_rate"] == "8000"
    assert q["input_audio_codec"] == "pcm_s16le"
    assert q["vad_signals"] == q["flush_signal"] == q["high_vad_sensitivity"] == "true"


def test_tts_urls() -> None:
    path, q = _query(sp.tts_ws_url("wss://h"))
    assert path == "/text-to-speech/ws"
    assert q == {"model": "bulbul:v3", "send_completion_event": "true"}
    assert sp.tts_rest_url("https://h/") == "https://h/text-to-speech"


# ---------------------------------------------------------------- client messages


def test_realtime_client_messages() -> None:
    msg = json.loads(sp.rt_audio_input(b"\xff\x00\x7f"))
    assert msg == {"event": "audio_input", "audio": base64.b64encode(b"\xff\x00\x7f").decode()}
    assert json.loads(sp.rt_flush()) == {"event": "flush"}
    assert json.loads(sp.rt_ping()) == {"event": "ping"}
    assert json.loads(sp.rt_end()) == {"event": "end"}
    assert json.loads(sp.rt_speech_start()) == {"event": "speech_start"}
    assert json.loads(sp.rt_speech_end()) == {"event": "speech_end"}
    upd = json.loads(sp.rt_config_update(language_code="od-IN", silence_duration_ms=400))
    assert upd == {"event": "config.update", "language_code": "or-IN", "silence_duration_ms": 400}
    with pytest.raises(ValueError):
        sp.rt_config_update(sample_rate=8000)


def test_legacy_client_messages() -> None:
    msg = json.loads(sp.legacy_audio(b"\x01\x00\x02\x00"))
    assert msg == {"audio": {"data": "AQACAA==", "sample_rate": 8000, "encoding": "audio/wav"}}
    assert json.loads(sp.legacy_flush()) == {"type": "flush"}
    assert json.loads(sp.legacy_config("loan EMI")) == {"type": "config", "prompt": "loan EMI"}
    assert json.loads(sp.legacy_end_of_stream())["type"] == "end_of_stream"


def test_tts_client_messages() -> None:
    cfg = json.loads(sp.tts_config("hi", "ritu"))
    assert cfg == {
        "type": "config",
        "data": {
            "model": "bulbul:v3",
            "language_code": "hi-IN",
            "speaker": "ritu",
            "speech_sample_rate": 8000,
            "output_audio_codec": "mulaw",
        },
    }
    assert isinstance(cfg["data"]["speech_sample_rate"], int)
    assert json.loads(sp.tts_text("Namaste")) == {"type": "text", "data": {"text": "Namaste"}}
    assert json.loads(sp.tts_flush()) == {"type": "flush"}
    assert json.loads(sp.tts_ping()) == {"type": "ping"}
    with pytest.raises(ValueError):
        sp.tts_text("")
    with pytest.raises(ValueError):
        sp.tts_text("x" * 2501)
    body = sp.tts_rest_body("Hello", "en-IN", "shubh", pace=1.1)
    assert body == {
        "text": "Hello",
        "language_code": "en-IN",
        "speaker": "shubh",
        "model": "bulbul:v3",
        "speech_sample_rate": 8000,
        "output_audio_codec": "mulaw",
        "pace": 1.1,
    }


def test_default_speakers_are_valid_v3_voices() -> None:
    assert set(sp.DEFAULT_V3_SPEAKERS) == set(sp.TTS_LANGUAGES)
    assert set(sp.DEFAULT_V3_SPEAKERS.values()) <= set(sp.BULBUL_V3_SPEAKERS)


# ---------------------------------------------------------------- realtime server messages


def test_parse_realtime_events() -> None:
    begin = sp.parse_realtime('{"event":"session.begin","request_id":"r1","config":{"sample_rate":8000}}')
    assert begin == sp.RtSessionBegin("r1", {"sample_rate": 8000})
    assert sp.parse_realtime('{"event":"vad.speech_start","utterance_idx":0,"confidence":0.93}') == (
        sp.RtVadSpeechStart(0, 0.93)
    )
    assert sp.parse_realtime('{"event":"vad.speech_end","utterance_idx":2}') == sp.RtVadSpeechEnd(2, None)
    part = sp.parse_realtime(
        '{"event":"transcript.partial","utterance_idx":0,"text":"mera order","language":"hi"}'
    )
    assert part == sp.RtTranscript(0, "mera order", final=False, language="hi-IN")
    fin = sp.parse_realtime(
        '{"event":"transcript.final","utterance_idx":0,"text":"मेरा ऑर्डर","language":"or-IN","start_s":1,"end_s":2.5}'
    )
    assert fin.final and fin.language == "od-IN" and fin.start_s == 1.0 and fin.end_s == 2.5
    assert sp.parse_realtime('{"event":"config.updated","applied":["language_code"]}') == sp.RtConfigUpdated(
        ("language_code",)
    )
    assert sp.parse_realtime('{"event":"pong"}') == sp.RtPong()
    err = sp.parse_realtime('{"event":"error","code":"invalid_config","is_fatal":false,"message":"no"}')
    assert err == sp.RtError("invalid_config", False, "no", None)
    fatal = sp.parse_realtime('{"event":"error","code":"x","is_fatal":true,"message":"m","status_code":403}')
    assert fatal.is_fatal and fatal.status_code == 403
    end = sp.parse_realtime(
        '{"event":"session.end","request_id":"r","total_duration_s":63.2,"total_utterances":7}'
    )
    assert end == sp.RtSessionEnd("r", 63.2, 7, None)
    unknown = sp.parse_realtime('{"event":"speech.new_thing","x":1}')
    assert isinstance(unknown, sp.RtUnknown) and unknown.event == "speech.new_thing"


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1,2]",
        '"event"',
        "{}",
        '{"event": 5}',
        '{"event":"transcript.final","utterance_idx":0}',
        '{"event":"transcript.final","utterance_idx":"0","text":"x"}',
        '{"event":"transcript.final","utterance_idx":true,"text":"x"}',
        '{"event":"error","code":"x","is_fatal":"yes","message":"m"}',
        '{"event":"config.updated","applied":[1]}',
        b"\xff\xfe",
    ],
)
def test_parse_realtime_rejects_malformed(raw: str | bytes) -> None:
    with pytest.raises(sp.SarvamProtocolError):
        sp.parse_realtime(raw)


def test_normalise_language() -> None:
    assert sp.normalise_language("hi") == "hi-IN"
    assert sp.normalise_language("hi-IN") == "hi-IN"
    assert sp.normalise_language("or-IN") == "od-IN"
    assert sp.normalise_language("kok-IN") == "kok-IN"
    assert sp.normalise_language("auto") is None
    assert sp.normalise_language(None) is None


# ---------------------------------------------------------------- legacy server messages


def test_parse_legacy_messages() -> None:
    data = sp.parse_legacy(
        json.dumps(
            {
                "type": "data",
                "data": {
                    "request_id": "r",
                    "transcript": "mera order kahan hai",
                    "timestamps": None,
                    "language_code": "hi-IN",
                    "language_probability": None,
                    "metrics": {"audio_duration": 2.14, "processing_latency": 0.18},
                },
            }
        )
    )
    assert data == sp.LegacyTranscript("mera order kahan hai", "hi-IN", "r", None, 2.14, 0.18)
    sig = sp.parse_legacy(
        '{"type":"events","data":{"signal_type":"START_SPEECH","occured_at":1767225600.123}}'
    )
    assert sig == sp.LegacySignal("START_SPEECH", 1767225600.123)
    assert sp.parse_legacy('{"type":"event","data":{"event_type":"END_SPEECH"}}') == sp.LegacySignal(
        "END_SPEECH"
    )
    err = sp.parse_legacy('{"type":"error","data":{"error":"Invalid sample rate","code":"invalid_request"}}')
    assert err == sp.LegacyError("Invalid sample rate", "invalid_request")
    assert sp.parse_legacy('{"type":"errors","data":{"message":"x"}}') == sp.LegacyError("x", None)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"data"}',
        '{"type":"data","data":{}}',
        '{"type":"zzz","data":{}}',
        '{"type":"events","data":{}}',
        "1",
    ],
)
def test_parse_legacy_rejects_malformed(raw: str) -> None:
    with pytest.raises(sp.SarvamProtocolError):
        sp.parse_legacy(raw)


# ---------------------------------------------------------------- TTS server messages


def test_parse_tts_messages() -> None:
    audio = sp.parse_tts(
        '{"type":"audio","data":{"content_type":"audio/mulaw","audio":"/38=","request_id":"r"}}'
    )
    assert audio == sp.TtsAudio(b"\xff\x7f", "audio/mulaw", "r")
    final = sp.parse_tts('{"type":"event","data":{"event_type":"final","message":"generation complete"}}')
    assert final == sp.TtsFinal("generation complete")
    err = sp.parse_tts('{"type":"error","data":{"message":"Speaker x is not valid","code":400,"details":{}}}')
    assert err == sp.TtsError("Speaker x is not valid", 400, None)
    assert sp.parse_tts('{"type":"error","data":{"message":"m","code":"500"}}').code == 500
    assert sp.parse_tts('{"type":"error","data":{"message":"m","code":"E1"}}').code is None
    assert isinstance(sp.parse_tts('{"type":"status","data":{}}'), sp.TtsUnknown)
    for bad in ('{"type":"audio","data":{"audio":"%%%"}}', '{"type":"audio"}', '{"data":{}}', "{"):
        with pytest.raises(sp.SarvamProtocolError):
            sp.parse_tts(bad)


def test_tts_rest_response_and_errors() -> None:
    body = json.dumps({"request_id": "r", "audios": [base64.b64encode(b"ab").decode(), "Yw=="]})
    assert sp.parse_tts_rest_response(body) == sp.TtsRestResult(b"abc", "r")
    for bad in ('{"audios": []}', '{"audios": [1]}', "{}", "<html>"):
        with pytest.raises(sp.SarvamProtocolError):
            sp.parse_tts_rest_response(bad)
    env = '{"error":{"message":"Invalid speaker","code":"invalid_request_error","request_id":"20260301_x"}}'
    assert sp.parse_rest_error(env) == sp.RestError("Invalid speaker", "invalid_request_error", "20260301_x")
    assert sp.parse_rest_error(b"<html>Bad gateway</html>").message.startswith("<html>")
    assert sp.parse_rest_error('{"detail": "nope"}').message == "nope"
    assert [sp.fault_kind_for_status(s) for s in (500, 503, 429, 403, 401, 400)] == [
        "http_500",
        "http_500",
        "http_429",
        "http_error",
        "http_error",
        "http_error",
    ]
    assert sp.retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert sp.retry_after_seconds({"retry-after": "2"}) == 2.0
    assert sp.retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None


def test_strip_riff() -> None:
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    pcm = b"\x01\x02" * 10
    wav = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
    wav += b"data" + struct.pack("<I", len(pcm)) + pcm
    assert sp.strip_riff(wav) == pcm
    assert sp.strip_riff(pcm) == pcm


# ---------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
RT_EVENTS = [
    "session.begin",
    "vad.speech_start",
    "vad.speech_end",
    "transcript.partial",
    "transcript.final",
    "config.updated",
    "pong",
    "error",
    "session.end",
]
RT_KEYS = ["utterance_idx", "text", "language", "confidence", "code", "is_fatal", "message", "status_code",
           "request_id", "config", "applied", "start_s", "end_s", "total_utterances"]  # fmt: skip


def _realtime_like() -> st.SearchStrategy[dict]:
    return st.builds(
        lambda event, fields: {"event": event, **fields},
        st.sampled_from(RT_EVENTS) | st.text(max_size=10),
        st.dictionaries(st.sampled_from(RT_KEYS), json_values, max_size=6),
    )


def _wrapped(types: list[str], keys: list[str]) -> st.SearchStrategy[dict]:
    return st.builds(
        lambda t, data: {"type": t, "data": data},
        st.sampled_from(types) | st.text(max_size=8),
        st.dictionaries(st.sampled_from(keys), json_values, max_size=5) | json_values,
    )


def _only_protocol_errors(parse, raw) -> None:  # noqa: ANN001
    try:
        parse(raw)
    except sp.SarvamProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_fuzz_parsers_on_arbitrary_bytes(raw: str | bytes) -> None:
    for parse in (sp.parse_realtime, sp.parse_legacy, sp.parse_tts, sp.parse_tts_rest_response):
        _only_protocol_errors(parse, raw)
    assert isinstance(sp.parse_rest_error(raw), sp.RestError)


@settings(max_examples=150, deadline=None)
@given(_realtime_like())
def test_fuzz_realtime_structured(obj: dict) -> None:
    _only_protocol_errors(sp.parse_realtime, json.dumps(obj))


@settings(max_examples=120, deadline=None)
@given(_wrapped(["data", "events", "event", "error", "errors"], ["transcript", "language_code", "metrics",
                                                                 "signal_type", "occured_at", "error", "code"]))  # fmt: skip
def test_fuzz_legacy_structured(obj: dict) -> None:
    _only_protocol_errors(sp.parse_legacy, json.dumps(obj))


@settings(max_examples=120, deadline=None)
@given(_wrapped(["audio", "event", "error"], ["audio", "content_type", "event_type", "message", "code"]))
def test_fuzz_tts_structured(obj: dict) -> None:
    _only_protocol_errors(sp.parse_tts, json.dumps(obj))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60), st.integers(0, 50))
def test_roundtrip_realtime_final(text: str, idx: int) -> None:
    msg = json.dumps({"event": "transcript.final", "utterance_idx": idx, "text": text})
    assert sp.parse_realtime(msg) == sp.RtTranscript(idx, text, final=True)
