"""A Pipecat phone bot with voxroute's router, latency budget and mark-aware Twilio serializer, offline.

    pip install -e '.[pipecat]'
    .venv/bin/python examples/pipecat_bot.py              # dials order_status into the bot, prints turns
    .venv/bin/python examples/pipecat_bot.py --fixture billing_dispute --profile chaos --seed 7

Everything runs on 127.0.0.1 and needs no key: voxroute's emulators stand in for Sarvam (speech to
text and text to speech) and for the OpenAI-compatible LLM providers, and voxroute's fake Twilio
carrier dials a recorded call into the bot's ``/twilio/stream`` websocket, as Twilio would.

The pipeline (``voxroute/integrations/pipecat/harness.py``, ``PipecatBot.call``) is an ordinary Pipecat
one::

    transport.input()              Twilio in: TwilioMarkSerializer (voxroute's sans-I/O codec)
    SarvamRealtimeSTTService       Pipecat's own, pointed at the Sarvam emulator
    user context aggregator        Silero VAD
    RoutedLLMService               voxroute's router and fallback ladder over the emulated providers
    SarvamHttpTTSService           Pipecat's own, pointed at the Sarvam emulator
    TurnBudgetProcessor            the cached bridge before the budget runs out, the apology at the cap
    transport.output()             Twilio out, a mark after each spoken chunk
    HeardTextProcessor             the context keeps only what the caller heard
    assistant context aggregator

``--system pipecat`` runs plain Pipecat instead (its Twilio serializer and its failover switcher).
For a real line, build the same pipeline in your Twilio websocket route: ``build_services`` takes the
providers' keys from the environment (``SARVAM_API_KEY``, ``OPENROUTER_API_KEY``), and Pipecat's
Sarvam services their default URLs and your key.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.emulators.carrier import dial
from voxroute.integrations.pipecat.harness import SYSTEMS, served_bot


async def main(fixture: str, profile: str, seed: int, system: str) -> None:
    config = load_config()
    config.call_log.enabled = False
    async with served_bot(system, profile, seed, config) as (bot, stream):
        print(f"{system} bot on {stream}; dialling {fixture} ({profile}, seed {seed})")
        # plain Pipecat sends no marks: the caller takes 1.5 s of quiet for the end of a reply (as in
        # bench/vs_pipecat.py); voxroute's serializer ends each reply with an ":end" mark
        quiet = 1.5 if system == "pipecat" else None
        result = await dial(load(fixture), stream, end_silence_s=quiet)
    call = bot.calls[0] if bot.calls else {"turns": [], "bridges": 0}
    for turn in call["turns"]:
        route = turn["route"] or {}
        print(f"  {turn['transcript']!r} -> {route.get('class')} / {route.get('tier')} on "
              f"{turn['usage'].get('path')}: {route.get('reason')}")  # fmt: skip
    for item in result.items:
        if item.ended_at is None:
            continue
        late = None if item.reply_started_at is None else (item.reply_started_at - item.ended_at) * 1000
        print(f"  caller item {item.index}: first agent audio heard "
              f"{'never' if late is None else f'{late:.0f} ms'} after the caller stopped")  # fmt: skip
    print(f"{len(result.marks)} marks echoed, {len(result.clears)} clears, {call['bridges']} bridges, "
          f"call {'completed' if result.completed else 'ended early'}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", default="order_status")
    parser.add_argument("--profile", default="reference", choices=["zero", "reference", "chaos"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system", default="pipecat_voxroute", choices=SYSTEMS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.fixture, args.profile, args.seed, args.system))
