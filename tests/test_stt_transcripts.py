"""Fixtures marked ``stt: transcripts`` (issue 17): a recorded call replays with its reviewed words.

The STT emulator recognises fixture audio by matching its bytes; a recording's audio matches
nothing. For such a fixture the replayer registers the call's utterances (text, language, timing)
with the emulator under the call's SID before the media stream opens, and the emulator says them
as the utterances' speech arrives on that call's STT sockets, whatever the audio.

The audio here is a committed fixture's, altered (quieter, with background noise mixed in) so
that the emulator's matcher knows none of it; the tests check that first. The timing logic is
sans-I/O (emulators/transcripts.py) and tested without sockets; then the emulator's control
endpoint and STT sockets on 127.0.0.1; then whole calls through the runtime: a fixture made by the
``fixture from-wav`` path, and two recorded calls at once, each with its own words and routes.
"""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from tests.conftest import FAST_VOICE
from voxroute.agent.fixture import Fixture, FixtureError, load, write_ulaw_wav
from voxroute.agent.providers.sarvam_protocol import realtime_stt_url, rt_audio_input
from voxroute.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voxroute.emulators.profiles import Dice, get_profile
from voxroute.emulators.sarvam import create_stt_app
from voxroute.emulators.stack import fixture_library
from voxroute.emulators.transcripts import (
    UNRECOGNISED,
    SegmentEnded,
    SegmentStarted,
    TimedTranscripts,
    VadSegmenter,
    parse_plan,
    timed_plan,
)
from voxroute.server import serve_app, ws_url

FRAME = 160  # 20 ms of 8 kHz mu-law
SILENCE = b"\xff"


def altered_pcm(fixture: Fixture, seed: int) -> np.ndarray:
    """The fixture's caller audio at 80 % of its level with background noise: what a recording of
    the same words sounds like, and bytes the STT emulator has never seen."""
    pcm = np.frombuffer(ulaw_to_pcm16(fixture.ulaw), "<i2").astype(np.float64)
    noisy = 0.8 * pcm + np.random.default_rng(seed).normal(0.0, 50.0, len(pcm))
    return np.clip(np.rint(noisy), -32768, 32767).astype("<i2")


def recorded_copy(name: str, directory: Path, *, seed: int = 1, stt: str | None = "transcripts") -> Fixture:
    """A committed fixture's script over its altered audio, as a fixture of its own."""
    source = load(name)
    new = f"{name}_recorded"
    write_ulaw_wav(directory / f"{new}.wav", pcm16_to_ulaw(altered_pcm(source, seed).tobytes()))
    script = json.loads(source.json_path.read_text(encoding="utf-8"))
    script.update(call=new, audio=f"{new}.wav")
    if stt is not None:
        script["stt"] = stt
    path = directory / f"{new}.json"
    path.write_text(json.dumps(script, ensure_ascii=False), encoding="utf-8")
    return load(path)


def call_audio(fixture: Fixture, lead_ms: int = 400, between_ms: int = 1500) -> bytes:
    """A carrier's view of the call: digital silence, each utterance's slice, silence between."""
    out = SILENCE * (8 * lead_ms)
    for u in fixture.script.utterances:
        if not u.is_dtmf:
            out += fixture.utterance_audio(u) + SILENCE * (8 * between_ms)
    return out


def spoken(fixture: Fixture) -> list[str]:
    return [u.text or "" for u in fixture.script.utterances if not u.is_dtmf]


# ---------------------------------------------------------------- sans-I/O


def test_the_matcher_knows_none_of_the_altered_audio(tmp_path):
    library = fixture_library()
    for name in ("order_status", "pause_mid_sentence", "billing_dispute"):
        original, recorded = load(name), recorded_copy(name, tmp_path)
        for u in (u for u in original.script.utterances if not u.is_dtmf):
            assert library.match(original.utterance_audio(u)) is not None  # the committed audio: known
            assert library.match(recorded.utterance_audio(u)) is None, (name, u.text)


