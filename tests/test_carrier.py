"""The fake carrier (emulators/carrier.py): a loopback Twilio dialling a fixture call.

The sans-I/O tests drive ``FakeTwilioCall`` tick by tick, so playback timing is checked exactly.
The socket tests dial a synthetic fixture into a tiny fake agent (a ``websockets`` server on
127.0.0.1) that answers each caller item with a tone and marks, and barges in like a runtime.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection, serve

from voxroute.agent import fixture as fx
from voxroute.emulators import carrier
from voxroute.emulators.carrier import FakeTwilioCall, dial, make_ids

TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "wss://agent.example.com/twilio/stream"
REPLY_MS = 800


def ulaw_tone(ms: int, hz: float, amp: float = 8000.0) -> bytes:
    """A sine tone as G.711 mu-law (standard encoder; no byte is 0xFF or 0x7F at this level)."""
    n = np.arange(ms * 8)
    pcm = (amp * np.sin(2 * np.pi * hz * n / 8000)).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    mag = np.minimum(np.abs(pcm), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    out = ~(sign | (exp << 4) | mant) & 0xFF
    out = np.where(out == 0xFF, 0xFE, np.where(out == 0x7F, 0x7E, out))  # keep "silent" bytes out of tones
    return out.astype(np.uint8).tobytes()


CALLER_TONE = ulaw_tone(1000, 440)
AGENT_TONE = ulaw_tone(REPLY_MS, 1000)


def make_fixture(tmp: Path, utterances: list[dict]) -> fx.Fixture:
    """WAV: 200 ms silence, 600 ms tone, 300 ms silence, 500 ms tone, 300 ms silence, 400 ms tone, 200 ms."""
    sil = bytes([0xFF])
    audio = (
        sil * 1600 + CALLER_TONE[:4800] + sil * 2400 + CALLER_TONE[:4000] + sil * 2400 + CALLER_TONE[:3200]
    )
    audio += sil * 1600
    fx.write_ulaw_wav(tmp / "synthetic.wav", audio)
    script = {
        "version": 1,
        "call": "synthetic",
        "audio": "synthetic.wav",
        "language": "hi-IN",
        "tenant": "acme",
        "from": "+919800000042",
        "utterances": utterances,
    }
    (tmp / "synthetic.json").write_text(json.dumps(script))
    return fx.load(tmp / "synthetic.json")


SCRIPT = [
    {"start_ms": 200, "end_ms": 800, "text": "hello", "play": "after_agent", "gap_ms": 300},
    {"dtmf": "4521", "play": "after_agent", "gap_ms": 300},
    {"start_ms": 1100, "end_ms": 1600, "text": "tell me more", "play": "after_agent", "gap_ms": 300},
    {"start_ms": 1900, "end_ms": 2300, "text": "stop", "play": "barge_in", "offset_ms": 100},
]


class FakeAgent:
    """Reads Twilio events; after each caller item answers REPLY_MS of tone + marks ``n:0``, ``n:end``.

    A caller item ends after 3+ voiced frames followed by 5 silent ones, or 10 frames after the
    last DTMF digit. Voice while its marks are still pending means barge-in: it sends ``clear``.
    """

    def __init__(self, *, reply: bool = True) -> None:
        self.reply = reply
        self.texts: list[str] = []
        self.msgs: list[dict] = []
        self.headers: dict[str, str] = {}
        self.path = ""
        self.media_count = 0
        self.marks_sent: dict[str, int] = {}  # name -> media frames received when sent
        self.echoes: dict[str, int] = {}  # name -> media frames received when echoed
        self.dtmf_at: list[tuple[str, int]] = []
        self.clears_at: list[int] = []
        self.turn = 0
        self.close_code: int | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.headers = dict(ws.request.headers)
        self.path = ws.request.path
        sid = ""
        voiced = silent = 0
        dtmf_wait: int | None = None
        pending: set[str] = set()

        async def send(obj: dict) -> None:
            await ws.send(json.dumps(obj))

        async def answer() -> None:
            self.turn += 1
            await send(
                {
                    "event": "media",
                    "streamSid": sid,
                    "media": {"payload": base64.b64encode(AGENT_TONE).decode()},
                }
            )
            for name in (f"{self.turn}:0", f"{self.turn}:end"):
                self.marks_sent[name] = self.media_count
                pending.add(name)
                await send({"event": "mark", "streamSid": sid, "mark": {"name": name}})

        async for raw in ws:
            self.texts.append(raw)
            msg = json.loads(raw)
            self.msgs.append(msg)
            ev = msg["event"]
            if ev == "start":
                sid = msg["start"]["streamSid"]
                # a mark with nothing queued: must come back at once (and, before any item, is no reply)
                self.marks_sent["0:end"] = 0
                await send({"event": "mark", "streamSid": sid, "mark": {"name": "0:end"}})
            elif ev == "media":
                self.media_count += 1
                frame = base64.b64decode(msg["media"]["payload"])
                if frame != bytes([0xFF]) * 160:
                    voiced += 1
                    silent = 0
                    if pending and voiced == 2:
                        self.clears_at.append(self.media_count)
                        await send({"event": "clear", "streamSid": sid})
                else:
                    silent += 1
                    if voiced >= 3 and silent >= 5:
                        voiced = 0
                        if self.reply:
                            await answer()
                if dtmf_wait is not None:
                    dtmf_wait += 1
                    if dtmf_wait >= 10:
                        dtmf_wait = None
                        if self.reply:
                            await answer()
            elif ev == "dtmf":
                self.dtmf_at.append((msg["dtmf"]["digit"], self.media_count))
                dtmf_wait = 0
            elif ev == "mark":
                name = msg["mark"]["name"]
                self.echoes[name] = self.media_count
                pending.discard(name)
        self.close_code = ws.close_code


async def run_call(
    agent: FakeAgent, fixture: fx.Fixture, **kwargs
) -> tuple[carrier.CarrierResult, float, str]:
    async with serve(agent.handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/twilio/stream"
        t = time.monotonic()
        result = await dial(fixture, url, **kwargs)
        elapsed = time.monotonic() - t
        await asyncio.sleep(0.05)  # let the handler see the close
    return result, elapsed, url


# --------------------------------------------------------------------------- sans-I/O


def _events(texts: list[str]) -> list[dict]:
    return [json.loads(t) for t in texts]


def _call(tmp_path: Path, utterances: list[dict] | None = None, agent_wait_s: float = 20.0) -> FakeTwilioCall:
    f = make_fixture(tmp_path, utterances or [{"dtmf": "1", "play": "after_agent", "gap_ms": 10_000}])
    return FakeTwilioCall(f, ids=make_ids("test"), agent_wait_s=agent_wait_s)


def test_ids_are_twilio_shaped_and_deterministic() -> None:
    a, b = make_ids("call-1"), make_ids("call-1")
    assert a == b
    for sid, prefix in ((a.call_sid, "CA"), (a.stream_sid, "MZ"), (a.account_sid, "AC")):
        assert sid.startswith(prefix) and len(sid) == 34 and int(sid[2:], 16) >= 0
    assert make_ids("CA" + "ab" * 16).call_sid == "CA" + "ab" * 16
    assert make_ids().call_sid != make_ids().call_sid


def test_upgrade_signature_matches_reference_vector() -> None:
    # docs/reference/telephony.md §1.7 test vector
    sig = carrier.upgrade_signature(TOKEN, "wss://agent.example.com/twilio/media")
    assert sig == "OgDvxhsS0O3ZsbXzI25k6+P3F/4="
    assert carrier.wss_form("ws://127.0.0.1:9/twilio/stream") == "wss://127.0.0.1:9/twilio/stream"


def test_mark_echo_at_once_when_idle_and_after_queued_audio(tmp_path: Path) -> None:
    call = _call(tmp_path)
    call.open()
    sid = call.ids.stream_sid
    call.tick()
    echo = _events(call.receive(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "a"}})))
    assert [e["mark"]["name"] for e in echo] == ["a"]  # nothing queued: at once
    # 100 ms of audio, then a mark: echoed once the 5 frames have played, not before
    call.receive(
        json.dumps(
            {
                "event": "media",
                "streamSid": sid,
                "media": {"payload": base64.b64encode(AGENT_TONE[:800]).decode()},
            }
        )
    )
    assert call.receive(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "b"}})) == []
    echoed_on = None
    for k in range(1, 10):
        marks = [e for e in _events(call.tick()) if e["event"] == "mark"]
        if marks:
            echoed_on = k
            break
    assert echoed_on == 6  # frames 1-5 play the audio; the echo goes out when frame 5 has finished
    rec = call.result.marks[1]
    assert rec.name == "b" and rec.echoed_at - rec.received_at == pytest.approx(0.1, abs=0.021)


def test_clear_drops_audio_and_echoes_pending_marks(tmp_path: Path) -> None:
    call = _call(tmp_path)
    call.open()
    sid = call.ids.stream_sid
    call.receive(
        json.dumps(
            {"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(AGENT_TONE).decode()}}
        )
    )
    call.receive(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "1:0"}}))
    call.receive(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "1:end"}}))
    for _ in range(3):
        call.tick()
    echoes = _events(call.receive(json.dumps({"event": "clear", "streamSid": sid})))
    assert [e["mark"]["name"] for e in echoes] == ["1:0", "1:end"]
    for _ in range(5):
        call.tick()
    call.stop()
    played = call.result.recorded
    assert played[: 3 * 160] == AGENT_TONE[: 3 * 160]
    assert set(played[3 * 160 :]) == {0xFF}  # nothing after the clear
    assert call.result.agent_audio_ms == 60


def test_protocol_violations_are_recorded_not_fatal(tmp_path: Path) -> None:
    call = _call(tmp_path)
    call.open()
    sid = call.ids.stream_sid
    riff = base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(200)).decode()
    bad = [
        b"\x00\x01",
        "not json",
        "[1, 2]",
        json.dumps({"event": "play", "streamSid": sid}),
        json.dumps({"event": "media", "streamSid": "MZwrong", "media": {"payload": ""}}),
        json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "***"}}),
        json.dumps({"event": "media", "streamSid": sid, "media": {"payload": riff}}),
        json.dumps({"event": "mark", "streamSid": sid, "mark": {}}),
    ]
    for text in bad:
        assert call.receive(text) == []
    assert len(call.result.errors) == len(bad)
    assert any("RIFF" in e for e in call.result.errors)
    assert any("streamSid" in e for e in call.result.errors)
    call.tick()
    call.stop()
    assert call.result.agent_audio_ms == 0  # the RIFF payload was not played


# --------------------------------------------------------------------------- over a socket


async def test_full_call_against_fake_agent(tmp_path: Path) -> None:
    fixture = make_fixture(tmp_path, SCRIPT)
    agent = FakeAgent()
    wav = tmp_path / "agent.wav"
    result, elapsed, _ = await run_call(
        agent,
        fixture,
        auth_token=TOKEN,
        public_url=PUBLIC_URL,
        speed=4,
        record_path=wav,
        custom_parameters={"call_token": "abc"},
        call_sid="full-call",
    )
    assert result.errors == []
    assert result.completed and result.closed_by == "carrier" and result.close_code == 1000

    # the signed upgrade verifies with Twilio's own validator
    assert RequestValidator(TOKEN).validate(PUBLIC_URL, {}, agent.headers["x-twilio-signature"])
    assert agent.path == "/twilio/stream"

    # message shapes (docs/reference/telephony.md §1.2 and the §1.5 real log)
    msgs = agent.msgs
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    s = start["start"]
    assert s["tracks"] == ["inbound"]
    assert s["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert s["customParameters"] == {
        "tenant": "acme",
        "from": "+919800000042",
        "language": "hi-IN",
        "call_token": "abc",
    }
    assert s["callSid"] == result.call_sid == make_ids("full-call").call_sid
    assert s["streamSid"] == start["streamSid"] == result.stream_sid
    seqs = [m["sequenceNumber"] for m in msgs[1:]]
    assert all(isinstance(q, str) for q in seqs)
    assert [int(q) for q in seqs] == list(range(1, len(seqs) + 1))  # one counter for every event
    media = [m for m in msgs if m["event"] == "media"]
    assert [m["media"]["chunk"] for m in media[:3]] == ["1", "2", "3"]
    assert all(isinstance(m["media"]["timestamp"], str) and len(m["media"]["payload"]) == 216 for m in media)
    assert all(m["media"]["track"] == "inbound" and m["streamSid"] == result.stream_sid for m in media)
    stop = msgs[-1]
    assert stop["event"] == "stop" and stop["stop"] == {
        "accountSid": s["accountSid"],
        "callSid": s["callSid"],
    }
    assert agent.close_code == 1000

    # marks: at once when nothing is queued; otherwise after the queued audio has played
    marks = {m.name: m for m in result.marks}
    assert marks["0:end"].echoed_at == marks["0:end"].received_at
    assert agent.echoes["0:end"] == 0
    for name in ("1:end", "2:end", "4:end"):
        assert marks[name].echoed_at - marks[name].received_at >= REPLY_MS / 1000 - 0.05
        assert agent.echoes[name] - agent.marks_sent[name] >= REPLY_MS // 20 - 2  # media frames meanwhile
    # the "0:end" echo at the call start is not the reply to any item
    assert result.items[0].reply_finished_at == marks["1:end"].echoed_at

    # DTMF: right digits, one event each, ~150 ms apart, silence frames meanwhile
    dtmf = [m for m in msgs if m["event"] == "dtmf"]
    assert [d["dtmf"] for d in dtmf] == [{"track": "inbound_track", "digit": c} for c in "4521"]
    gaps = [b[1] - a[1] for a, b in zip(agent.dtmf_at, agent.dtmf_at[1:], strict=False)]
    assert all(6 <= g <= 9 for g in gaps)
    first, last = agent.dtmf_at[0][1], agent.dtmf_at[-1][1]
    assert all(base64.b64decode(m["media"]["payload"]) == bytes([0xFF]) * 160 for m in media[first:last])

    # schedule: after_agent items wait for the reply's end mark plus gap; barge-in starts over the reply
    items = result.items
    assert [i.kind for i in items] == ["audio", "dtmf", "audio", "audio"]
    assert items[0].started_at == pytest.approx(0.3, abs=0.03)
    for prev, cur in ((items[0], items[1]), (items[1], items[2])):
        assert cur.started_at - prev.reply_finished_at == pytest.approx(0.3, abs=0.03)
    assert items[2].reply_started_at < items[3].started_at < items[2].reply_started_at + REPLY_MS / 1000
    assert items[3].started_at - items[2].reply_started_at == pytest.approx(0.1, abs=0.03)
    assert all(i.reply_started_at > i.ended_at for i in items)
    # the barge-in: one clear, the pending marks of turn 3 echoed at once, before their audio played
    assert len(result.clears) == 1 and agent.clears_at
    assert marks["3:end"].echoed_at == result.clears[0]
    assert marks["3:end"].echoed_at - marks["3:end"].received_at < REPLY_MS / 1000
    assert items[3].started_at <= result.clears[0] <= items[3].ended_at

    # recording: the whole call, the agent's tone in it, and only what played
    assert len(result.recorded) == 160 * agent.media_count == round(result.duration_s * 8000)
    assert 3 * REPLY_MS < result.agent_audio_ms < 4 * REPLY_MS
    assert sum(b != 0xFF for b in result.recorded) == result.agent_audio_ms * 8
    assert AGENT_TONE in result.recorded
    assert fx.read_wav(wav) == (fx.WAVE_FORMAT_MULAW, 8000, 1, result.recorded)
    d = result.as_dict()
    json.dumps(d)
    assert "recorded" not in d and d["recorded_ms"] == len(result.recorded) // 8

    # paced at 4x real time: not bursting, not real time (generous bounds)
    assert result.duration_s / 8 < elapsed < result.duration_s / 2


async def test_silent_agent_times_out_and_ends_call(tmp_path: Path) -> None:
    fixture = make_fixture(tmp_path, SCRIPT[:2])
    agent = FakeAgent(reply=False)
    result, elapsed, url = await run_call(agent, fixture, auth_token=TOKEN, speed=8, agent_wait_s=0.1)
    # without public_url the signature covers the wss form of the url dialled
    assert RequestValidator(TOKEN).validate("wss" + url[2:], {}, agent.headers["x-twilio-signature"])
    assert not result.completed and result.closed_by == "carrier"
    assert len(result.errors) == 2 and all("no agent end mark" in e for e in result.errors)
    assert all(i.ended_at is not None and i.reply_started_at is None for i in result.items)
    assert [d["dtmf"]["digit"] for d in agent.msgs if d["event"] == "dtmf"] == list("4521")
    assert elapsed < 5


async def test_server_closing_first_and_bad_messages_are_recorded(tmp_path: Path) -> None:
    fixture = make_fixture(tmp_path, SCRIPT[:1])

    async def rude(ws: ServerConnection) -> None:
        sid = ""
        async for raw in ws:
            msg = json.loads(raw)
            if msg["event"] == "start":
                sid = msg["streamSid"]
                riff = base64.b64encode(b"RIFF" + bytes(400)).decode()
                await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": riff}}))
                await ws.send(
                    json.dumps({"event": "media", "streamSid": "MZnope", "media": {"payload": "/w=="}})
                )
                await ws.send(json.dumps({"event": "hangup", "streamSid": sid}))
                await ws.send(b"\x01\x02")
            elif msg["event"] == "media" and msg["media"]["chunk"] == "10":
                await ws.close(1011, "runtime gave up")
                return

    async with serve(rude, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        result = await dial(fixture, f"ws://127.0.0.1:{port}/twilio/stream", speed=8, agent_wait_s=2)
    assert result.closed_by == "server" and result.close_code == 1011
    assert not result.completed
    text = "\n".join(result.errors)
    for needle in ("RIFF", "streamSid", "'hangup'", "binary", "closed the socket"):
        assert needle in text
    assert result.agent_audio_ms == 0
    assert 8 * 160 <= len(result.recorded) <= 40 * 160


async def test_rejected_upgrade_is_a_result_not_a_crash(tmp_path: Path) -> None:
    fixture = make_fixture(tmp_path, SCRIPT[:1])

    def refuse(connection, request):
        return connection.respond(403, "bad signature\n")

    async with serve(lambda ws: asyncio.sleep(0), "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        result = await dial(fixture, f"ws://127.0.0.1:{port}/twilio/stream", auth_token=TOKEN, speed=8)
    assert result.closed_by == "handshake" and result.close_code == 403
    assert not result.completed and "403" in result.errors[0]
