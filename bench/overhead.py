"""Runtime-added latency per turn (issue 2): what voxroute itself adds between the caller's
last word and the agent's first audio, once the providers' own time and the endpointing wait
are taken out.

Runs fixture calls through the real stack (fake carrier -> server -> emulators, real sockets on
127.0.0.1) under the ``zero`` profile, so the emulators inject no delay. Per turn:

    added = first_audio_out - max(endpoint, stt_final)

``endpoint - speech_end`` is the endpointing wait (silence window or STT final), excluded by
definition; what remains is routing, request building, SSE parsing, chunking, the TTS round trip
through loopback sockets and the player. Also reported: the parts of it.

    python -m bench.overhead [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
from pathlib import Path

from agent.fixture import all_fixture_names, load
from agent.metrics import _pct
from agent.replay import local_stack, replay_fixture


def added_ms(turn: dict) -> dict | None:
    tl = turn["timeline"]
    if "first_audio_out" not in tl or "endpoint" not in tl or turn.get("bridge"):
        return None
    start = max(tl["endpoint"], tl.get("stt_final", tl["endpoint"]))
    parts = {"added": tl["first_audio_out"] - start}
    if "llm_request" in tl:
        parts["to_llm_request"] = tl["llm_request"] - start
    if "llm_first_token" in tl and "first_chunk" in tl:
        parts["token_to_chunk"] = tl["first_chunk"] - tl["llm_first_token"]
    if "tts_first_audio" in tl:
        parts["tts_audio_to_wire"] = tl["first_audio_out"] - tl["tts_first_audio"]
    if "tts_request" in tl and "tts_first_audio" in tl:
        parts["tts_round_trip"] = tl["tts_first_audio"] - tl["tts_request"]
    if "llm_request" in tl and "llm_first_token" in tl:
        parts["llm_round_trip"] = tl["llm_first_token"] - tl["llm_request"]
    return parts


async def run(rounds: int) -> dict:
    names = [n for n in all_fixture_names()]
    fixtures = [load(n) for n in names]
    rows: list[dict] = []
    async with local_stack("zero", 0, fixtures) as stack:
        for _ in range(rounds):
            for fixture in fixtures:  # one call at a time: overhead, not load
                call = await replay_fixture(fixture, stack.server_url, speed=2.0, config=stack.config)
                for t in call["turns"]:
                    parts = added_ms(t)
                    if parts is not None and t["kind"] == "speech":
                        rows.append(parts)
    added = [r["added"] for r in rows]
    out = {
        "turns": len(rows),
        "added_ms_p50": _pct(added, 50),
        "added_ms_p99": _pct(added, 99),
        "added_ms_max": round(max(added), 3) if added else None,
    }
    for key in ("to_llm_request", "token_to_chunk", "tts_audio_to_wire", "llm_round_trip", "tts_round_trip"):
        vals = [r[key] for r in rows if key in r]
        out[f"{key}_ms_p50"] = _pct(vals, 50)
        out[f"{key}_ms_p99"] = _pct(vals, 99)
    out["added_ms_mean"] = round(statistics.fmean(added), 3) if added else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args.rounds))
    print(f"runtime-added latency over {result['turns']} turns (zero profile, loopback sockets):")
    print(
        f"  added      p50 {result['added_ms_p50']} ms   p99 {result['added_ms_p99']} ms   max {result['added_ms_max']} ms"
    )
    for key in ("to_llm_request", "token_to_chunk", "tts_audio_to_wire", "llm_round_trip", "tts_round_trip"):
        print(f"  {key:<18} p50 {result[f'{key}_ms_p50']} ms   p99 {result[f'{key}_ms_p99']} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
