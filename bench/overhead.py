"""Runtime-added latency per turn (issue 2): what voxroute itself adds between the caller's
last word and the agent's first audio, with the providers' own time and the endpointing wait
taken out.

Three processes on 127.0.0.1, as in production: the emulators (``zero`` profile: no injected
delay), one voxroute server, and this process dialling fixture calls one at a time through the
fake carrier. The server's own turn timelines (``GET /calls/{sid}``) give, per turn, with
``start = max(endpoint, stt_final)`` (the endpointing wait ends there):

- ``added``: the runtime's own work on the critical path, between provider boundaries:
  ``(llm_request - start) + (first_chunk - first_chunk_text) + (tts_request - first_chunk)
  + (first_audio_out - tts_first_audio)`` (routing, request building, chunking, TTS hand-off,
  the player). This is the figure the target (p99 under 2 ms) is about.
- the model's time: ``llm_round_trip`` (request to first token) and ``llm_stream_to_chunk`` (first
  token to the text that completes the first speakable chunk, ``first_chunk_text``: the chunker
  waits for a sentence end, and the model is still streaming meanwhile; its tokens are handled as
  they come, off the critical path); the TTS's: ``tts_round_trip``.
- ``end_to_end``: ``first_audio_out - start`` — the above plus the provider round trips
  through loopback sockets, the HTTP/websocket client code, and the emulators' own processing.

    python -m bench.overhead [--rounds 2] [--json PATH]

``--wire`` instead measures, in this process, the CPU the outbound path spends per 20 ms of agent
audio from the TTS chunk to the bytes handed to the socket, before and after issue 19 (TTS audio in
the carrier's encoding): *before*, Bulbul's mu-law was decoded to PCM16 8 kHz at the provider and
encoded again by the link (Twilio: mu-law, a PCMA SIP call: A-law per RTP frame, Plivo L16: as
is); *after*, the TTS is asked for the link's format and the bytes go through (60 ms player slices
into the codec's message, or 20 ms RTP frames out of the playout queue).

    python -m bench.overhead --wire
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx

from bench.common import percentile, processes, webhook_params
from voxroute.agent.fixture import all_fixture_names, load
from voxroute.emulators.carrier import dial
from voxroute.replay import operator_headers
from voxroute.server import ws_url

PARTS = (
    "to_llm_request",
    "text_to_chunk",
    "chunk_to_tts",
    "tts_audio_to_wire",
    "llm_round_trip",
    "llm_stream_to_chunk",
    "tts_round_trip",
)


def turn_figures(turn: dict) -> dict | None:
    tl = turn["timeline"]
    need = (
        "endpoint",
        "llm_request",
        "llm_first_token",
        "first_chunk_text",
        "first_chunk",
        "tts_request",
        "tts_first_audio",
        "first_audio_out",
    )
    if turn.get("bridge") or turn.get("kind") != "speech" or not all(k in tl for k in need):
        return None
    if tl["first_audio_out"] < tl["tts_first_audio"]:
        return None  # something else (a phrase) played first
    if (turn.get("usage") or {}).get("early_used"):
        return None  # asked before the commit (ladder.early_request): no request step to time
    start = max(tl["endpoint"], tl.get("stt_final", tl["endpoint"]))
    parts = {
        "to_llm_request": tl["llm_request"] - start,
        "text_to_chunk": tl["first_chunk"] - tl["first_chunk_text"],
        "chunk_to_tts": tl["tts_request"] - tl["first_chunk"],
        "tts_audio_to_wire": tl["first_audio_out"] - tl["tts_first_audio"],
        "llm_round_trip": tl["llm_first_token"] - tl["llm_request"],
        "llm_stream_to_chunk": tl["first_chunk_text"] - tl["llm_first_token"],
        "tts_round_trip": tl["tts_first_audio"] - tl["tts_request"],
    }
    parts["added"] = sum(
        parts[k] for k in ("to_llm_request", "text_to_chunk", "chunk_to_tts", "tts_audio_to_wire")
    )
    parts["end_to_end"] = tl["first_audio_out"] - start
    return parts


async def run(rounds: int) -> dict:
    fixtures = [load(n) for n in all_fixture_names()]
    rows: list[dict] = []
    with processes() as (base, _pid):
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=operator_headers()) as http:
            for r in range(rounds):
                for i, fixture in enumerate(fixtures):  # one call at a time: overhead, not load
                    sid = f"CA{r:016x}{i:016x}"
                    params = await webhook_params(http, sid)
                    params["language"] = fixture.script.language
                    await dial(
                        fixture, ws_url(base) + "/twilio/stream", custom_parameters=params, call_sid=sid
                    )
                    call = (await http.get(f"/calls/{sid}")).json()
                    for t in call["turns"]:
                        if (f := turn_figures(t)) is not None:
                            rows.append(
                                {"fixture": fixture.name, "turn": t["index"], **f, "timeline": t["timeline"]}
                            )
    out: dict = {"turns": len(rows)}
    for key in ("added", "end_to_end", *PARTS):
        vals = [r[key] for r in rows]
        out[f"{key}_ms_p50"] = percentile(vals, 50)
        out[f"{key}_ms_p99"] = percentile(vals, 99)
    out["slowest"] = sorted(rows, key=lambda r: -r["added"])[:5]  # where a p99 comes from
    out["per_turn"] = rows
    return out


def wire_bench(seconds: float = 5.0, repeats: int = 7) -> dict:
    """us of CPU per 20 ms of outbound audio, old path vs new, per carrier (best of ``repeats``)."""
    import time

    import numpy as np

    from voxroute.audio import ALAW_8K, MULAW_8K, PCM16_8K, pcm16_to_ulaw, pcm_to_wire, ulaw_to_pcm16
    from voxroute.telephony.plivo import PlivoPeer, PlivoStream
    from voxroute.telephony.sip.rtp import SAMPLES_PER_FRAME, SILENCE, Playout
    from voxroute.telephony.twilio import TwilioPeer, TwilioStream

    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(8000 * seconds)) * 3000).astype("<i2").tobytes()
    frames = int(seconds * 50)
    chunk_bytes = 800  # Bulbul-sized chunks of 100 ms mu-law, as the emulator sends
    ulaw = pcm16_to_ulaw(pcm)

    def twilio() -> TwilioStream:
        s, peer = TwilioStream(), TwilioPeer("MZ1", "CA1")
        s.feed(peer.connected())
        s.feed(peer.start())
        return s

    def plivo() -> PlivoStream:
        s = PlivoStream()
        s.feed(PlivoPeer("S1", "C1").start())
        return s

    def slices(data: bytes, per_ms: int) -> list[bytes]:
        step = 60 * per_ms  # the player's 60 ms slices
        return [data[i : i + step] for i in range(0, len(data), step)]

    def old_ws(codec) -> None:  # the provider decoded each chunk, the link encoded each slice
        for i in range(0, len(ulaw), chunk_bytes):
            for piece in slices(ulaw_to_pcm16(ulaw[i : i + chunk_bytes]), 16):
                codec.media(piece)

    def new_ws(codec, audio: bytes, per_ms: int) -> None:
        for i in range(0, len(audio), chunk_bytes * per_ms // 8):
            for piece in slices(audio[i : i + chunk_bytes * per_ms // 8], per_ms):
                codec.media_wire(piece)

    def old_sip() -> None:  # PCM in the playout queue, A-law encoded per 20 ms RTP frame
        from voxroute.audio import pcm16_to_alaw

        p = Playout()
        for i in range(0, len(ulaw), chunk_bytes):
            p.push(ulaw_to_pcm16(ulaw[i : i + chunk_bytes]))
        for _ in range(frames):
            frame, _ = p.next_frame()
            pcm16_to_alaw(frame or b"")

    alaw = pcm_to_wire(pcm, ALAW_8K)

    def new_sip() -> None:
        p = Playout(SAMPLES_PER_FRAME, SILENCE["PCMA"])
        for i in range(0, len(alaw), chunk_bytes):
            p.push(alaw[i : i + chunk_bytes])
        for _ in range(frames):
            p.next_frame()

    pcm8 = pcm_to_wire(pcm, PCM16_8K)
    cases = {
        "twilio (mu-law)": (lambda: old_ws(twilio()), lambda: new_ws(twilio(), ulaw, MULAW_8K.bytes_per_ms)),
        "plivo (L16 8 kHz)": (lambda: old_ws(plivo()), lambda: new_ws(plivo(), pcm8, PCM16_8K.bytes_per_ms)),
        "sip (PCMA)": (old_sip, new_sip),
    }
    out: dict = {}
    for name, (old, new) in cases.items():
        for label, fn in (("before", old), ("after", new)):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.thread_time()
                fn()
                best = min(best, time.thread_time() - t0)
            out[f"{name} {label}"] = round(best / frames * 1e6, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--wire", action="store_true", help="the outbound path's CPU per 20 ms frame, in process")
    args = ap.parse_args()
    if args.wire:
        figures = wire_bench()
        print("outbound CPU per 20 ms of agent audio, TTS chunk to socket bytes (us, best of 7):")
        for key, us in figures.items():
            print(f"  {key:<26} {us:>7.2f}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2))
        return
    result = asyncio.run(run(args.rounds))
    print(f"runtime-added latency over {result['turns']} turns (zero profile, separate processes):")
    for key in ("added", "end_to_end", *PARTS):
        print(f"  {key:<18} p50 {result[f'{key}_ms_p50']:>7} ms   p99 {result[f'{key}_ms_p99']:>7} ms")
    print("slowest turns (added, then its parts):")
    for r in result["slowest"]:
        parts = "  ".join(f"{k} {r[k]:.2f}" for k in PARTS[:4])
        print(f"  {r['fixture']} turn {r['turn']}: {r['added']:.2f} ms  ({parts})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
