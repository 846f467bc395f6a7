"""What early requests buy and cost (``ladder.early_request``, agent/preemptive.py).

The realistic mix of ``bench.routing_cost --mix realistic`` (16 calls, 74% of spoken turns
routine), every call at once against one runtime and one set of emulators in this process, under
the ``reference`` profile, in real time, once per setting:

- ``early_request``: off, fast (only routes whose first path is fast-tier) and all;
- Sarvam's end-of-speech silence window (``sarvam.stt_silence_ms``): the default config's 200 ms
  (the emulated final then comes about 250 ms after the end of speech, as the reference profile
  says) and 600 ms (a longer window, as the reference's own example has 500: our endpointer then
  commits at its 300 ms pause and asks for the final).

Per setting: first audio p50/p95 (from the end of speech), the answer's model request after the
end of speech p50, turns with a bridge (of them the fast path's acknowledgement), early requests
used and unused, and cost per call (unused early requests included, as the turn records bill
them).

    python -m bench.early_request [--seed 0] [--json PATH] [--windows 200,600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from bench.common import percentile
from bench.routing_cost import realistic_fixtures
from voxroute.agent.config import Config, load_config
from voxroute.replay import local_stack, replay_fixture

MODES = ("off", "fast", "all")


async def run_setting(base: Config, mode: str, window_ms: int, seed: int) -> dict[str, Any]:
    config = base.model_copy(deep=True)
    config.ladder.early_request = mode  # type: ignore[assignment]
    config.sarvam.stt_silence_ms = window_ms
    fixtures = realistic_fixtures()
    async with local_stack("reference", seed, fixtures, config) as stack:
        async with asyncio.TaskGroup() as tg:
            jobs = [tg.create_task(replay_fixture(f, stack.server_url, config=config)) for f in fixtures]
    calls = [j.result() for j in jobs]
    first_audio, requests, cost = [], [], 0.0
    turns = bridged = acks = used = unused = 0
    for call in calls:
        for t in call["turns"]:
            usage = t.get("usage", {})
            cost += usage.get("cost_usd", 0.0)
            used += bool(usage.get("early_used"))
            unused += usage.get("early_unused", 0)
            if t.get("kind") != "speech" or t.get("first_audio_ms") is None:
                continue
            turns += 1
            first_audio.append(t["first_audio_ms"])
            bridged += bool(t.get("bridge_kind"))
            acks += t.get("bridge_kind") == "ack"  # the fast path's acknowledgement, not the phrase
            tl = t["timeline"]
            if "llm_request" in tl and "speech_end" in tl:
                requests.append(tl["llm_request"] - tl["speech_end"])
    return {
        "early_request": mode,
        "stt_silence_ms": window_ms,
        "calls": len(calls),
        "turns": turns,
        "first_audio_ms_p50": round(statistics.median(first_audio), 1) if first_audio else None,
        "first_audio_ms_p95": percentile(first_audio, 95, places=1),
        "llm_request_after_speech_end_ms_p50": round(statistics.median(requests), 1) if requests else None,
        "bridged_turns": bridged,
        "bridged_by_acknowledgement": acks,
        "early_used": used,
        "early_unused": unused,
        "cost_per_call": round(cost / max(1, len(calls)), 6),
    }


async def main_async(args) -> list[dict[str, Any]]:
    base = load_config(args.config)
    results = []
    for window in (int(w) for w in args.windows.split(",")):
        off_cost = None
        for mode in MODES:
            r = await run_setting(base, mode, window, args.seed)
            off_cost = r["cost_per_call"] if mode == "off" else off_cost
            r["cost_vs_off"] = round(r["cost_per_call"] / max(1e-12, off_cost or 0), 4)
            results.append(r)
            print(
                f"window {window:4d} ms  early {mode:4s}  first audio p50 {r['first_audio_ms_p50']} ms "
                f"p95 {r['first_audio_ms_p95']} ms  model asked p50 {r['llm_request_after_speech_end_ms_p50']} "
                f"ms after the end of speech  bridged {r['bridged_turns']}/{r['turns']} "
                f"({r['bridged_by_acknowledgement']} acknowledgements)  early used "
                f"{r['early_used']} unused {r['early_unused']}  cost/call ${r['cost_per_call']:.6f} "
                f"({r['cost_vs_off']:.2f}x off)",
                flush=True,
            )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--windows", default="200,600", help="Sarvam silence windows to run, in ms")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