def transcribe(session, audio: bytes, silence_ms: int = 200) -> list[tuple[int, str]]:
    """Feed ``audio`` to the emulator's VAD in 20 ms frames, as an STT connection does: each
    final as (utterance index after it, text); every partial must lead up to its final."""
    vad = VadSegmenter(silence_ms=silence_ms)
    finals: list[tuple[int, str]] = []
    partials: list[str] = []
    for i in range(0, len(audio), FRAME):
        for ev in vad.feed(audio[i : i + FRAME]):
            if isinstance(ev, SegmentStarted):
                session.begin(ev.at_s)
                partials = []
            elif isinstance(ev, SegmentEnded):
                text, _language = session.final(ev.audio, ev.at_s)
                session.checkpoint()()
                for p in partials:
                    assert text.startswith(p), (p, text)
                finals.append((session.cursor.utterance, text))
        if vad.in_speech and i % 1600 == 0:  # every 200 ms of speech
            got = session.partial(vad.current())
            if got:
                partials.append(got[0])
    return finals


@pytest.mark.parametrize("name", ["order_status", "pause_mid_sentence", "talk_over", "hindi_order_status"])
def test_finals_say_each_utterance_in_order_by_timing(tmp_path, name):
    fixture = recorded_copy(name, tmp_path)
    plan = TimedTranscripts(timed_plan(fixture))
    finals = transcribe(plan.session(fixture.script.language), call_audio(fixture))
    said = [" ".join(t for i, t in finals if i == k) for k in range(len(spoken(fixture)))]
    assert said == spoken(fixture)
    assert plan.said == len(spoken(fixture)) and plan.finals == len(finals)
    if name == "pause_mid_sentence":  # the caller pauses mid-sentence: a final each side of a pause
        assert len([t for i, t in finals if i == 1]) >= 2, finals


def test_speech_past_the_last_utterance_is_unrecognised(tmp_path):
    fixture = recorded_copy("order_status", tmp_path)
    plan = TimedTranscripts(timed_plan(fixture))
    audio = call_audio(fixture) + fixture.utterance_audio(fixture.script.utterances[0]) + SILENCE * 4000
    finals = transcribe(plan.session("en-IN"), audio)
    texts = [t for _, t in finals]
    extra = texts.index(UNRECOGNISED)
    assert " ".join(texts[:extra]) == " ".join(spoken(fixture))
    assert set(texts[extra:]) == {UNRECOGNISED}  # both segments of the repeated "Hi, | can you ..."


def test_a_replacement_connection_carries_on_after_the_last_final_sent(tmp_path):
    """A dropped STT socket: the runtime reconnects and replays the audio after the last final it
    got. A final made but never sent is said again; nothing is skipped or said twice."""
    fixture = recorded_copy("order_status", tmp_path)
    plan = TimedTranscripts(timed_plan(fixture))
    audio = call_audio(fixture)
    first = plan.session("en-IN")
    vad = VadSegmenter(silence_ms=200)
    sent: list[str] = []
    resume_at = None  # byte offset of the audio after the last final sent
    unsent = None
    for i in range(0, len(audio), FRAME):
        for ev in vad.feed(audio[i : i + FRAME]):
            if isinstance(ev, SegmentStarted):
                first.begin(ev.at_s)
            elif isinstance(ev, SegmentEnded):
                text, _ = first.final(ev.audio, ev.at_s)
                if first.cursor.utterance == 0:
                    first.checkpoint()()
                    sent.append(text)
                    resume_at = i + FRAME
                else:
                    unsent = text
        if unsent is not None:
            break  # the socket drops with a final of utterance 1 made and not sent
    assert sent == ["Hi,", "can you tell me where my order is?"] and unsent
    assert plan.committed.utterance == 0 and resume_at is not None
    finals = transcribe(plan.session("en-IN"), audio[resume_at:])
    assert " ".join(t for _, t in finals) == " ".join(spoken(fixture)[1:])


def test_a_plan_from_the_network_is_checked_field_by_field(tmp_path):
    plan = [u.as_json() for u in timed_plan(recorded_copy("order_status", tmp_path))]
    assert [u.text for u in parse_plan(plan)] == spoken(load("order_status"))
    bad = [
        ([], "utterances must be a list of 1-"),
        ({"text": "hi"}, "utterances must be a list"),
        ([plan[0], "x"], r"utterances\[1\] must be an object"),
        ([{**plan[0], "text": 5}], r"utterances\[0\]\.text must be a string"),
        ([{**plan[0], "duration_ms": -1}], r"utterances\[0\]\.duration_ms must be an integer"),
        ([{**plan[0], "duration_ms": True}], r"duration_ms must be an integer"),
        ([{**plan[0], "speech_ms": [5]}], r"speech_ms must be \[start, end\]"),
        ([{**plan[0], "speech_ms": [900, 100]}], "must lie within duration_ms"),
        ([{**plan[0], "voiced_ms": 10**6}], "must lie within duration_ms"),
        ([{**plan[0], "language": ["en"]}], "language must be a language code or null"),
    ]
    for items, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_plan(items)


