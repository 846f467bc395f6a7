"""Agent audio in the carrier's own encoding (issue 19): the link names its wire format, the TTS is
asked for it, and its bytes reach the caller untouched (no G.711 decode and re-encode on the way out).

Whole calls over real sockets on 127.0.0.1: a Twilio call's outbound audio is the Sarvam emulator's
mu-law byte for byte; an A-law SIP call gets A-law because the TTS was asked for ``alaw``; the other
carriers' calls ask the TTS for their stream's format. Then the parts: the player's pacing units,
the phrase cache per format, the Sarvam client's codecs, the emulator refusing a codec Sarvam does
not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from voxroute.agent.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from voxroute.agent.fixture import load
from voxroute.agent.player import Player
from voxroute.agent.providers.sarvam_protocol import strip_riff
from voxroute.agent.providers.sarvam_tts import SarvamTTS
from voxroute.audio import (
    ALAW_8K,
    MULAW_8K,
    PCM16_8K,
    WireFormat,
    pcm16_to_alaw,
    pcm16_to_ulaw,
)
from voxroute.emulators.profiles import ZERO, Dice
from voxroute.emulators.sarvam import EmulatorState, create_tts_app, synth_pcm
from voxroute.server import serve_app, ws_url

G711 = ("pcm16_to_ulaw", "ulaw_to_pcm16", "pcm16_to_alaw", "alaw_to_pcm16")


@contextlib.contextmanager
def runtime_g711_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the G.711 conversions the runtime makes (its ``voxroute.*`` modules, the emulators'
    own work left out: a call from any emulator frame is not counted)."""
    import voxroute.audio as audio

    calls: Counter[str] = Counter()

    def spy(name: str, fn):
        def counted(data: bytes) -> bytes:
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_globals.get("__name__", "").startswith("voxroute.emulators"):
                    return fn(data)
                frame = frame.f_back
            calls[name] += 1
            return fn(data)

        return counted

    originals = {name: getattr(audio, name) for name in G711}
    for module_name, module in list(sys.modules.items()):
        if (
            module is None
            or not module_name.startswith("voxroute.")
            or module_name.startswith("voxroute.emulators")
        ):
            continue
        for name, fn in originals.items():
            if getattr(module, name, None) is fn:
                monkeypatch.setattr(module, name, spy(name, fn))
    yield calls


def _nonzero(data: bytes, zeros: bytes) -> bytes:
    """``data`` without its G.711 codes for a zero sample (silence the carrier fills gaps with)."""
    return data.translate(None, zeros)


def greeting_config(greeting: str = "Hello there."):
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["default"]["agent"] = {"greeting": greeting}
    return parse_config(data)


# ---------------------------------------------------------------- whole calls


async def test_a_twilio_call_plays_the_tts_mu_law_byte_for_byte(monkeypatch, tmp_path: Path) -> None:
    from voxroute.replay import local_stack, replay_fixture

    fixture = load("order_status")
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:1]})
    cfg = load_config()
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        state: EmulatorState = stack.emulators.tts_app.state.emulator
        with runtime_g711_calls(monkeypatch) as calls:
            raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg, record_dir=tmp_path)
    assert raw["ended"] == "completed", raw.get("error")
    chunks = [c for t in raw["turns"] for c in t["chunks"]]
    assert chunks
    # the TTS was asked for what Twilio plays, and the runtime encoded nothing on the way out
    assert {(u["codec"], u["rate"]) for u in state.tts_utterances} == {("mulaw", 8000)}
    assert {(r["codec"], r["rate"]) for r in state.tts_rest} <= {("mulaw", 8000)}
    assert calls["pcm16_to_ulaw"] == 0 and calls["pcm16_to_alaw"] == 0
    # what Twilio got holds each reply chunk exactly as the emulator made it (its synthetic voice
    # for that text in mu-law), gaps of silence aside
    heard = strip_riff((tmp_path / f"{fixture.name}.agent.wav").read_bytes())
    for text in chunks:
        made = pcm16_to_ulaw(synth_pcm(text, 8000))
        assert _nonzero(made, b"\xff\x7f") in _nonzero(heard, b"\xff\x7f"), text


