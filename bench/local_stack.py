"""20 simultaneous calls on the embedded offline stack (issue 6): do the speech engines keep the loop free?

Processes on 127.0.0.1: the LLM/Sarvam emulators (reference profile), one server
(``voxroute serve --local``: Whisper, Piper, Silero in its worker threads) and this load generator,
which dials N fixture calls at once through the fake carrier (``bench.concurrency.run_step``).

Prints the server's frame pacing (inbound lag and outbound lateness p99, ``agent/metrics.py``),
server CPU per call-second, and the engines' own thread CPU per call-second (``GET /debug/engines``):
webrtcvad (first gate, every frame), Silero (second gate, per utterance), Whisper, Piper.

    python -m bench.local_stack [--calls 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx

from bench.common import processes
from bench.concurrency import LIMIT_MS, run_step


def local_processes():
    """The emulators (reference profile) and ``voxroute serve --local``: its engines load slowly."""
    return processes(profile="reference", serve_args=("--local",), start_timeout_s=60)


async def run(calls: int) -> dict:
    with local_processes() as (base, _pid):
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            before = (await http.get("/debug/engines")).json()
        step = await run_step(base, calls)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            after = (await http.get("/debug/engines")).json()
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
        f"server cpu {r['cpu_ms_per_call_second']} ms per call-second; {'PASS' if r['pass'] else 'FAIL'}"
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