def test_a_malformed_stt_value_is_a_clear_fixture_error(tmp_path):
    assert load("order_status").script.stt == "audio"  # absent: the audio is matched, as before
    assert recorded_copy("order_status", tmp_path).script.stt == "transcripts"
    for value in ("words", "", 1, None, ["transcripts"]):
        path = recorded_copy("order_status", tmp_path).json_path
        script = json.loads(path.read_text(encoding="utf-8"))
        script["stt"] = value
        path.write_text(json.dumps(script), encoding="utf-8")
        with pytest.raises(FixtureError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and "stt must be one of 'audio', 'transcripts'" in message, message


# ---------------------------------------------------------------- the emulator on 127.0.0.1


async def stt_finals(base: str, call_sid: str | None, audio: bytes) -> list[str]:
    """One realtime STT socket, tagged as the runtime tags its own: the finals for ``audio``."""
    headers = {"api-subscription-key": "k"}
    if call_sid is not None:
        headers["X-Voxroute-Tag"] = f"{call_sid}:stt"
    url = realtime_stt_url(ws_url(base), "en-IN", encoding="mulaw", sample_rate=8000)
    finals = []
    async with websockets.connect(url, additional_headers=headers) as ws:
        for i in range(0, len(audio), 8 * FRAME):  # 160 ms per message, faster than real time
            await ws.send(rt_audio_input(audio[i : i + 8 * FRAME]))
            await asyncio.sleep(0)
        await ws.send(json.dumps({"event": "end"}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg["event"] == "transcript.final":
                finals.append(msg["text"])
    return finals


async def test_the_emulator_says_each_calls_own_words_on_its_sockets(tmp_path):
    calls = {
        "CA" + "1" * 32: recorded_copy("order_status", tmp_path),
        "v3:" + "2" * 40: recorded_copy("billing_dispute", tmp_path),  # Telnyx ids hold a colon
    }
    app = create_stt_app(fixture_library(), Dice(get_profile("zero"), 0))
    async with serve_app(app) as base, httpx.AsyncClient(base_url=base) as http:
        for sid, fixture in calls.items():
            plan = [u.as_json() for u in timed_plan(fixture)]
            r = await http.post("/_emulator/transcripts", json={"call_sid": sid, "utterances": plan})
            assert r.status_code == 200 and r.json()["utterances"] == len(plan)
        unregistered = recorded_copy("booking_change", tmp_path)
        got = await asyncio.gather(
            *(stt_finals(base, sid, call_audio(f)) for sid, f in calls.items()),
            stt_finals(base, "CA" + "3" * 32, call_audio(unregistered)),
        )
        for finals, fixture in zip(got, calls.values(), strict=False):
            assert " ".join(finals) == " ".join(spoken(fixture))
        assert got[2] and set(got[2]) == {UNRECOGNISED}  # a call nobody registered: audio matching
        for sid, fixture in calls.items():
            r = await http.delete(f"/_emulator/transcripts/{sid}")
            assert r.json()["said"] == len(spoken(fixture)), r.json()
        assert (await http.delete(f"/_emulator/transcripts/{'CA' + '1' * 32}")).status_code == 404
        for body, message in [
            ([], "the body must be a JSON object"),
            ({"utterances": plan}, "call_sid must be a string"),
            ({"call_sid": "CA1", "utterances": [{"text": "hi"}]}, "utterances[0].duration_ms must be"),
        ]:
            r = await http.post("/_emulator/transcripts", json=body)
            assert r.status_code == 400 and message in r.json()["error"], r.text


# ---------------------------------------------------------------- whole calls through the runtime


def expected(fixture: Fixture) -> tuple[list[str], list[str | None]]:
    items = [u for u in fixture.script.utterances if u.expect_turn]
    return [u.text or "" for u in items], [u.expect_class for u in items]


def assert_replayed_with_its_words(call: dict, fixture: Fixture, source: Fixture) -> None:
    texts, classes = expected(source)
    assert call["ended"] == "completed", call.get("error")
    assert len(call["turns"]) == len(texts), [t["transcript"] for t in call["turns"]]
    assert [" ".join(t["transcript"].split()) for t in call["turns"]] == texts
    assert [t["route"]["class"] for t in call["turns"]] == classes
    assert call["stt_transcripts"]["said"] == len(spoken(fixture)), call["stt_transcripts"]


async def test_a_recording_made_into_a_fixture_replays_with_its_reviewed_words(tmp_path, monkeypatch):
    """The ``fixture from-wav`` path on a recording (16 kHz, noisy): the fixture says
    ``stt: transcripts``; with its transcripts as a person reviewed them (here: the words the
    caller said, in place of the offline Whisper's), it replays with those words, as many turns
    and the routes of the original call."""
    from voxroute.agent import fixturegen
    from voxroute.agent.providers.local import resample_any
    from voxroute.replay import local_stack, replay_fixture

    source = load("order_status")
    wav = tmp_path / "CA-recorded.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(resample_any(altered_pcm(source, seed=7).tobytes(), 8000, 16000))

    async def reviewed(pieces: list[bytes]) -> list[str]:
        assert len(pieces) == len(spoken(source))
        return spoken(source)

    monkeypatch.setattr(fixturegen, "transcribe", reviewed)
    made_path = await asyncio.to_thread(fixturegen.from_wav, wav, tmp_path / "made")
    assert json.loads(made_path.read_text(encoding="utf-8"))["stt"] == "transcripts"
    made = load(made_path)
    assert made.script.stt == "transcripts" and made.script.reviewed is False
    assert [u.text for u in made.script.utterances] == spoken(source)
    library = fixture_library()
    assert all(library.match(made.utterance_audio(u)) is None for u in made.script.utterances)

    async with local_stack("reference", 3, [made], voice_speed=FAST_VOICE) as stack:
        call = await replay_fixture(made, stack.server_url, speed=2.0, config=stack.config)
    assert_replayed_with_its_words(call, made, source)


async def test_two_recorded_calls_at_once_each_get_their_own_words(tmp_path):
    fixtures = [recorded_copy("order_status", tmp_path, seed=11), recorded_copy("billing_dispute", tmp_path)]
    from voxroute.replay import local_stack, replay_fixture

    async with local_stack("reference", 5, fixtures, voice_speed=FAST_VOICE) as stack:
        calls = await asyncio.gather(
            *(replay_fixture(f, stack.server_url, speed=2.0, config=stack.config) for f in fixtures)
        )
    for call, fixture in zip(calls, fixtures, strict=True):
        assert_replayed_with_its_words(call, fixture, fixture)


async def test_a_recorded_call_replays_with_its_words_over_sip(tmp_path):
    """The SIP dialler chooses its Call-ID first, so the runtime's call id is known and the
    words registered before the INVITE: the same turns and routes as over Twilio."""
    source = load("order_status")
    fixture = recorded_copy("order_status", tmp_path, seed=5)
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:2]})
    from voxroute.replay import local_stack, replay_fixture

    async with local_stack("reference", 0, [fixture], sip=True) as stack:
        result = await replay_fixture(fixture, stack.server_url, config=stack.config, carrier="sip")
        call = stack.services.call_json(result["call_sid"])
    assert result["carrier"]["completed"] and not result["carrier"]["errors"], result["carrier"]["errors"]
    assert result["stt_transcripts"]["said"] == 2, result["stt_transcripts"]
    assert call is not None and call["carrier"] == "sip" and call["ended"] == "completed"
    texts, classes = expected(source)
    assert [" ".join(t["transcript"].split()) for t in call["turns"]] == texts[:2]
    assert [t["route"]["class"] for t in call["turns"]] == classes[:2]


async def test_a_server_started_elsewhere_gets_the_words_through_stt_emulator(tmp_path, monkeypatch):
    """``voxroute replay --server URL --stt-emulator SARVAM_URL``: the replayer knows the server
    only by its URL, and the Sarvam emulator it uses only from the option."""
    from voxroute import replay as replay_module

    fixture = recorded_copy("order_status", tmp_path, seed=9)
    async with replay_module.local_stack("reference", 0, [fixture], voice_speed=FAST_VOICE) as stack:
        monkeypatch.setattr(replay_module, "_STT_CONTROL", {})  # as if the server ran elsewhere
        result = await replay_module.replay(
            [str(fixture.json_path)],
            server=stack.server_url,
            fast=True,
            config=stack.config,
            stt_emulator=stack.emulators.sarvam_url,
        )
    [call] = result["calls"]
    assert_replayed_with_its_words(call, fixture, load("order_status"))