@pytest.mark.parametrize(
    ("carrier", "env", "codec", "rate"),
    [
        ("telnyx", {"TELNYX_CODEC": "PCMA"}, "alaw", 8000),
        ("exotel", {"EXOTEL_SAMPLE_RATE": "16000"}, "linear16", 16000),
        ("plivo", {"PLIVO_CONTENT_TYPE": "audio/x-mulaw;rate=8000"}, "mulaw", 8000),
    ],
)
async def test_each_carrier_asks_the_tts_for_its_streams_format(
    monkeypatch, carrier, env, codec, rate
) -> None:
    from voxroute.replay import local_stack, replay_fixture

    for name in ("EXOTEL_SAMPLE_RATE", "PLIVO_CONTENT_TYPE", "TELNYX_CODEC", "TELNYX_SAMPLE_RATE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fixture = load("order_status")
    fixture.script = fixture.script.model_copy(
        update={"agent_first": True, "utterances": fixture.script.utterances[:1]}
    )
    cfg = greeting_config()
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        state: EmulatorState = stack.emulators.tts_app.state.emulator
        raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=cfg, carrier=carrier)
    assert not raw.get("error"), raw.get("error")
    assert raw["turns"][0]["kind"] == "greeting" and raw["turns"][0]["heard"] == "Hello there."
    assert state.tts_utterances and {(u["codec"], u["rate"]) for u in state.tts_utterances} == {(codec, rate)}
    assert {(r["codec"], r["rate"]) for r in state.tts_rest} <= {(codec, rate)}


async def test_an_alaw_sip_call_gets_alaw_from_the_tts_untouched(monkeypatch) -> None:
    from voxroute.emulators.sip_carrier import SipPhone
    from voxroute.replay import local_stack
    from voxroute.telephony.sip import rtp
    from voxroute.telephony.sip.service import sip_edge

    greeting = "Hello there, this is the shop."
    made = pcm16_to_alaw(synth_pcm(greeting, 8000))  # what the emulator makes when asked for alaw
    want = _nonzero(made, b"\xd5\x55")
    heard = bytearray()
    got_it = asyncio.Event()

    def on_packet(packet: rtp.RtpPacket, _arrival: float) -> None:
        if packet.payload_type == 8:
            heard.extend(packet.payload)
            if want in _nonzero(bytes(heard), b"\xd5\x55"):
                got_it.set()

    fixture = load("order_status")
    cfg = greeting_config(greeting)
    async with local_stack("zero", 0, [fixture], cfg) as stack:
        state: EmulatorState = stack.emulators.tts_app.state.emulator
        async with sip_edge(stack.services, sip="127.0.0.1:0") as edge, SipPhone.running() as phone:
            assert edge.sip_url is not None
            with runtime_g711_calls(monkeypatch) as calls:
                pc = await phone.call(
                    edge.sip_url,
                    headers=[("X-Tenant", "default"), ("X-Language", "en-IN")],
                    on_packet=on_packet,
                    codecs=[(8, "PCMA")],  # an A-law only phone
                )
                async with asyncio.timeout(15):
                    assert await pc.answered
                    await got_it.wait()  # the greeting, byte for byte
                phone.hangup(pc)
    assert pc.call.media is not None and pc.call.media.codec == "PCMA"
    assert {(u["codec"], u["rate"]) for u in state.tts_utterances} == {("alaw", 8000)}
    # the phone sent no audio: any conversion at all would have been on the way out
    assert sum(calls.values()) == 0, calls


# ---------------------------------------------------------------- the player's units


class Link:
    def __init__(self, fmt: WireFormat) -> None:
        self.audio_format = fmt
        self.sent: list[bytes] = []

    async def send_audio(self, data: bytes) -> None:
        self.sent.append(data)


@pytest.mark.parametrize(
    ("fmt", "per_ms"), [(MULAW_8K, 8), (ALAW_8K, 8), (PCM16_8K, 16), (WireFormat("l16le", 16000), 32)]
)
async def test_the_player_counts_time_in_the_links_bytes_per_ms(fmt: WireFormat, per_ms: int) -> None:
    link = Link(fmt)
    player = Player(link, lambda owner, source, now: None, lead_ms=10_000, slice_ms=60)  # type: ignore[arg-type]
    player.play(bytes(per_ms * 1500), object(), "answer")  # 1.5 s of audio in that format
    assert player.remaining_s() == pytest.approx(1.5)
    await player._send_audio(player._queue.popleft())  # type: ignore[arg-type]  # one reply, sent at once
    assert [len(p) for p in link.sent] == [60 * per_ms] * 25  # 60 ms slices
    assert 1.4 < player.remaining_s() <= 1.5  # it plays at the carrier for 1.5 s from the first send


# ---------------------------------------------------------------- cached phrases per format


