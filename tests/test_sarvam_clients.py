"""Our Sarvam clients (agent.providers.sarvam) against the emulator over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.test_sarvam_emulator import FINALS, SCRIPT
from voxroute.agent.fixture import Fixture, load
from voxroute.agent.providers.base import FRAME_BYTES, ProviderError, SpeechEnded, SpeechStarted, Transcript
from voxroute.agent.providers.sarvam import SarvamSTT
from voxroute.agent.providers.sarvam_tts import SarvamTTS
from voxroute.audio import ulaw_to_pcm16
from voxroute.emulators.profiles import ZERO, Dice
from voxroute.emulators.sarvam import EmulatorState, create_app
from voxroute.emulators.transcripts import TranscriptLibrary, write_synthetic_fixture
from voxroute.server import serve_app, ws_url


@pytest.fixture
def call(tmp_path: Path) -> Fixture:
    return load(write_synthetic_fixture(tmp_path, "synth", SCRIPT))


@contextlib.asynccontextmanager
async def running(call: Fixture, **kw) -> AsyncIterator[tuple[str, str, EmulatorState]]:
    """(ws base url, http base url, emulator state) of STT + TTS on one port."""
    app = create_app(TranscriptLibrary([call]), Dice(ZERO, seed=3), **{"pace": 0.0, **kw})
    async with serve_app(app) as http_url:
        yield ws_url(http_url), http_url, app.state.emulator


def pcm_frames(ulaw: bytes) -> list[bytes]:
    pcm = ulaw_to_pcm16(ulaw)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


async def transcribe(stream, frames: list[bytes], n_finals: int) -> list:  # noqa: ANN001
    """Send frames (as fast as possible) while collecting events until ``n_finals`` finals."""
    events: list = []

    async def send() -> None:
        for f in frames:
            await stream.send_audio(f)

    async def receive() -> None:
        async for ev in stream.events():
            events.append(ev)
            if sum(isinstance(e, Transcript) and e.final for e in events) == n_finals:
                return

    try:
        async with asyncio.timeout(10):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(send())
                tg.create_task(receive())
    except* ProviderError as eg:  # the sender and the receiver may both see a dropped socket
        raise eg.exceptions[0] from None
    return events


def finals(events: list) -> list[Transcript]:
    return [e for e in events if isinstance(e, Transcript) and e.final]


# ---------------------------------------------------------------- STT


@pytest.mark.parametrize("variant", ["realtime", "legacy"])
async def test_stt_stream_transcribes_fixture(call: Fixture, variant: str) -> None:
    async with running(call) as (ws_base, _, state):
        stt = SarvamSTT("k", ws_base, variant=variant, silence_duration_ms=200)
        stream = await stt.connect("en-IN", tag="call-1")
        try:
            events = await transcribe(stream, pcm_frames(call.ulaw + b"\xff" * 4000), len(FINALS))
        finally:
            await stream.aclose()
        assert [t.text for t in finals(events)] == FINALS
        assert sum(isinstance(e, SpeechStarted) for e in events) == 4
        assert sum(isinstance(e, SpeechEnded) for e in events) == 4
        if variant == "realtime":
            assert any(isinstance(e, Transcript) and not e.final for e in events)  # partials
            assert {t.language for t in finals(events)} == {"en-IN"}  # fixed language: not reported
        else:
            assert [t.language for t in finals(events)] == ["en-IN", "hi-IN", "en-IN", "en-IN"]
        assert state.handshakes[f"stt_{variant}"] == 1


async def test_stt_realtime_auto_reports_language(call: Fixture) -> None:
    async with running(call) as (ws_base, _, _state):
        stream = await SarvamSTT("k", ws_base).connect("auto")
        try:
            events = await transcribe(stream, pcm_frames(call.ulaw[: 7000 * 8]), 2)
        finally:
            await stream.aclose()
        assert [(t.text, t.language) for t in finals(events)] == [
            (FINALS[0], "en-IN"),
            (FINALS[1], "hi-IN"),
        ]


@pytest.mark.parametrize("variant", ["realtime", "legacy"])
async def test_stt_flush_finalises_immediately(call: Fixture, variant: str) -> None:
    """Our endpointer decides first: flush() returns the text without waiting for the server's VAD."""
    async with running(call) as (ws_base, _, _state):
        stream = await SarvamSTT("k", ws_base, variant=variant, silence_duration_ms=2000).connect("en-IN")
        try:
            for f in pcm_frames(call.utterance_audio(call.script.utterances[0])):
                await stream.send_audio(f)
            await stream.flush()
            async with asyncio.timeout(5):
                async for ev in stream.events():
                    if isinstance(ev, Transcript) and ev.final:
                        assert ev.text == FINALS[0]
                        break
        finally:
            await stream.aclose()


