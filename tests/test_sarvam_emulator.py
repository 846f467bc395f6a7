"""The Sarvam emulators speak the real protocol: the official ``sarvamai`` SDK (0.1.39) talks to them.

Plus the emulator's own rules (auth, query validation, VAD, transcripts from fixture scripts,
control endpoints) checked with raw websockets / httpx clients.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from sarvamai import AsyncSarvamAI, SarvamAIEnvironment
from sarvamai.core.api_error import ApiError
from sarvamai.types import RealtimeAudioInput, RealtimeFlush

from voxroute.agent.fixture import Fixture, load
from voxroute.audio import ulaw_to_pcm16
from voxroute.emulators.profiles import ZERO, Dice, Latency, Profile
from voxroute.emulators.sarvam import EmulatorState, create_app, create_stt_app, create_tts_app
from voxroute.emulators.transcripts import (
    PARTIAL_TAIL_BYTES,
    TranscriptLibrary,
    TranscriptSession,
    split_words,
    write_synthetic_fixture,
)
from voxroute.server import serve_app, ws_url

# The synthetic call both Sarvam test files use: a pause mid-utterance splits the last one in two.
SCRIPT = [
    {"text": "I was charged twice for my order"},
    {"text": "namaste mera order kahan hai", "language": "hi-IN"},
    {"text": "one two three four five six", "pause_after": 2, "pause_ms": 600},
]
FINALS = [
    "I was charged twice for my order",
    "namaste mera order kahan hai",
    "one two",
    "three four five six",
]
TAIL = b"\xff" * 4000  # 500 ms of mu-law digital silence, so the last segment ends by VAD


@pytest.fixture
def call(tmp_path: Path) -> Fixture:
    return load(write_synthetic_fixture(tmp_path, "synth", SCRIPT))


@contextlib.asynccontextmanager
async def running(call: Fixture, *, api_key: str | None = None) -> AsyncIterator[tuple[str, EmulatorState]]:
    """Both emulators on one port (as api.sarvam.ai is one host)."""
    app = create_app(TranscriptLibrary([call]), Dice(ZERO, seed=1), api_key=api_key, pace=0.0)
    async with serve_app(app) as http_url:
        yield http_url, app.state.emulator


def sdk(http_url: str, key: str = "test-key") -> AsyncSarvamAI:
    env = SarvamAIEnvironment(base=http_url, production=ws_url(http_url), creative=http_url)
    return AsyncSarvamAI(api_subscription_key=key, environment=env)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- transcripts (pure)


def test_split_words_concatenates_exactly() -> None:
    text = "one two three four five six seven"
    for cut in (0.0, 0.1, 0.33, 0.5, 0.77, 1.0):
        left, right = split_words(text, 0.0, cut), split_words(text, cut, 1.0)
        assert " ".join(p for p in (left, right) if p) == text
    assert split_words(text, 0.0, 1.0) == text


def test_expected_split_follows_the_silence_window(call: Fixture) -> None:
    lib = TranscriptLibrary([call])
    assert lib.expected_split(call, 0, 200) == ["I was charged twice for my order"]
    assert lib.expected_split(call, 2, 200) == ["one two", "three four five six"]
    assert lib.expected_split(call, 2, 800) == ["one two three four five six"]


def test_library_matches_any_offset_and_unknown_audio(call: Fixture) -> None:
    lib = TranscriptLibrary([call])
    utt = call.script.utterances[1]
    audio = call.utterance_audio(utt)
    for cut in (0, 1, 3, 77):
        m = lib.match(audio[cut:])
        assert m is not None and m.utterance == 1 and m.language == "hi-IN"
    rng = np.random.default_rng(5)
    assert lib.match(rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()) is None


@pytest.mark.parametrize("name", ["billing_dispute", "hindi_order_status", "angry_complaint"])
def test_partials_match_the_tail_and_say_what_the_whole_segment_says(name: str) -> None:
    """Past its first 0.6 s, a growing segment's partial matches only its tail (the emulator's cost
    grew with the square of an utterance). Every partial, every 200 ms of each utterance of a
    committed fixture, says what matching the whole segment says, and the tail was used."""
    fixture = load(name)
    lib = TranscriptLibrary([fixture])
    calls: list[int] = []
    match = lib.match

    def counting(ulaw, prefer=None):
        calls.append(len(ulaw))
        return match(ulaw, prefer)

    lib.match = counting  # type: ignore[method-assign]
    session, whole = TranscriptSession(lib), TranscriptSession(lib)
    compared = 0
    for utt in fixture.script.utterances:
        audio = fixture.utterance_audio(utt)
        for end in range(1600, len(audio) + 1600, 1600):
            segment = audio[:end]
            got = session.partial(segment)
            whole._partial_head = None  # always the whole segment
            assert got == whole.partial(segment), (utt.text, end)
            compared += 1
        session.final(audio)
        whole.final(audio)
    assert compared > 20
    assert PARTIAL_TAIL_BYTES in calls  # the tail was matched, not only whole segments


# ---------------------------------------------------------------- realtime STT with the SDK


async def test_sdk_realtime_stream_gets_script_text(call: Fixture) -> None:
    async with running(call) as (stt_http, stt_state):
        client = sdk(stt_http)
        got: list = []
        async with client.speech_to_text_realtime_streaming.connect(
            language_code="en-IN",
            model="saaras:v3-realtime",
            stream_type="fast",
            encoding="mulaw",
            sample_rate="8000",
            endpointing="vad",
            silence_duration_ms="200",
        ) as ws:
            data = call.ulaw + TAIL
            for i in range(0, len(data), 400):  # 50 ms chunks, like pipecat
                await ws.send_realtime_audio_input(RealtimeAudioInput(audio=b64(data[i : i + 400])))
            async for msg in ws:
                got.append(msg)
                if sum(type(m).__name__ == "RealtimeTranscriptFinal" for m in got) == len(FINALS):
                    break
        names = [type(m).__name__ for m in got]
        assert names[0] == "RealtimeSessionBegin"
        assert got[0].config.sample_rate == 8000 and got[0].config.turn_detection == "vad"
        assert [m.text for m in got if type(m).__name__ == "RealtimeTranscriptFinal"] == FINALS
        assert names.count("RealtimeVadSpeechStart") == names.count("RealtimeVadSpeechEnd") == 4
        partials = [m.text for m in got if type(m).__name__ == "RealtimeTranscriptPartial"]
        assert partials and all(
            FINALS[0].startswith(p) or any(f.startswith(p) for f in FINALS) for p in partials
        )
        # each final follows its vad.speech_end, with matching utterance_idx
        finals = [m for m in got if type(m).__name__ == "RealtimeTranscriptFinal"]
        assert [m.utterance_idx for m in finals] == [0, 1, 2, 3]
        assert stt_state.handshakes["stt_realtime"] == 1


async def test_sdk_realtime_auto_language_and_flush(call: Fixture) -> None:
    async with running(call) as (stt_http, _):
        client = sdk(stt_http)
        async with client.speech_to_text_realtime_streaming.connect(
            language_code="auto", encoding="mulaw", sample_rate="8000"
        ) as ws:
            # only the Hindi utterance, no trailing silence: the flush finalises it
            await ws.send_realtime_audio_input(
                RealtimeAudioInput(audio=b64(call.utterance_audio(call.script.utterances[1])))
            )
            await ws.send_realtime_flush(RealtimeFlush())
            async for msg in ws:
                if type(msg).__name__ == "RealtimeTranscriptFinal":
                    assert msg.text == "namaste mera order kahan hai"
                    assert msg.language == "hi-IN"
                    break


# ---------------------------------------------------------------- legacy STT with the SDK


async def test_sdk_legacy_stream_pcm_8k(call: Fixture) -> None:
    async with running(call) as (stt_http, _):
        client = sdk(stt_http)
        got: list = []
        async with client.speech_to_text_streaming.connect(
            language_code="en-IN",
            model="saaras:v3",
            sample_rate="8000",
            input_audio_codec="pcm_s16le",
            high_vad_sensitivity="true",
            vad_signals="true",
            flush_signal="true",
        ) as ws:
            pcm = ulaw_to_pcm16(call.ulaw + TAIL)
            for i in range(0, len(pcm), 1000):
                await ws.transcribe(audio=b64(pcm[i : i + 1000]), encoding="audio/wav", sample_rate=16000)
            async for msg in ws:
                got.append(msg)
                if sum(m.type == "data" for m in got) == len(FINALS):
                    break
        data = [m.data for m in got if m.type == "data"]
        assert [d.transcript for d in data] == FINALS
        assert [d.language_code for d in data] == ["en-IN", "hi-IN", "en-IN", "en-IN"]
        signals = [m.data.signal_type for m in got if m.type == "events"]
        assert signals == ["START_SPEECH", "END_SPEECH"] * 4
        # order per segment: START_SPEECH -> END_SPEECH -> data
        assert [m.type for m in got[:3]] == ["events", "events", "data"]


async def test_sdk_legacy_flush_finalises_now(call: Fixture) -> None:
    async with running(call) as (stt_http, _):
        client = sdk(stt_http)
        async with client.speech_to_text_streaming.connect(
            language_code="en-IN", sample_rate="8000", input_audio_codec="pcm_s16le", flush_signal="true"
        ) as ws:
            await ws.transcribe(audio=b64(ulaw_to_pcm16(call.utterance_audio(call.script.utterances[0]))))
            await ws.flush()
            msg = await ws.recv()
            assert msg.type == "data" and msg.data.transcript == FINALS[0]


# ---------------------------------------------------------------- TTS with the SDK


async def test_sdk_tts_websocket(call: Fixture) -> None:
    text = "Namaste, aapka order kal tak pahunch jayega."
    async with running(call) as (tts_http, tts_state):
        client = sdk(tts_http)
        async with client.text_to_speech_streaming.connect(
            model="bulbul:v3", send_completion_event=True
        ) as ws:
            await ws.configure(
                target_language_code="hi-IN",
                speaker="ritu",
                speech_sample_rate=8000,
                output_audio_codec="mulaw",
            )
            await ws.convert(text)
            await ws.flush()
            audio = b""
            async for msg in ws:
                if msg.type == "audio":
                    audio += base64.b64decode(msg.data.audio)
                else:
                    assert msg.type == "event" and msg.data.event_type == "final"
                    break
        assert len(audio) == int(0.065 * len(text) * 8000)  # mu-law: one byte per sample
        pcm = np.frombuffer(ulaw_to_pcm16(audio), "<i2").astype(float)
        assert np.sqrt((pcm**2).mean()) > 500  # audibly non-empty
        assert tts_state.handshakes["tts_ws"] == 1


async def test_sdk_tts_websocket_reports_bad_speaker(call: Fixture) -> None:
    async with running(call) as (tts_http, _):
        client = sdk(tts_http)
        async with client.text_to_speech_streaming.connect(
            model="bulbul:v3", send_completion_event=True
        ) as ws:
            await ws.configure(target_language_code="hi-IN", speaker="anushka", output_audio_codec="mulaw")
            msg = await ws.recv()
            assert msg.type == "error" and "anushka" in msg.data.message and msg.data.code == 400


async def test_sdk_tts_rest(call: Fixture) -> None:
    async with running(call) as (tts_http, _):
        client = sdk(tts_http)
        resp = await client.text_to_speech.convert(
            text="hello there",
            language_code="en-IN",
            speaker="shubh",
            model="bulbul:v3",
            speech_sample_rate=8000,
            output_audio_codec="mulaw",
        )
        assert resp.request_id and len(base64.b64decode(resp.audios[0])) == int(0.065 * 11 * 8000)
        wav = await client.text_to_speech.convert(text="hi", language_code="en-IN", speaker="shubh")
        assert base64.b64decode(wav.audios[0])[:4] == b"RIFF"  # default codec: a whole WAV file


async def test_sdk_bad_key_is_403(call: Fixture) -> None:
    async with running(call, api_key="right") as (stt_http, _):
        tts_http = stt_http
        with pytest.raises(ApiError) as ws_err:
            async with sdk(stt_http, "wrong").speech_to_text_realtime_streaming.connect(
                language_code="en-IN"
            ):
                pass
        assert ws_err.value.status_code == 403
        with pytest.raises(ApiError) as rest_err:
            await sdk(tts_http, "wrong").text_to_speech.convert(text="hi", language_code="en-IN")
        assert rest_err.value.status_code == 403
        assert rest_err.value.body["error"]["code"] == "invalid_api_key_error"
        # the right key works
        async with sdk(stt_http, "right").speech_to_text_realtime_streaming.connect(
            language_code="en-IN"
        ) as ws:
            assert type(await ws.recv()).__name__ == "RealtimeSessionBegin"


# ---------------------------------------------------------------- protocol rules (raw clients)


async def test_handshake_without_key_is_403_with_envelope(call: Fixture) -> None:
    async with serve_app(create_stt_app(TranscriptLibrary([call]), Dice(ZERO))) as stt_http:
        with pytest.raises(websockets.InvalidStatus) as exc:
            async with websockets.connect(ws_url(stt_http) + "/speech-to-text/ws?language-code=en-IN"):
                pass
        assert exc.value.response.status_code == 403
        assert json.loads(exc.value.response.body)["error"]["code"] == "invalid_api_key_error"
        # a key in the query string does not count
        with pytest.raises(websockets.InvalidStatus):
            url = ws_url(stt_http) + "/speech-to-text/ws?language-code=en-IN&api-subscription-key=k"
            async with websockets.connect(url):
                pass


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/speech-to-text-realtime/ws?language_code=en-IN&sample_rate=44100", "sample_rate"),
        ("/speech-to-text-realtime/ws?language_code=xx-IN", "language_code"),
        ("/speech-to-text/ws?language_code=en-IN", "language-code"),  # legacy: hyphen only
        ("/speech-to-text/ws?language-code=en-IN&sample_rate=22050", "sample_rate"),
    ],
)
async def test_bad_query_gets_error_then_close_4000(call: Fixture, path: str, needle: str) -> None:
    async with running(call) as (stt_http, _):
        headers = {"api-subscription-key": "k"}
        async with websockets.connect(ws_url(stt_http) + path, additional_headers=headers) as ws:
            msg = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4000
        text = msg.get("message") or msg["data"]["error"]
        assert needle in text
        if "event" in msg:
            assert msg["is_fatal"] is True and msg["status_code"] == 400


async def test_realtime_control_messages(call: Fixture) -> None:
    async with running(call) as (stt_http, _):
        url = (
            ws_url(stt_http)
            + "/speech-to-text-realtime/ws?language_code=od-IN&encoding=mulaw&sample_rate=8000"
        )
        async with websockets.connect(url, additional_headers={"api-subscription-key": "k"}) as ws:
            assert json.loads(await ws.recv())["event"] == "session.begin"
            await ws.send("this is not json")
            err = json.loads(await ws.recv())
            assert err["event"] == "error" and err["is_fatal"] is False
            await ws.send(json.dumps({"event": "ping"}))
            assert json.loads(await ws.recv()) == {"event": "pong"}
            await ws.send(
                json.dumps({"event": "config.update", "language_code": "hi-IN", "silence_duration_ms": 400})
            )
            assert json.loads(await ws.recv()) == {"event": "config.updated", "applied": ["language_code",
                                                                                      "silence_duration_ms"]}  # fmt: skip
            await ws.send(json.dumps({"event": "config.update", "stream_type": "simulated"}))
            assert json.loads(await ws.recv())["code"] == "invalid_config"
            await ws.send(
                json.dumps(
                    {"event": "audio_input", "audio": b64(call.utterance_audio(call.script.utterances[0]))}
                )
            )
            await ws.send(json.dumps({"event": "end"}))
            events = []
            with contextlib.suppress(websockets.ConnectionClosedOK):
                while True:
                    events.append(json.loads(await ws.recv()))
        finals = [e for e in events if e["event"] == "transcript.final"]
        assert [f["text"] for f in finals] == [FINALS[0]]
        assert events[-1]["event"] == "session.end" and events[-1]["total_utterances"] == 1
        assert ws.close_code == 1000


async def test_translate_socket_minimal(call: Fixture) -> None:
    async with running(call) as (stt_http, _):
        url = ws_url(stt_http) + "/speech-to-text-translate/ws?sample_rate=8000&flush_signal=true"
        async with websockets.connect(url, additional_headers={"api-subscription-key": "k"}) as ws:
            pcm = ulaw_to_pcm16(call.utterance_audio(call.script.utterances[1]))
            await ws.send(
                json.dumps({"audio": {"data": b64(pcm), "sample_rate": 16000, "encoding": "audio/wav"}})
            )
            await ws.send(json.dumps({"type": "flush"}))
            msg = json.loads(await ws.recv())
        assert msg["type"] == "data" and msg["data"]["language_code"] == "hi-IN"
        assert msg["data"]["language_probability"] is not None


async def test_control_endpoints_force_and_faults(call: Fixture) -> None:
    app = create_tts_app(Dice(ZERO), pace=0.0)  # the TTS emulator alone, on its own port
    tts_state = app.state.emulator
    async with serve_app(app) as tts_http:
        async with httpx.AsyncClient(base_url=tts_http) as http:
            bad = await http.post("/_emulator/force", json={"service": "tts", "fault": "nonsense"})
            assert bad.status_code == 400
            ok = await http.post("/_emulator/force", json={"service": "tts", "fault": "http_500"})
            assert ok.status_code == 200
            body = {"text": "hi", "language_code": "en-IN", "speaker": "shubh", "output_audio_codec": "mulaw"}
            headers = {"api-subscription-key": "k", "X-Voxroute-Tag": "call1/turn3"}
            r = await http.post("/text-to-speech", json=body, headers=headers)
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_server_error"
            assert r.json()["error"]["request_id"].split("_")[0].isdigit()
            r2 = await http.post("/text-to-speech", json=body, headers=headers)
            assert r2.status_code == 200
            faults = (await http.get("/_emulator/faults")).json()
            assert [(f["service"], f["fault"], f["tag"]) for f in faults] == [
                ("tts", "http_500", "call1/turn3")
            ]
            stats = (await http.get("/_emulator/stats")).json()
            assert stats["handshakes"] == {}
            # old field names are still accepted (pipecat / SDK <= 0.1.22)
            old = {"text": "hi", "target_language_code": "en-IN", "speaker": "shubh", "sample_rate": "8000",
                   "output_audio_codec": "mulaw"}  # fmt: skip
            assert (await http.post("/text-to-speech", json=old, headers=headers)).status_code == 200
            nojson = await http.post("/text-to-speech", content=b"{", headers=headers)
            assert nojson.status_code == 400 and nojson.json()["error"]["code"] == "invalid_request_error"
        assert len(tts_state.faults) == 1


async def test_latency_follows_the_profile(call: Fixture) -> None:
    """Lower bounds only (a busy machine can only make things later): final and first audio wait."""
    profile = Profile("slow", stt_final_s=0.5, tts_first_audio=Latency(0.3, 0.3))
    app = create_app(TranscriptLibrary([call]), Dice(profile), pace=0.0)
    async with serve_app(app) as http_url:
        client = sdk(http_url)
        async with client.speech_to_text_realtime_streaming.connect(
            language_code="en-IN", encoding="mulaw", sample_rate="8000", silence_duration_ms="200"
        ) as ws:
            audio = call.utterance_audio(call.script.utterances[0]) + TAIL
            # Stamped before the audio goes: the emulator ends the speech once it has read it (audio
            # time, unpaced here), and the final comes 0.5 - 0.2 s of wall time after that. Stamps
            # taken on receipt would not bound it: a busy loop can read the VAD end late, just
            # before the final, and the gap between the two reads shrinks.
            before_send = time.monotonic()
            await ws.send_realtime_audio_input(RealtimeAudioInput(audio=b64(audio)))
            kinds = []
            async for msg in ws:
                kinds.append(type(msg).__name__)
                if kinds[-1] == "RealtimeTranscriptFinal":
                    assert time.monotonic() - before_send >= 0.29
                    assert "RealtimeVadSpeechEnd" in kinds, kinds  # the VAD end came first
                    break
        async with client.text_to_speech_streaming.connect(
            model="bulbul:v3", send_completion_event=True
        ) as ws:
            await ws.configure(target_language_code="en-IN", speaker="shubh", output_audio_codec="mulaw")
            before_text = time.monotonic()  # (as above: a lower bound from before the request)
            await ws.convert("Hello")
            await ws.flush()
            msg = await ws.recv()
            assert msg.type == "audio" and time.monotonic() - before_text >= 0.29


async def test_tts_socket_survives_bad_client_messages(call: Fixture) -> None:
    async with running(call) as (http_url, _):
        url = ws_url(http_url) + "/text-to-speech/ws?model=bulbul:v3&send_completion_event=true"
        async with websockets.connect(url, additional_headers={"api-subscription-key": "k"}) as ws:
            await ws.send(json.dumps({"type": "flush"}))  # before any config
            await ws.send(json.dumps({"type": "text", "data": {"text": "hi"}}))
            assert "config" in json.loads(await ws.recv())["data"]["message"]
            await ws.send(b"\x00\x01")
            assert json.loads(await ws.recv())["type"] == "error"
            await ws.send(
                json.dumps({"type": "config", "data": {"language_code": "xx-IN", "speaker": "shubh"}})
            )
            assert "language_code" in json.loads(await ws.recv())["data"]["message"]
            cfg = {"target_language_code": "en-IN", "speaker": "shubh", "speech_sample_rate": "8000",
                   "output_audio_codec": "linear16"}  # fmt: skip
            await ws.send(json.dumps({"type": "config", "data": cfg}))  # pipecat's spelling
            await ws.send(json.dumps({"type": "text", "data": {"text": "ok"}}))
            await ws.send(json.dumps({"type": "flush"}))
            audio = b""
            while (msg := json.loads(await ws.recv()))["type"] == "audio":
                audio += base64.b64decode(msg["data"]["audio"])
            assert msg["data"]["event_type"] == "final"
            assert len(audio) == 2 * int(0.3 * 8000)  # linear16; the 300 ms minimum


def test_tts_chunks_are_the_voice_encoded_chunk_by_chunk():
    """``synth_chunks`` (cached) gives what encoding each ``chunk_s`` slice of ``synth_pcm`` gives."""
    import base64

    from voxroute.emulators.sarvam import encode_audio, synth_chunks, synth_pcm

    for text in ("Hi.", "Your order A1745 is shipped and arrives on Friday.", "धन्यवाद। " * 9):
        for rate, codec in ((8000, "mulaw"), (8000, "alaw"), (16000, "linear16"), (22050, "wav")):
            pcm = synth_pcm(text, rate)
            step = int(0.1 * rate) * 2
            expected = [encode_audio(pcm[i : i + step], codec, rate) for i in range(0, len(pcm), step)]
            got = synth_chunks(text, rate, codec, 0.1)
            assert [base64.b64decode(c) for c in got] == expected, (text, codec)
            assert synth_chunks(text, rate, codec, 0.1) is got  # made once
