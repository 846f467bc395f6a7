"""How many simultaneous calls one voxroute server process carries in real time (issue 2).

On 127.0.0.1: the emulators (``voxroute emulators --profile zero``; pinned, twice: Sarvam's
streaming STT from one process, the TTS and the LLMs from the other, as the real ones are services
of their own), one server (``voxroute serve --emulators ...``), and this load generator, which
dials N fixture calls at once through the fake carrier over real websockets. For each N it reads
the server's own figures (``GET /debug/stats``):

- inbound lag p99: how late the server processed caller frames against their media clock;
- outbound jitter p99: how late the server's player sent agent audio against its schedule;
- CPU per call: server CPU ms per second of call audio.

The answer is the largest N at which both p99s stay under 20 ms, every call completes, and no
turn took a provider fallback (``voxroute_fallbacks_total`` in ``GET /metrics``; a hedge that
lost its race is not one: the turn had its answer in time). The emulators answer at once (profile
zero), so a fallback there means they were starved of CPU on their core: the calls were degraded (a
dropped TTS chunk sends less audio and costs the server less), and the step measured a lighter
load than N healthy calls.

``--workers 2``: the box figure. The server is ``voxroute serve --workers 2`` on this machine with
the emulators and the load generator beside it, unpinned; the figures are read from each worker's
own port (``--worker-ports``) and merged: CPU summed, lag and jitter the worst worker's.

    python -m bench.concurrency [--steps 25,50,100,150,200,250] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from pathlib import Path

import httpx

from bench.common import LOAD_FIXTURES as FIXTURES
from bench.common import load_loop, processes, step_result, stream_server_args, webhook_params
from voxroute.agent.fixture import load
from voxroute.emulators.carrier import dial
from voxroute.server import ws_url
from voxroute.testing.ports import free_port

LIMIT_MS = 20.0


async def server_stats(http: httpx.AsyncClient, workers: list[str] | None, reset: bool = False) -> dict:
    """``/debug/stats`` of the server; with ``--workers``, of each worker on its own port, merged:
    CPU (and the collector's runs and CPU) summed, each percentile and pause the worst worker's
    (every worker must hold the limit)."""
    bases = workers or [str(http.base_url)]
    if reset:
        for base in bases:
            await http.post(base.rstrip("/") + "/debug/stats/reset")
    each = [(await http.get(base.rstrip("/") + "/debug/stats")).json() for base in bases]
    merged = {key: max((s[key] for s in each if s[key] is not None), default=None) for key in each[0]}
    merged["cpu_s"] = sum(s["cpu_s"] for s in each)
    for gen in range(3):  # the collector's runs and CPU add up too (its longest pause stays the worst)
        for key in (f"gc{gen}_count", f"gc{gen}_cpu_ms"):
            merged[key] = sum(s.get(key) or 0 for s in each)
    return merged


async def provider_faults(http: httpx.AsyncClient, workers: list[str] | None) -> dict[str, int]:
    """``voxroute_fallbacks_total`` from ``/metrics``, summed over the workers, by
    ``provider_kind/reason/action``."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, int] = {}
    for base in workers or [str(http.base_url)]:
        text = (await http.get(base.rstrip("/") + "/metrics")).text
        for family in text_string_to_metric_families(text):
            if family.name != "voxroute_fallbacks":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = f"{labels['provider_kind']}/{labels['reason']}/{labels['action']}"
                    counts[key] = counts.get(key, 0) + int(sample.value)
    return counts


async def run_step(
    base: str, n: int, stream_base: str | None = None, workers: list[str] | None = None
) -> dict:
    fixtures = [load(FIXTURES[i % len(FIXTURES)]) for i in range(n)]
    # The load generator's own collector stays off during the step (it runs between steps): with
    # hundreds of calls its pauses made the generator's frames late, and the server's inbound lag
    # counts from the frames' media clock, so the generator's pause was counted as the server's.
    gc.collect()
    gc.disable()
    try:
        return await _step(base, n, fixtures, stream_base, workers)
    finally:
        gc.enable()


async def _step(
    base: str, n: int, fixtures: list, stream_base: str | None, workers: list[str] | None
) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        faults_before = await provider_faults(http, workers)
        before = await server_stats(http, workers, reset=True)
        t0 = time.monotonic()

        async def one(i: int):
            await asyncio.sleep(i * 1.0 / max(n, 1))  # spread call starts over one second
            sid = f"CA{i:032x}"
            params = await webhook_params(http, sid)
            params["language"] = fixtures[i].script.language
            return await dial(
                fixtures[i],
                (stream_base or ws_url(base)) + "/twilio/stream",
                custom_parameters=params,
                call_sid=sid,
            )

        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall = time.monotonic() - t0
        after = await server_stats(http, workers)
        faults_after = await provider_faults(http, workers)
    step = step_result(n, results, before, after, wall)
    step["provider_fallbacks"] = {
        key: count - faults_before.get(key, 0)
        for key, count in sorted(faults_after.items())
        if count > faults_before.get(key, 0)
    }
    step["degraded_turn_fallbacks"] = sum(
        count for key, count in step["provider_fallbacks"].items() if not key.endswith("/hedge lost")
    )
    return step


def passes(step: dict) -> bool:
    """Every call completed, both p99s under the limit, and no turn took a fallback. A step with no
    fallback count (``bench.vs_pipecat``: a Pipecat server has no ``voxroute_fallbacks_total``, so
    every system there is judged on the first three alone) passes on those."""
    return (
        step["failed"] == 0
        and step.get("degraded_turn_fallbacks", 0) == 0
        and step["lag_p99_ms"] is not None
        and step["lag_p99_ms"] < LIMIT_MS
        and (step["jitter_p99_ms"] or 0) < LIMIT_MS
    )


async def run(
    steps: list[int],
    pinned: bool,
    keep_going: bool = False,
    stream_server: str = "media",
    workers: int = 1,
    event_loop: str = "uvloop",
) -> dict:
    rows = []
    best = None
    own = _worker_ports(workers) if workers > 1 else None  # each worker's own port, for its stats
    with (
        stream_server_args(stream_server, event_loop, max_calls=max(steps)) as (serve_args, stream_base),
        processes(
            pinned,
            serve_args=(*serve_args, *_workers_args(workers, own)),
            emulator_loop=load_loop()[0],
            load_first=True,
            # pinned at nice 19 beside the generator, a second emulators process takes none of the
            # generator's time; unpinned (--workers), at nice 0, it took enough to make it late
            split_stt=pinned,
        ) as (base, _pid),
    ):
        worker_bases = [f"http://127.0.0.1:{own + i}" for i in range(workers)] if own else None
        if worker_bases:
            await _wait_ready(worker_bases)
        for n in steps:
            step = await run_step(base, n, stream_base, worker_bases)
            step["pass"] = passes(step)
            rows.append(step)
            print(
                f"N={n:4d}  completed {step['completed']:4d}/{n:<4d}  inbound lag p50/p99 {step['lag_p50_ms']}/{step['lag_p99_ms']} ms  "
                f"outbound jitter p50/p99 {step['jitter_p50_ms']}/{step['jitter_p99_ms']} ms  "
                f"cpu {step['cpu_ms_per_call_second']} ms/call-s  generator lag max {step['generator_max_lag_ms']} ms  "
                f"gc: {step['gc_cpu_ms_per_call_second']} ms/call-s, young {step['gc_young_cpu_ms_mean']} ms CPU each, "
                f"{step['gc_full']} full ({step['gc_full_cpu_ms_mean']} ms CPU each), longest pause {step['gc_max_ms']} ms  "
                f"fallbacks {step['degraded_turn_fallbacks']} (hedges lost aside) {step['provider_fallbacks'] or ''}  "
                f"{'PASS' if step['pass'] else 'FAIL'}",
                flush=True,
            )
            if step["pass"]:
                best = step
            elif not keep_going:
                break
    return {
        "max_calls": best["calls"] if best else 0,
        "lag_p99_ms": best["lag_p99_ms"] if best else None,
        "jitter_p99_ms": best["jitter_p99_ms"] if best else None,
        "cpu_ms_per_call_second": best["cpu_ms_per_call_second"] if best else None,
        "limit_ms": LIMIT_MS,
        "steps": rows,
    }


def _workers_args(workers: int, own: int | None) -> tuple[str, ...]:
    """``voxroute serve --workers N``: N processes on the one port (the box figure)."""
    return ("--workers", str(workers), "--worker-ports", str(own)) if workers > 1 else ()


def _worker_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    return free_port(count=count)


async def _wait_ready(bases: list[str], timeout_s: float = 60) -> None:
    """Until every worker answers on its own port (the shared one answers with the first)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as http:
        for base in bases:
            while True:
                try:
                    if (await http.get(base + "/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {base} did not start")
                await asyncio.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="25,50,75,100,150,200,250,300")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--stream-server",
        choices=("media", "asgi"),
        default="media",
        help="media: the streams on the media port's own websocket server (telephony.media_port); asgi: on the main port",
    )
    ap.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="uvloop",
        help="the server's telephony.event_loop (uvloop, the default: pip install 'voxroute[uvloop]')",
    )
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place all three processes")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the box figure: the server is `voxroute serve --workers N` (unpinned, beside the load "
        "generator and the emulators); lag and jitter are the worst worker's",
    )
    ap.add_argument(
        "--keep-going",
        action="store_true",
        help="run every step even after one fails (repeat a step, e.g. --steps 50,50,50, for a median)",
    )
    args = ap.parse_args()
    steps = [int(x) for x in args.steps.split(",")]
    pinned = not args.no_pin and args.workers == 1  # several workers: the scheduler places them
    loop, factory = load_loop()  # the load generator's loop, as the emulators'
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(
            run(
                steps,
                pinned=pinned,
                keep_going=args.keep_going,
                stream_server=args.stream_server,
                workers=args.workers,
                event_loop=args.event_loop,
            )
        )
    result["load_loop"] = loop
    result["stream_server"] = args.stream_server
    result["event_loop"] = args.event_loop
    result["pinned"] = pinned
    result["workers"] = args.workers
    print(
        f"largest N within {LIMIT_MS:.0f} ms: {result['max_calls']} calls "
        f"(lag p99 {result['lag_p99_ms']} ms, jitter p99 {result['jitter_p99_ms']} ms, "
        f"{result['cpu_ms_per_call_second']} CPU ms per call-second)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