async def test_stt_socket_drop_is_disconnected(call: Fixture) -> None:
    async with running(call) as (ws_base, _, state):
        state.dice.force("stt", "drop")
        stream = await SarvamSTT("k", ws_base).connect("en-IN", tag="call-9")
        with pytest.raises(ProviderError) as err:
            await transcribe(stream, pcm_frames(call.ulaw), 99)
        await stream.aclose()
        assert err.value.kind == "disconnected"
        assert [(f.service, f.fault, f.tag) for f in state.faults] == [("stt", "drop", "call-9")]


async def test_stt_bad_key_and_fatal_error(call: Fixture) -> None:
    async with running(call, api_key="right") as (ws_base, _, _state):
        with pytest.raises(ProviderError) as err:
            await SarvamSTT("wrong", ws_base).connect("en-IN")
        assert err.value.kind == "http_error" and err.value.status == 403
        # an unsupported model: the server sends a fatal error and closes with 4000
        stream = await SarvamSTT("right", ws_base, model="saaras:v9").connect("en-IN")
        with pytest.raises(ProviderError) as err2:
            async with asyncio.timeout(5):
                async for _ in stream.events():
                    pass
        await stream.aclose()
        assert err2.value.kind == "stream_error" and err2.value.status == 400


async def test_stt_unreachable_is_disconnected() -> None:
    with pytest.raises(ProviderError) as err:
        await SarvamSTT("k", "ws://127.0.0.1:9", connect_timeout_s=2).connect("en-IN")
    assert err.value.kind == "disconnected"


# ---------------------------------------------------------------- TTS websocket


async def speak(tts: SarvamTTS, text: str, **kw) -> tuple[bytes, object]:
    stream = await tts.open("hi-IN", **kw)
    await stream.send_text(text)
    await stream.flush()
    audio = b""
    async with asyncio.timeout(10):
        async for chunk in stream.audio():
            audio += chunk
    return audio, stream


async def test_tts_stream_returns_pcm_of_the_text(call: Fixture) -> None:
    text = "Aapka order kal tak pahunch jayega."
    async with running(call) as (ws_base, http, state):
        tts = SarvamTTS("k", ws_base, http)  # no context: no spare sockets, one handshake per utterance
        try:
            pcm, stream = await speak(tts, text, tag="t1")
        finally:
            await tts.aclose()
        assert len(pcm) == 2 * int(0.065 * len(text) * 8000)  # PCM16: two bytes per sample
        samples = np.frombuffer(pcm, "<i2").astype(float)
        assert np.sqrt((samples**2).mean()) > 500
        assert not stream.warm and state.handshakes["tts_ws"] == 1
        # asked for PCM16 8 kHz by default (a call asks for its carrier's format: test_wire_audio.py)
        assert state.tts_utterances == [
            {"conn": 1, "tag": "t1", "fault": None, "codec": "linear16", "rate": 8000}
        ]


async def test_tts_warm_socket_skips_the_handshake(call: Fixture) -> None:
    async with running(call) as (ws_base, http, state):
        async with SarvamTTS("k", ws_base, http) as tts:
            async with asyncio.timeout(5):
                await tts.wait_warm("hi-IN")
            before_first = state.handshakes["tts_ws"]
            _, first = await speak(tts, "Pehla jawab.")
            before_second = state.handshakes["tts_ws"]
            _, second = await speak(tts, "Doosra jawab.")
        assert first.warm and second.warm
        # each utterance ran on a socket that was already connected when the utterance started
        served = [u["conn"] for u in state.tts_utterances]
        assert served[0] <= before_first and served[1] <= before_second