class CountingTTS:
    name = "counting"

    def __init__(self) -> None:
        self.asked: list[WireFormat] = []

    async def synthesize(self, text, language, voice=None, tag=None, fmt=PCM16_8K) -> bytes:
        self.asked.append(fmt)
        return bytes([len(self.asked)]) * fmt.bytes_per_ms * 100


async def test_a_phrase_is_synthesised_once_per_wire_format() -> None:
    from voxroute.agent.services import Services

    tts = CountingTTS()
    services = Services(load_config(), None, tts, {}, None)  # type: ignore[arg-type]  # the phrase cache only
    first = await services.phrase("en-IN", "bridge", None, MULAW_8K)
    again = await services.phrase("en-IN", "bridge", None, MULAW_8K)
    alaw = await services.phrase("en-IN", "bridge", None, ALAW_8K)
    assert tts.asked == [MULAW_8K, ALAW_8K]
    assert first is again and alaw != first and len(alaw) == len(first) == 800


# ---------------------------------------------------------------- the Sarvam client and emulator


@contextlib.asynccontextmanager
async def tts_emulator():
    app = create_tts_app(Dice(ZERO, seed=1), pace=0.0)
    async with serve_app(app) as http_url:
        yield ws_url(http_url), http_url, app.state.emulator


@pytest.mark.parametrize(
    ("fmt", "codec", "expected"),
    [
        (MULAW_8K, "mulaw", lambda t: pcm16_to_ulaw(synth_pcm(t, 8000))),
        (ALAW_8K, "alaw", lambda t: pcm16_to_alaw(synth_pcm(t, 8000))),
        (WireFormat("l16le", 16000), "linear16", lambda t: synth_pcm(t, 16000)),
    ],
)
async def test_sarvam_tts_asks_for_the_format_and_passes_its_bytes_through(fmt, codec, expected) -> None:
    text = "Aapka order kal tak pahunch jayega."
    async with tts_emulator() as (ws_base, http, state):
        tts = SarvamTTS("k", ws_base, http)
        try:
            stream = await tts.open("hi-IN", fmt=fmt)
            await stream.send_text(text)
            await stream.flush()
            streamed = b""
            async with asyncio.timeout(10):
                async for chunk in stream.audio():
                    streamed += chunk
            rest = await tts.synthesize(text, "hi-IN", fmt=fmt)
        finally:
            await tts.aclose()
    assert streamed == rest == expected(text)
    assert [(u["codec"], u["rate"]) for u in state.tts_utterances] == [(codec, fmt.rate)]
    assert [(r["codec"], r["rate"]) for r in state.tts_rest] == [(codec, fmt.rate)]


def test_linear16_chunks_come_out_as_whole_samples() -> None:
    from voxroute.agent.providers.sarvam_tts import _Linear16

    pcm = _Linear16()
    riff = b"RIFF" + (40).to_bytes(4, "little") + b"WAVE" + b"data" + (5).to_bytes(4, "little")
    assert pcm.take(riff + b"\x01\x02\x03\x04\x05") == b"\x01\x02\x03\x04"  # header off, odd byte kept
    assert pcm.take(b"\x06\x07\x08") == b"\x05\x06\x07\x08"


async def test_the_emulator_refuses_a_codec_sarvam_does_not_know_as_sarvam_does() -> None:
    """Our own name ``ulaw`` is not Sarvam's (``mulaw``): the socket answers an error message with
    code 400, REST a 400, and no audio is made."""
    import json

    import httpx
    from websockets.asyncio.client import connect

    config = {"language_code": "en-IN", "speaker": "shubh", "speech_sample_rate": 8000}
    async with tts_emulator() as (ws_base, http, state):
        async with connect(f"{ws_base}/text-to-speech/ws?model=bulbul:v3&send_completion_event=true",
                           additional_headers={"api-subscription-key": "k"}) as ws:  # fmt: skip
            await ws.send(json.dumps({"type": "config", "data": {**config, "output_audio_codec": "ulaw"}}))
            async with asyncio.timeout(5):
                reply = json.loads(await ws.recv())
        async with httpx.AsyncClient(base_url=http) as client:
            resp = await client.post(
                "/text-to-speech",
                json={"text": "hi", **config, "output_audio_codec": "ulaw"},
                headers={"api-subscription-key": "k"},
            )
    assert reply["type"] == "error" and reply["data"]["code"] == 400
    assert "output_audio_codec" in reply["data"]["message"]
    assert resp.status_code == 400 and "output_audio_codec" in resp.text
    assert state.tts_utterances == [] and state.tts_rest == []
