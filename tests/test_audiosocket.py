"""Asterisk AudioSocket: the framing (fuzzed), and a call over real TCP into the real runtime.

Asterisk is not in Debian 12 (docs/reference/telephony.md §3.1), so the client here is an in-process
fake Asterisk built from the framing: UUID first, 320-byte slin frames every 20 ms, a DTMF
message, and hang-up by closing the socket, as Asterisk 20 does.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import webrtcvad
from hypothesis import given, settings
from hypothesis import strategies as st

from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.agent.link import InboundAudio, InboundDtmf, MarkEcho
from voxroute.agent.session import CallSession
from voxroute.audio import ulaw_to_pcm16
from voxroute.replay import local_stack
from voxroute.telephony.audiosocket import (
    KIND_DTMF,
    KIND_HANGUP,
    KIND_SLIN,
    AudioSocketError,
    AudioSocketParser,
    audio_frame,
    dtmf_frame,
    frame,
    serve_audiosocket,
    uuid_frame,
)

CALL = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_parser_reads_split_frames() -> None:
    data = uuid_frame(CALL) + audio_frame(b"\x01\x00" * 160) + dtmf_frame("5") + frame(KIND_HANGUP)
    p = AudioSocketParser()
    msgs = []
    for i in range(0, len(data), 7):
        msgs += p.feed(data[i : i + 7])
    assert [m.kind for m in msgs] == [0x01, KIND_SLIN, KIND_DTMF, KIND_HANGUP]
    assert (
        uuid.UUID(bytes=msgs[0].payload) == CALL and len(msgs[1].payload) == 320 and msgs[2].payload == b"5"
    )
    assert audio_frame(b"\x00\x00")[:3] == b"\x10\x00\x02"  # type, big-endian length


@pytest.mark.parametrize(
    "data",
    [
        audio_frame(b"\x00" * 320),  # audio before the UUID
        uuid_frame(CALL) + frame(0x10, b""),  # zero-length audio
        uuid_frame(CALL) + frame(0x42, b"x"),  # unknown type
        frame(0x01, b"short"),
    ],
)
def test_parser_rejects_bad_streams(data: bytes) -> None:
    with pytest.raises(AudioSocketError):
        AudioSocketParser().feed(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_parser(data: bytes) -> None:
    p = AudioSocketParser()
    try:
        p.feed(uuid_frame(CALL) + data)
    except AudioSocketError:
        pass


async def test_audiosocket_call_into_the_runtime() -> None:
    fx = load("order_status")
    utt = fx.script.utterances[0]
    caller = ulaw_to_pcm16(fx.ulaw[: utt.end_ms * 8])
    links = []
    async with local_stack("reference", 0, [fx]) as stack:

        async def on_call(link) -> None:
            links.append(link)
            await CallSession(link, stack.services).run()

        async with serve_audiosocket(on_call, "127.0.0.1", 0) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(uuid_frame(CALL))
            received = bytearray()

            async def read_all() -> None:
                p = AudioSocketParser()
                p.seen_uuid = True  # the server never sends a UUID
                while data := await reader.read(4096):
                    for msg in p.feed(data):
                        assert msg.kind in (KIND_SLIN, KIND_HANGUP)
                        received.extend(msg.payload)

            loop = asyncio.get_running_loop()
            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(read_all())
                t0 = loop.time()
                silence = bytes(320)
                n_frames = int(6.5 / 0.02)
                for i in range(n_frames):
                    piece = caller[i * 320 : (i + 1) * 320]
                    writer.write(audio_frame(piece.ljust(320, b"\0") if piece else silence))
                    if i == n_frames - 20:
                        writer.write(dtmf_frame("7"))
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
                writer.close()  # Asterisk hangs up by closing
                await asyncio.sleep(0.3)
                reading.cancel()
            call = stack.services.call_json(links[0].start.call_sid)
    pcm = np.frombuffer(bytes(received), "<i2")
    assert len(pcm) / 8000 >= 1.0, "the agent's reply came back as slin frames"
    assert np.abs(pcm.astype(np.int32)).max() > 1000
    assert call is not None and call["carrier"] == "audiosocket"
    assert "order" in (call["turns"][0].get("transcript") or "").lower()
    assert call["turns"][0]["first_audio_ms"] is not None


async def test_link_marks_and_dtmf_without_the_runtime() -> None:
    events = []

    async def on_call(link) -> None:
        await link.send_audio(b"\x10\x00" * 800)  # 100 ms
        await link.send_mark("m1")
        async for ev in link.events():
            events.append(ev)
            if isinstance(ev, InboundDtmf):
                await link.hangup()

    async with serve_audiosocket(on_call, "127.0.0.1", 0) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(uuid_frame(CALL) + audio_frame(b"\x00\x00" * 240))  # 30 ms: one frame, 10 ms pending
        await asyncio.sleep(0.2)
        writer.write(dtmf_frame("#"))
        data = await asyncio.wait_for(reader.read(100_000), 2)
        while chunk := await asyncio.wait_for(reader.read(100_000), 2):
            data += chunk
    kinds = [type(e).__name__ for e in events]
    assert kinds[:1] == ["InboundAudio"] and sum(isinstance(e, InboundAudio) for e in events) == 1
    assert any(isinstance(e, MarkEcho) and e.name == "m1" for e in events)
    assert events[-1].__class__.__name__ == "CallEnded"
    assert data.endswith(frame(KIND_HANGUP)) and data.count(b"\x10\x01\x40") == 5  # 5 frames of 320 bytes


async def test_caller_that_stops_sending_after_speech_is_answered_within_budget() -> None:
    """Asterisk sends AudioSocket audio only while RTP flows: after the caller's words nothing
    comes at all. The agent answers anyway, within budget, and the call log's first audio is
    what the socket shows (last voiced frame sent -> first agent frame back) within 20 ms."""
    fx = load("order_status")
    utt = fx.script.utterances[0]
    caller = ulaw_to_pcm16(fx.ulaw[: utt.end_ms * 8])
    frames = [caller[i : i + 320].ljust(320, b"\0") for i in range(0, len(caller), 320)]
    vad = webrtcvad.Vad(load_config().endpoint.vad_mode)  # the session's VAD on the same frames
    last_voiced = max(i for i, f in enumerate(frames) if vad.is_speech(f, 8000))
    links = []
    async with local_stack("reference", 0, [fx]) as stack:

        async def on_call(link) -> None:
            links.append(link)
            await CallSession(link, stack.services).run()

        async with serve_audiosocket(on_call, "127.0.0.1", 0) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(uuid_frame(CALL))
            loop = asyncio.get_running_loop()
            heard: list[float] = []

            async def read_all() -> None:
                p = AudioSocketParser()
                p.seen_uuid = True
                while data := await reader.read(4096):
                    heard.extend(loop.time() for m in p.feed(data) if m.kind == KIND_SLIN)

            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(read_all())
                t0 = loop.time()
                sent_at = []
                for i, f in enumerate(frames):
                    writer.write(audio_frame(f))
                    sent_at.append(loop.time())
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
                for _ in range(100):  # then silence on the socket: nothing at all, up to 5 s
                    if heard:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                writer.close()
                await asyncio.sleep(0.3)
                reading.cancel()
            call = stack.services.call_json(links[0].start.call_sid)
    assert heard, "the agent never answered a caller who went quiet"
    turn = call["turns"][0]
    assert "order" in (turn.get("transcript") or "").lower(), call["turns"]
    wire_ms = (heard[0] - sent_at[last_voiced]) * 1000
    assert turn["within_budget"] and wire_ms <= turn["budget_ms"], (wire_ms, turn)
    assert abs(turn["first_audio_ms"] - wire_ms) <= 20, (turn["first_audio_ms"], wire_ms)


async def test_odd_sized_audio_payloads_do_not_close_the_call() -> None:
    """321 bytes of slin (a stray byte) is one frame and a dropped byte, not a protocol error."""
    events = []

    async def on_call(link) -> None:
        async for ev in link.events():
            events.append(ev)
            if isinstance(ev, InboundDtmf):
                await link.hangup()

    async with serve_audiosocket(on_call, "127.0.0.1", 0) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            uuid_frame(CALL) + audio_frame(b"\x01\x00" * 160 + b"\x07") + audio_frame(b"\x02\x00" * 161)
        )
        writer.write(dtmf_frame("5"))
        async with asyncio.timeout(3):
            while await reader.read(100_000):
                pass
    audio = [e for e in events if isinstance(e, InboundAudio)]
    assert [a.pcm for a in audio] == [b"\x01\x00" * 160, b"\x02\x00" * 160]  # 1 sample waits for more
    assert isinstance(events[-2], InboundDtmf) and events[-1].reason == "closed"