async def test_tts_spare_is_used_without_new_handshake(call: Fixture) -> None:
    """Deterministic count: after the warm-up, an utterance adds no handshake of its own."""
    async with running(call) as (ws_base, http, state):
        async with SarvamTTS("k", ws_base, http) as tts:
            async with asyncio.timeout(5):
                await tts.wait_warm("en-IN")
            assert tts.handshakes == 1
            stream = await tts.open("en-IN")
            assert stream.warm
            await stream.send_text("Hello")
            await stream.flush()
            async for _ in stream.audio():
                pass
            assert state.tts_utterances[0]["conn"] == 1  # served by the pre-warmed socket


async def test_tts_cancel_closes_promptly(call: Fixture) -> None:
    async with running(call, pace=1.0) as (ws_base, http, state):  # real-time pacing: 20 s of audio
        tts = SarvamTTS("k", ws_base, http)
        try:
            stream = await tts.open("en-IN")
            await stream.send_text("This is a long answer that the caller will interrupt. " * 6)
            await stream.flush()
            chunks = 0
            started = time.monotonic()
            async with asyncio.timeout(5):
                async for _ in stream.audio():
                    chunks += 1
                    if chunks == 1:
                        await stream.cancel()  # barge-in
            assert time.monotonic() - started < 3  # far less than the 20 s utterance
            assert chunks <= 3
            # the emulator survives a client that hangs up mid-utterance; the next one works
            pcm, _ = await speak(tts, "Ji.")
            assert pcm
        finally:
            await tts.aclose()
        assert state.handshakes["tts_ws"] == 2


@pytest.mark.parametrize(
    ("fault", "kind", "after_first"),
    [
        ("http_500", "http_500", False),
        ("http_429", "http_429", False),
        ("error_midstream", "stream_error", True),
        ("malformed", "malformed", False),
        ("drop", "disconnected", True),
    ],
)
async def test_tts_stream_faults(call: Fixture, fault: str, kind: str, after_first: bool) -> None:
    async with running(call) as (ws_base, http, state):
        tts = SarvamTTS("k", ws_base, http)
        try:
            state.dice.force("tts", fault)
            with pytest.raises(ProviderError) as err:
                await speak(tts, "Namaste, kaise madad karoon?", tag="turn-4")
            assert err.value.kind == kind and err.value.after_first is after_first
            pcm, _ = await speak(tts, "Theek hai.")  # the provider recovers on a new socket
            assert pcm
        finally:
            await tts.aclose()
        assert [(f.service, f.fault, f.tag) for f in state.faults] == [("tts", fault, "turn-4")]


async def test_tts_hang_yields_nothing(call: Fixture) -> None:
    async with running(call) as (ws_base, http, state):
        tts = SarvamTTS("k", ws_base, http)
        try:
            state.dice.force("tts", "hang")
            stream = await tts.open("en-IN")
            await stream.send_text("Hello there")
            await stream.flush()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # the caller's deadline decides; nothing arrives
                    async for _ in stream.audio():
                        pytest.fail("a hung utterance produced audio")
            await stream.cancel()
        finally:
            await tts.aclose()


async def test_tts_bad_key(call: Fixture) -> None:
    async with running(call, api_key="right") as (ws_base, http, _state):
        tts = SarvamTTS("wrong", ws_base, http)
        with pytest.raises(ProviderError) as err:
            await tts.open("en-IN")
        assert err.value.kind == "http_error" and err.value.status == 403
        with pytest.raises(ProviderError) as err2:
            await tts.synthesize("hi", "en-IN")
        assert err2.value.kind == "http_error" and err2.value.status == 403
        await tts.aclose()


# ---------------------------------------------------------------- TTS REST


