"""Simultaneous calls on the embedded offline stack (issues 6 and 15): do the speech engines keep the
loop free, and does each turn answer in time?

Processes on 127.0.0.1: the LLM/Sarvam emulators (reference profile), one server
(``voxroute serve --local``: Whisper, Piper, Silero in its worker processes) and this load generator,
which dials N fixture calls at once through the fake carrier (``bench.concurrency.run_step``).

Prints the server's frame pacing (inbound lag and outbound lateness p99, ``agent/metrics.py``), its
event-loop lag (timers over 50 ms late, from ``/metrics``), server CPU per call-second, the engines'
own CPU per call-second (``GET /debug/engines``: webrtcvad, Silero, Whisper, Piper), and the turns'
figures from each call's record (``GET /calls/{id}``): first audio p50/p99 against the budget, how
many English turns played a bridge, how long after the end of speech the local STT's final came,
and turns the STT heard nothing of.

    python -m bench.local_stack [--calls 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx

from bench.common import percentile, processes
from bench.concurrency import LIMIT_MS, run_step

STALL_S = 0.05  # a loop timer this late is a stall (agent/loopwatch.py's default)


def local_processes():
    """The emulators (reference profile) and ``voxroute serve --local``: its engines load slowly."""
    return processes(profile="reference", serve_args=("--local",), start_timeout_s=90)


def loop_stalls(metrics_text: str) -> dict[str, int]:
    """Loop-lag samples in all and over 50 ms, from the Prometheus histogram's buckets."""
    total = over = 0
    for line in metrics_text.splitlines():
        if line.startswith("voxroute_event_loop_lag_seconds_count"):
            total = int(float(line.split()[-1]))
        elif line.startswith(f'voxroute_event_loop_lag_seconds_bucket{{le="{STALL_S}"}}'):
            over = -int(float(line.split()[-1]))
    return {"samples": total, "over_50ms": total + over}


def turn_figures(calls: list[dict]) -> dict:
    """First audio, bridges and the STT's final lag of the callers' turns (not greetings)."""
    turns = [t for c in calls for t in c.get("turns", []) if t.get("kind") in ("speech", "dtmf")]
    english = [t for t in turns if t.get("kind") == "speech" and (t.get("language") or "").startswith("en")]
    first = [t["first_audio_ms"] for t in turns if t.get("first_audio_ms") is not None]
    stt_lag = [
        t["timeline"]["stt_final"] - t["timeline"]["speech_end"]
        for t in english
        if "stt_final" in t.get("timeline", {}) and "speech_end" in t.get("timeline", {})
    ]
    return {
        "turns": len(turns),
        "within_budget": sum(1 for t in turns if t.get("within_budget")),
        "first_audio_p50_ms": percentile(first, 50),
        "first_audio_p99_ms": percentile(first, 99),
        "first_audio_max_ms": max(first) if first else None,
        "english_turns": len(english),
        "english_with_bridge": sum(1 for t in english if t.get("bridge")),
        # What played first: the cached phrase, the fast path's acknowledgement before a reasoning
        # answer, or a tool's waiting phrase (agent/answer.py).
        "english_bridge_kinds": {
            kind: sum(1 for t in english if t.get("bridge") and t.get("bridge_kind") == kind)
            for kind in ("cached", "ack", "tool")
        },
        "english_first_audio_p50_ms": percentile(
            [t["first_audio_ms"] for t in english if t.get("first_audio_ms")], 50
        ),
        "stt_final_after_speech_end_p50_ms": percentile(stt_lag, 50),
        "stt_final_after_speech_end_p99_ms": percentile(stt_lag, 99),
        "not_heard": sum(1 for t in english if t.get("outcome") == "not_heard"),
    }


async def run(calls: int) -> dict:
    with local_processes() as (base, _pid):
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            before = (await http.get("/debug/engines")).json()
            lag_before = loop_stalls((await http.get("/metrics")).text)
        step = await run_step(base, calls)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            after = (await http.get("/debug/engines")).json()
            lag_after = loop_stalls((await http.get("/metrics")).text)
            records = []
            for i in range(calls):  # bench.concurrency.run_step's call ids
                r = await http.get(f"/calls/CA{i:032x}", headers={"Accept": "application/json"})
                if r.status_code == 200:
                    records.append(r.json())
    call_s = step["wall_s"] * step["completed"]  # every call lasts about the wall time of the step
    engines = {}
    for name, a in after.items():
        b = before.get(name, {"cpu_s": 0, "audio_s": 0, "jobs": 0})
        cpu_ms = (a["cpu_s"] - b["cpu_s"]) * 1000
        engines[name] = {
            "cpu_ms_per_call_second": round(cpu_ms / call_s, 2) if call_s else None,
            "cpu_ms_per_audio_second": round(cpu_ms / (a["audio_s"] - b["audio_s"]), 1)
            if a["audio_s"] > b["audio_s"]
            else None,
            "jobs": a["jobs"] - b["jobs"],
        }
    step["engines"] = engines
    step["loop"] = {k: lag_after[k] - lag_before[k] for k in lag_after}
    step["turns"] = turn_figures(records)
    step["pass"] = (
        step["failed"] == 0
        and (step["lag_p99_ms"] or 0) < LIMIT_MS
        and (step["jitter_p99_ms"] or 0) < LIMIT_MS
    )
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = asyncio.run(run(args.calls))
    print(
        f"{r['calls']} calls on the offline stack: completed {r['completed']}/{r['calls']} in {r['wall_s']} s; "
        f"inbound lag p50/p99 {r['lag_p50_ms']}/{r['lag_p99_ms']} ms; "
        f"outbound pacing p50/p99 {r['jitter_p50_ms']}/{r['jitter_p99_ms']} ms; "
        f"loop timers over 50 ms late: {r['loop']['over_50ms']}/{r['loop']['samples']}; "
        f"server cpu {r['cpu_ms_per_call_second']} ms per call-second; {'PASS' if r['pass'] else 'FAIL'}"
    )
    t = r["turns"]
    print(
        f"  turns: {t['within_budget']}/{t['turns']} within budget; first audio p50/p99/max "
        f"{t['first_audio_p50_ms']}/{t['first_audio_p99_ms']}/{t['first_audio_max_ms']} ms; English turns "
        f"with a bridge {t['english_with_bridge']}/{t['english_turns']} {t['english_bridge_kinds']} (first audio p50 "
        f"{t['english_first_audio_p50_ms']} ms); STT final after end of speech p50/p99 "
        f"{t['stt_final_after_speech_end_p50_ms']}/{t['stt_final_after_speech_end_p99_ms']} ms; "
        f"not heard {t['not_heard']}"
    )
    for name, e in r["engines"].items():
        print(
            f"  {name:11s} {e['cpu_ms_per_call_second']} ms CPU per call-second "
            f"({e['cpu_ms_per_audio_second']} ms per second of audio processed, {e['jobs']} jobs)"
        )
    if r["errors"]:
        print("  errors:", r["errors"])
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
