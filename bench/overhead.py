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
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx

from bench.common import processes, webhook_params
from voxroute.agent.fixture import all_fixture_names, load
from voxroute.agent.metrics import _pct
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
                    rows += [f for t in call["turns"] if (f := turn_figures(t)) is not None]
    out: dict = {"turns": len(rows)}
    for key in ("added", "end_to_end", *PARTS):
        vals = [r[key] for r in rows]
        out[f"{key}_ms_p50"] = _pct(vals, 50)
        out[f"{key}_ms_p99"] = _pct(vals, 99)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args.rounds))
    print(f"runtime-added latency over {result['turns']} turns (zero profile, separate processes):")
    for key in ("added", "end_to_end", *PARTS):
        print(f"  {key:<18} p50 {result[f'{key}_ms_p50']:>7} ms   p99 {result[f'{key}_ms_p99']:>7} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