async def test_tts_rest_synthesize(call: Fixture) -> None:
    async with running(call) as (ws_base, http, _state):
        async with SarvamTTS("k", ws_base, http, warm=False) as tts:
            pcm = await tts.synthesize("Ek minute.", "hi-IN")
        assert len(pcm) == 2 * int(0.065 * 10 * 8000)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("http_500", "http_500"),
        ("http_429", "http_429"),
        ("malformed", "malformed"),
        ("drop", "disconnected"),
    ],
)
async def test_tts_rest_faults(call: Fixture, fault: str, kind: str) -> None:
    async with running(call) as (ws_base, http, state):
        tts = SarvamTTS("k", ws_base, http)
        try:
            state.dice.force("tts", fault)
            with pytest.raises(ProviderError) as err:
                await tts.synthesize("Ek minute.", "hi-IN", tag="bridge")
            assert err.value.kind == kind
            if fault == "http_429":
                assert err.value.retry_after_s == 1.0 and err.value.status == 429
            assert await tts.synthesize("Ek minute.", "hi-IN")
        finally:
            await tts.aclose()
        assert [(f.fault, f.tag) for f in state.faults] == [(fault, "bridge")]


async def test_tts_rejects_unsupported_language() -> None:
    tts = SarvamTTS("k", "ws://127.0.0.1:9", "http://127.0.0.1:9")
    with pytest.raises(ProviderError) as err:
        await tts.open("ur-IN")
    assert err.value.kind == "http_error"


async def test_tts_spare_is_kept_alive_by_pings(call: Fixture) -> None:
    """The emulator closes sockets idle for 0.3 s; pings every 30 ms keep the spare open."""
    async with running(call, idle_timeout_s=0.3) as (ws_base, http, state):
        async with SarvamTTS("k", ws_base, http, ping_interval_s=0.03) as tts:
            async with asyncio.timeout(5):
                await tts.wait_warm("hi-IN")
            await asyncio.sleep(0.6)
            assert tts.warm_ready("hi-IN")
            pcm, stream = await speak(tts, "Still here.")
            assert pcm and stream.warm
        assert state.handshakes["tts_ws"] <= 2  # the spare, plus at most its replacement


async def test_tts_sockets_of_concurrent_utterances_go_back_to_the_pool(call: Fixture) -> None:
    """Three utterances at once (many calls in one process): each socket returns to the pool, so the
    next three need no handshake; past the most recent, spares idle for ``spare_idle_s`` are closed."""
    async with running(call) as (ws_base, http, state):
        async with SarvamTTS("k", ws_base, http) as tts:
            async with asyncio.timeout(5):
                await tts.wait_warm("hi-IN")
            await asyncio.gather(*(speak(tts, f"Jawab {i}.") for i in range(3)))
            assert tts.spares("hi-IN") >= 3  # the three (and the warm-up that replaced the first)
            # the client's own count: a warm-up still connecting has counted already (the
            # emulator's count would come when the server accepts it)
            handshakes = tts.handshakes
            results = await asyncio.gather(*(speak(tts, f"Doosra {i}.") for i in range(3)))
            assert all(stream.warm for _, stream in results)  # type: ignore[attr-defined]
            assert tts.handshakes == handshakes
            now = time.monotonic()
            pooled = tts.spares("hi-IN")
            assert pooled >= 3 and tts.idle_spares(now) == []  # none idle for a minute yet
            idle = tts.idle_spares(now + 61)  # a minute on: all but the most recently returned
            assert len(idle) == pooled - 1 and tts.spares("hi-IN") == 1
            for spare in idle:
                spare.ws.transport.abort()


async def test_tts_pool_keeps_at_most_max_spares(call: Fixture) -> None:
    async with running(call) as (ws_base, http, _state):
        async with SarvamTTS("k", ws_base, http, max_spares=2) as tts:
            async with asyncio.timeout(5):
                await tts.wait_warm("hi-IN")
            await asyncio.gather(*(speak(tts, f"Jawab {i}.") for i in range(4)))
            assert tts.spares("hi-IN") == 2
