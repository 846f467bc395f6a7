"""voxroute and Pipecat side by side: the same fixture calls, emulators, profile and fake carrier (issue 16).

Three systems answer the same calls, one call at a time, in real time, on 127.0.0.1:

1. ``pipecat``: a plain Pipecat pipeline as its documentation recommends: its Twilio serializer,
   Silero VAD, Pipecat's Sarvam STT and TTS services, and an ``LLMSwitcher`` with the failover
   strategy over the fast model (OpenAI-compatible, the OpenRouter emulator) and a Sarvam backup;
2. ``pipecat_voxroute``: the same pipeline with voxroute's mark-aware serializer, routed LLM service
   and turn-budget processor (agent/integrations/pipecat/);
3. ``voxroute``: voxroute's own runtime (``voxroute replay``'s local stack).

Each gets fresh emulators with the same ``--profile`` and ``--seed``, and the same fake Twilio
carrier dials ``--calls`` fixture calls into it. Every figure is measured by the carrier, on what
the caller hears: a turn's first audio is when agent audio starts playing after the caller's
utterance ended.

- ``turns``: caller utterances; ``within_budget``: turns whose first audio came within the turn's
  budget (the routing table's, 1000 ms by default); ``first_audio_ms_p50``/``_p95`` over the turns
  that got any; ``dead_air_turns``: no agent audio within 2 s of the end of speech;
- ``calls_ended_early``: calls the bot side ended, or that did not complete;
- ``cost_per_call``: LLM cost in USD (voxroute's per-turn cost; for plain Pipecat the tokens of its
  usage metrics at the config's prices);
- ``cpu_ms_per_call_second``: CPU of this process (bot, emulators and carrier: they share it) per
  second of call; ``calls_per_core``: ``1000 / cpu_ms_per_call_second``, an estimate from CPU alone
  (``bench.concurrency`` measures voxroute's with lag and jitter p99 under 20 ms).

    python -m bench.vs_pipecat [--calls 6] [--profile chaos] [--seed 7] [--json out/vs_pipecat.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from agent.config import Config, load_config
from agent.fixture import load
from bench.common import LOAD_FIXTURES

SYSTEMS = ("pipecat", "pipecat_voxroute", "voxroute")
DEAD_AIR_S = 2.0
# English calls: the plain Pipecat pipeline's STT is configured for en-IN, as a Pipecat user would
FIXTURES = [f for f in LOAD_FIXTURES if not f.startswith("hindi")]


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 1)


def budget_ms(config: Config) -> int:
    table = config.routing_table()
    return table.cell("default", table.group("default", config.language), "voice", "faq").budget_ms


def carrier_turns(result: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """Per caller utterance: the first audio the caller heard after it, in ms (None: none)."""
    turns = []
    for item in result["items"]:
        if item["kind"] != "audio" or item.get("ended_at") is None:
            continue
        started = item.get("reply_started_at")
        fa = None if started is None else round((started - item["ended_at"]) * 1000, 1)
        turns.append(
            {
                "first_audio_ms": fa,
                "within_budget": fa is not None and fa <= budget,
                "dead_air": fa is None or fa > DEAD_AIR_S * 1000,
            }
        )
    return turns


def summary(calls: list[dict[str, Any]], cpu_s: float) -> dict[str, Any]:
    turns = [t for c in calls for t in c["turns"]]
    fa = [t["first_audio_ms"] for t in turns if t["first_audio_ms"] is not None]
    call_s = sum(c["duration_s"] for c in calls)
    cpu_ms = round(cpu_s * 1000 / call_s, 1) if call_s else None
    return {
        "calls": len(calls),
        "turns": len(turns),
        "within_budget": sum(t["within_budget"] for t in turns),
        "first_audio_ms_p50": round(statistics.median(fa), 1) if fa else None,
        "first_audio_ms_p95": _percentile(fa, 95),
        "dead_air_turns": sum(t["dead_air"] for t in turns),
        "calls_ended_early": sum(not c["completed"] for c in calls),
        "cost_per_call": round(sum(c["cost_usd"] for c in calls) / len(calls), 6) if calls else None,
        "cpu_ms_per_call_second": cpu_ms,
        "calls_per_core": int(1000 // cpu_ms) if cpu_ms else None,
        "calls_per_core_basis": "estimate: 1000 CPU ms per second / cpu_ms_per_call_second",
    }


def _prices(config: Config) -> dict[str, tuple[float, float]]:
    paths = list(config.models.values()) + [p for t in config.tenants.values() for p in t.models.values()]
    return {p.model: (p.price_in_per_mtok, p.price_out_per_mtok) for p in paths}


async def run_voxroute(names: list[str], profile: str, seed: int, config: Config, budget: int) -> list[dict]:
    from agent.replay import local_stack, replay_fixture

    calls = []
    async with local_stack(profile, seed, config=config) as stack:
        for name in names:
            out = await replay_fixture(load(name), stack.server_url, config=config)
            carrier = out["carrier"]
            calls.append(
                {
                    "fixture": name,
                    "turns": carrier_turns(carrier, budget),
                    "completed": out["ended"] in ("completed", "handoff"),
                    "duration_s": carrier["duration_s"],
                    "cost_usd": sum((t.get("usage") or {}).get("cost_usd", 0.0) for t in out["turns"]),
                }
            )
    return calls


async def run_pipecat(
    names: list[str], profile: str, seed: int, config: Config, budget: int, system: str
) -> list[dict]:
    from agent.integrations.pipecat.harness import served_bot
    from emulators.carrier import dial

    prices = _prices(config)
    calls = []
    async with served_bot(system, profile, seed, config) as (bot, stream):
        for name in names:
            result = await dial(load(name), stream, agent_wait_s=8)
            record = bot.calls[-1] if bot.calls else {"turns": [], "usage": [], "done": None}
            if record["done"] is not None:  # the bot's pipeline ends a moment after the call
                await asyncio.wait_for(record["done"].wait(), 10)
            if system == "pipecat_voxroute":
                cost = sum(t["usage"].get("cost_usd", 0.0) for t in record["turns"])
            else:
                cost = sum(
                    (p * prices.get(m, (0, 0))[0] + c * prices.get(m, (0, 0))[1]) / 1e6
                    for m, p, c in record["usage"]
                )
            calls.append(
                {
                    "fixture": name,
                    "turns": carrier_turns(result.as_dict(), budget),
                    "completed": result.completed and result.closed_by == "carrier",
                    "duration_s": result.duration_s,
                    "cost_usd": cost,
                }
            )
    return calls


async def run(calls: int, profile: str, seed: int, systems: tuple[str, ...] = SYSTEMS) -> dict[str, Any]:
    config = load_config()
    config.call_log.enabled = False
    budget = budget_ms(config)
    names = [FIXTURES[i % len(FIXTURES)] for i in range(calls)]
    out: dict[str, Any] = {"profile": profile, "seed": seed, "calls": calls, "fixtures": names, "systems": {}}
    for system in systems:
        cpu0 = time.process_time()
        if system == "voxroute":
            per_call = await run_voxroute(names, profile, seed, config, budget)
        else:
            per_call = await run_pipecat(names, profile, seed, config, budget, system)
        out["systems"][system] = summary(per_call, time.process_time() - cpu0)
        out["systems"][system]["per_call"] = per_call
    return out


def table(result: dict[str, Any]) -> str:
    cols = [
        ("turns", "turns"),
        ("within_budget", "in budget"),
        ("first_audio_ms_p50", "first audio p50 ms"),
        ("first_audio_ms_p95", "p95 ms"),
        ("dead_air_turns", "dead-air turns"),
        ("calls_ended_early", "ended early"),
        ("cost_per_call", "cost/call USD"),
        ("cpu_ms_per_call_second", "CPU ms/call-s"),
        ("calls_per_core", "calls/core (est.)"),
    ]
    lines = ["| system | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in result["systems"].items():
        lines.append(f"| {name} | " + " | ".join(str(s.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--profile", default="chaos", choices=["zero", "reference", "chaos"])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args.calls, args.profile, args.seed))
    print(f"{args.calls} calls per system, profile {args.profile}, seed {args.seed}")
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
