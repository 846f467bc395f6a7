"""voxroute and Pipecat side by side: the same fixture calls, emulators, profile and fake carrier (issue 16).

Three systems answer the same calls on 127.0.0.1:

1. ``pipecat``: a plain Pipecat pipeline as its documentation recommends: its Twilio serializer,
   Silero VAD, Pipecat's Sarvam STT and TTS services, and an ``LLMSwitcher`` with the failover
   strategy over the fast model (OpenAI-compatible, the OpenRouter emulator) and a Sarvam backup;
2. ``pipecat_voxroute``: the same pipeline with voxroute's mark-aware serializer, routed LLM service
   and turn-budget processor (voxroute/integrations/pipecat/);
3. ``voxroute``: voxroute's own runtime (``voxroute replay``'s local stack).

**The calls** (one at a time, in real time). Each system gets fresh emulators with the same
``--profile`` and ``--seed``, and the same fake Twilio carrier dials ``--calls`` fixture calls
into it (bench.common's load fixtures, the Hindi call second; both Pipecat bots set their Sarvam
STT and TTS to the language in the stream's parameters). Every figure is measured by the carrier,
on what the caller hears: a turn's first audio is when agent audio starts playing after the
caller's utterance ended. The caller speaks again when the reply has ended: at its ``:end`` mark
(voxroute, and Pipecat with voxroute's serializer), or after 1.5 s of quiet for plain Pipecat,
whose serializer sends no marks (the fake SIP phone's rule).

- ``turns``: caller utterances; ``within_budget``: turns whose first audio came within the turn's
  budget (the routing table's, 1000 ms by default); ``first_audio_ms_p50``/``_p95`` over the turns
  that got any; ``dead_air_turns``: no agent audio within 2 s of the end of speech;
- ``calls_ended_early``: calls the bot side ended, or that did not complete;
- ``cost_per_call``: LLM cost in USD (voxroute's per-turn cost; for plain Pipecat the tokens of its
  usage metrics at the config's prices);
- ``process_cpu_ms_per_call_second``: CPU of this process (bot, emulators and carrier share it)
  per second of call.

**Calls per core** (the ramp; ``--no-ramp`` skips it). Per system, the server alone in a process
pinned to one core (``voxroute serve``, or a Pipecat bot from voxroute/integrations/pipecat/harness.py),
the emulators (profile ``zero``, as bench.concurrency) and this load generator on the other core.
N calls at once (the fixtures above but the DTMF one, which neither Pipecat pipeline answers), N
doubling from ``--ramp-start`` while a step passes, then bisected between the largest pass and the
smallest failure. A step passes when every call completes and the server's
inbound lag p99 (caller frames against their media clock) and outbound jitter p99 (paced audio
sends against their schedule: voxroute's player; Pipecat's websocket output transport) are both
under 20 ms, read from the server's ``/debug/stats`` as bench.concurrency does. Unlike
bench.concurrency, turns that took a provider fallback do not fail a step here: a Pipecat server
has no fallback count, and every system is judged by the same rule.

- ``calls_per_core``: the largest passing N; ``cpu_ms_per_call_second``: the server's CPU per
  second of call at that N. Without the ramp, ``calls_per_core`` is null and
  ``cpu_ms_per_call_second`` is this process's; ``calls_per_core_basis`` and ``cpu_basis`` say
  which. ``ramp`` holds every step.

    python -m bench.vs_pipecat [--calls 4] [--profile chaos] [--seed 7] [--no-ramp] [--json out/vs_pipecat.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import LOAD_FIXTURES, percentile, pin, step_result, webhook_params
from bench.concurrency import LIMIT_MS, passes
from voxroute.agent.config import Config, load_config
from voxroute.agent.fixture import load
from voxroute.testing.ports import free_port

SYSTEMS = ("pipecat", "pipecat_voxroute", "voxroute")
DEAD_AIR_S = 2.0
# A caller without marks (plain Pipecat sends none) takes this much quiet for the end of the bot's
# reply: the fake SIP phone's rule (emulators/sip_carrier.py END_SILENCE_S)
END_SILENCE_S = 1.5
# How long the caller waits for a reply's end before speaking on (an error of the call): the fake
# carrier's default; a long reply plays for more than 8 s
AGENT_WAIT_S = 20.0
# bench.common's load fixtures, the Hindi call second so that a short run has one: both Pipecat bots
# set their Sarvam STT and TTS to the language the call's stream parameters name, as voxroute does
FIXTURES = sorted(LOAD_FIXTURES, key=lambda f: f != "order_status" and not f.startswith("hindi"))


def budget_ms(config: Config, language: str | None = None) -> int:
    table = config.routing_table()
    group = table.group("default", language or config.language)
    return table.cell("default", group, "voice", "faq").budget_ms


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
    cpu_ms = round(cpu_s * 1000 / call_s, 1) if call_s else None  # bot, emulators and carrier
    return {
        "calls": len(calls),
        "turns": len(turns),
        "within_budget": sum(t["within_budget"] for t in turns),
        "first_audio_ms_p50": round(statistics.median(fa), 1) if fa else None,
        "first_audio_ms_p95": percentile(fa, 95, places=1),
        "dead_air_turns": sum(t["dead_air"] for t in turns),
        "calls_ended_early": sum(not c["completed"] for c in calls),
        "cost_per_call": round(sum(c["cost_usd"] for c in calls) / len(calls), 6) if calls else None,
        "cpu_ms_per_call_second": cpu_ms,
        "cpu_basis": "this process: bot, emulators and carrier, one call at a time",
        "process_cpu_ms_per_call_second": cpu_ms,
        "calls_per_core": None,
        "calls_per_core_basis": NOT_MEASURED,
    }


def _prices(config: Config) -> dict[str, tuple[float, float]]:
    paths = list(config.models.values()) + [p for t in config.tenants.values() for p in t.models.values()]
    return {p.model: (p.price_in_per_mtok, p.price_out_per_mtok) for p in paths}


async def run_voxroute(names: list[str], profile: str, seed: int, config: Config) -> list[dict]:
    from voxroute.replay import local_stack, replay_fixture

    calls = []
    async with local_stack(profile, seed, config=config) as stack:
        for name in names:
            fixture = load(name)
            out = await replay_fixture(fixture, stack.server_url, config=config)
            carrier = out["carrier"]
            calls.append(
                {
                    "fixture": name,
                    "turns": carrier_turns(carrier, budget_ms(config, fixture.script.language)),
                    "completed": out["ended"] in ("completed", "handoff"),
                    "duration_s": carrier["duration_s"],
                    "cost_usd": sum((t.get("usage") or {}).get("cost_usd", 0.0) for t in out["turns"]),
                    "carrier_errors": carrier.get("errors", []),
                }
            )
    return calls


async def run_pipecat(names: list[str], profile: str, seed: int, config: Config, system: str) -> list[dict]:
    from voxroute.emulators.carrier import dial
    from voxroute.integrations.pipecat.harness import served_bot

    prices = _prices(config)
    calls = []
    async with served_bot(system, profile, seed, config) as (bot, stream):
        for name in names:
            # Plain Pipecat's serializer sends no marks: its caller takes quiet for the end of a reply
            quiet = END_SILENCE_S if system == "pipecat" else None
            fixture = load(name)
            result = await dial(fixture, stream, agent_wait_s=AGENT_WAIT_S, end_silence_s=quiet)
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
                    "turns": carrier_turns(result.as_dict(), budget_ms(config, fixture.script.language)),
                    "completed": result.completed and result.closed_by == "carrier",
                    "duration_s": result.duration_s,
                    "cost_usd": cost,
                    "carrier_errors": result.errors,
                }
            )
    return calls


# ------------------------------------------------------------------ calls per core, measured

RAMP_PROFILE = "zero"  # as bench.concurrency: the server's own cost, not the providers' delays
# The ramp's calls leave out the keypad call: neither Pipecat pipeline here answers DTMF, so that call
# never completes there, whatever the load
RAMP_FIXTURES = [f for f in FIXTURES if f != "dtmf_entry"]
NOT_MEASURED = "not measured (run without --no-ramp)"


def _stop(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(10)
    if p.poll() is None:
        p.kill()
        p.wait()


@contextlib.contextmanager
def server_process(system: str, start_timeout_s: float = 90):
    """The emulators (profile ``zero``) and ``system``'s server, each in a process of its own on
    127.0.0.1, the server pinned to one core and the emulators and this process to the other
    (bench.common.pin). Yields the server's base URL. voxroute's server is ``voxroute serve``;
    Pipecat's is a :class:`~agent.integrations.pipecat.harness.PipecatBot` with the same figures at
    ``/debug/stats``."""
    env = dict(os.environ)
    for key in ("SARVAM_API_KEY", "OPENROUTER_API_KEY", "TWILIO_AUTH_TOKEN", "VOXROUTE_API_KEY"):
        env.pop(key, None)  # emulators in place of every provider, unsigned carrier traffic
    cli = [sys.executable, "-m", "voxroute.cli"]
    affinity = os.sched_getaffinity(0)
    emu = server = None
    try:
        emu = subprocess.Popen(
            [*cli, "emulators", "--profile", RAMP_PROFILE, "--quiet"],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        urls = emu.stdout.readline()  # type: ignore[union-attr]
        port = free_port()
        if system == "voxroute":
            cmd = [*cli, "serve", "--dev", "--host", "127.0.0.1", "--port", str(port), "--quiet"]
            cmd += ["--emulators", urls.strip()]
        else:
            cmd = [sys.executable, "-m", "voxroute.integrations.pipecat.harness", "--system", system]
            cmd += ["--port", str(port), "--emulators", urls.strip()]
        server = subprocess.Popen(cmd, env=env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the {system} server did not start")
            time.sleep(0.3)
        print(f"{system}: {pin(server.pid, [emu.pid])}", flush=True)
        yield base
    finally:
        _stop(server)
        _stop(emu)
        os.sched_setaffinity(0, affinity)


async def ramp_step(system: str, base: str, n: int) -> dict[str, Any]:
    """``n`` calls at once (starts spread over one second) into the server at ``base``; its inbound
    lag and outbound jitter p99, and its CPU per call-second, as bench.concurrency reads them."""
    from voxroute.emulators.carrier import dial
    from voxroute.server import ws_url

    fixtures = [load(RAMP_FIXTURES[i % len(RAMP_FIXTURES)]) for i in range(n)]
    quiet = END_SILENCE_S if system == "pipecat" else None
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        await http.post("/debug/stats/reset")
        before = (await http.get("/debug/stats")).json()
        t0 = time.monotonic()

        async def one(i: int):
            await asyncio.sleep(i * 1.0 / n)
            sid = f"CA{i:032x}"
            params = None
            if system == "voxroute":
                params = await webhook_params(http, sid)
                params["language"] = fixtures[i].script.language
            url = ws_url(base) + "/twilio/stream"
            return await dial(
                fixtures[i],
                url,
                custom_parameters=params,
                call_sid=sid,
                agent_wait_s=AGENT_WAIT_S,
                end_silence_s=quiet,
            )

        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall = time.monotonic() - t0
        after = (await http.get("/debug/stats")).json()
    return step_result(n, results, before, after, wall)


def next_load(n: int, passed: bool, lo: int, hi: int | None, cap: int) -> tuple[int | None, int, int | None]:
    """The ramp: double while steps pass, then bisect between the largest pass and the smallest
    failure until they are within an eighth of each other. Returns (next N or None, lo, hi)."""
    if passed:
        lo = max(lo, n)
    else:
        hi = n if hi is None else min(hi, n)
    if hi is None:
        return (n * 2 if n * 2 <= cap else None), lo, hi
    if hi - lo <= max(1, lo // 8):
        return None, lo, hi
    return (lo + hi) // 2, lo, hi


async def ramp(system: str, start: int = 2, cap: int = 256) -> dict[str, Any]:
    """The largest number of concurrent calls ``system``'s server carries on one core with inbound
    lag and outbound jitter p99 both under 20 ms and every call completed."""
    rows: list[dict[str, Any]] = []
    lo, hi, n = 0, None, start
    with server_process(system) as base:
        while n is not None:
            step = await ramp_step(system, base, n)
            step["pass"] = passes(step)
            rows.append(step)
            print(
                f"{system} N={n:4d}  completed {step['completed']}/{n}  lag p50/p99 {step['lag_p50_ms']}/"
                f"{step['lag_p99_ms']} ms  jitter p50/p99 {step['jitter_p50_ms']}/{step['jitter_p99_ms']} ms  "
                f"cpu {step['cpu_ms_per_call_second']} ms/call-s  generator lag max "
                f"{step['generator_max_lag_ms']} ms  {'PASS' if step['pass'] else 'FAIL'}",
                flush=True,
            )
            n, lo, hi = next_load(n, step["pass"], lo, hi, cap)
            await asyncio.sleep(2)  # the last pipelines wind down
    best = max((r for r in rows if r["pass"]), key=lambda r: r["calls"], default=None)
    return {
        "max_calls": best["calls"] if best else 0,
        "first_failure": hi,
        "lag_p99_ms": best["lag_p99_ms"] if best else None,
        "jitter_p99_ms": best["jitter_p99_ms"] if best else None,
        "cpu_ms_per_call_second": best["cpu_ms_per_call_second"] if best else None,
        "limit_ms": LIMIT_MS,
        "profile": RAMP_PROFILE,
        "steps": rows,
    }


async def run(
    calls: int,
    profile: str,
    seed: int,
    systems: tuple[str, ...] = SYSTEMS,
    measure_ramp: bool = False,
    ramp_start: int = 2,
    ramp_cap: int = 256,
) -> dict[str, Any]:
    config = load_config()
    config.call_log.enabled = False
    names = [FIXTURES[i % len(FIXTURES)] for i in range(calls)]
    out: dict[str, Any] = {"profile": profile, "seed": seed, "calls": calls, "fixtures": names, "systems": {}}
    for system in systems:
        cpu0 = time.process_time()
        if system == "voxroute":
            per_call = await run_voxroute(names, profile, seed, config)
        else:
            per_call = await run_pipecat(names, profile, seed, config, system)
        out["systems"][system] = summary(per_call, time.process_time() - cpu0)
        out["systems"][system]["per_call"] = per_call
    for system in systems:
        s = out["systems"][system]
        if not measure_ramp:
            continue
        r = await ramp(system, ramp_start, ramp_cap)
        s["ramp"] = r
        s["calls_per_core"] = r["max_calls"]
        s["calls_per_core_basis"] = (
            f"measured: the most concurrent calls (profile {RAMP_PROFILE}) with the server pinned to one "
            f"core, inbound lag and outbound jitter p99 under {LIMIT_MS:g} ms and every call completed"
        )
        s["cpu_ms_per_call_second"] = r["cpu_ms_per_call_second"]
        s["cpu_basis"] = "the server process alone, at calls_per_core concurrent calls"
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
        ("process_cpu_ms_per_call_second", "CPU ms/call-s (one process)"),
    ]
    if any("ramp" in s for s in result["systems"].values()):
        cols += [("cpu_ms_per_call_second", "server CPU ms/call-s"), ("calls_per_core", "calls/core")]
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
    ap.add_argument(
        "--no-ramp", action="store_true", help="skip the calls-per-core ramp (minutes per system)"
    )
    ap.add_argument("--ramp-start", type=int, default=2, help="the ramp's first number of concurrent calls")
    ap.add_argument("--ramp-max", type=int, default=256, help="the ramp stops doubling here")
    args = ap.parse_args()
    result = asyncio.run(
        run(
            args.calls,
            args.profile,
            args.seed,
            measure_ramp=not args.no_ramp,
            ramp_start=args.ramp_start,
            ramp_cap=args.ramp_max,
        )
    )
    print(f"{args.calls} calls per system, profile {args.profile}, seed {args.seed}")
    print(table(result))
    for name, s in result["systems"].items():
        print(f"{name}: calls/core {s['calls_per_core_basis']}; CPU ms/call-s: {s['cpu_basis']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
