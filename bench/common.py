"""What the benchmarks share: emulators and a server in their own processes, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

import httpx
import numpy as np

from voxroute.testing.ports import free_port

# The fixture calls a load benchmark cycles through (one of each kind of call, both languages).
LOAD_FIXTURES = [
    "order_status",
    "billing_dispute",
    "booking_change",
    "angry_complaint",
    "dtmf_entry",
    "hindi_order_status",
]


def percentile(values: list[float], q: float, places: int = 3) -> float | None:
    """The ``q``-th percentile of ``values`` (linear interpolation, as the server's own figures:
    agent/samples.py), rounded to ``places``; None when empty."""
    if not values:
        return None
    return round(float(np.percentile(values, q)), places)


def load_loop() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop for a benchmark's load side (its generator and the emulators), its name and
    factory: uvloop when installed, so that the side sharing one core with the emulators can drive
    more calls."""
    try:
        import uvloop
    except ImportError:
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def pin(server_pid: int, others: list[int], load_first: bool = False) -> str:
    """Give the server core 0 to itself and put everything else on the remaining cores, so the
    server's figures are its own and not the scheduler's (all three processes share 2 cores here)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return "not pinned (one core)"
    os.sched_setaffinity(server_pid, {cores[0]})
    for pid in [*others, os.getpid()]:
        os.sched_setaffinity(pid, set(cores[1:]))
    if not load_first:
        return f"server on core {cores[0]}, emulators and load generator on {cores[1:]}"
    # ``load_first``: the load generator before the emulators on their shared core. The server's inbound
    # lag counts from the frames' media clock: a generator that waits for the emulators makes the server
    # look late.
    for pid in others:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    return f"server on core {cores[0]}, emulators (nice 19) and load generator on {cores[1:]}"


@contextlib.contextmanager
def processes(
    pinned: bool = False,
    profile: str = "zero",
    serve_args: tuple[str, ...] = (),
    start_timeout_s: float = 30,
    voice_speed: float = 1.0,
    emulator_loop: str = "asyncio",
    load_first: bool = False,
    split_stt: bool = False,
):
    """The emulators (latency ``profile``, the TTS voice at ``voice_speed``, on ``emulator_loop``)
    and one ``voxroute serve [serve_args]`` on 127.0.0.1; yields the server's base URL and pid.
    ``pinned``: see :func:`pin` (``load_first`` too). ``split_stt``: the server streams its STT to a
    second emulators process (``"sarvam_stt"`` in ``--emulators``), as the real STT and TTS are
    services of their own: one event loop then no longer makes the TTS's first audio and the
    models' first tokens wait behind every call's STT matching when many calls' turns end together."""
    env = dict(os.environ)
    # --dev below: emulators for the keys, unsigned calls, and the operator routes (/debug/stats) open
    for key in ("SARVAM_API_KEY", "OPENROUTER_API_KEY", "TWILIO_AUTH_TOKEN", "VOXROUTE_API_KEY"):
        env.pop(key, None)
    cli = [sys.executable, "-m", "voxroute.cli"]
    emu_args = [*cli, "emulators", "--profile", profile, "--voice-speed", str(voice_speed)]
    emu_args += ["--event-loop", emulator_loop, "--quiet"]
    emu = subprocess.Popen(emu_args, stdout=subprocess.PIPE, env=env, text=True)
    stt = subprocess.Popen(emu_args, stdout=subprocess.PIPE, env=env, text=True) if split_stt else None
    server = None
    try:
        line = emu.stdout.readline()  # type: ignore[union-attr]
        urls = json.loads(line)
        if stt is not None:
            urls["sarvam_stt"] = json.loads(stt.stdout.readline())["sarvam"]  # type: ignore[union-attr]
        port = free_port()
        server = subprocess.Popen(
            [
                *cli,
                "serve",
                "--dev",  # emulators in place of keys: development mode by design
                *serve_args,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--quiet",
                "--emulators",
                json.dumps(urls),
            ],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        if pinned:
            print(pin(server.pid, [p.pid for p in (emu, stt) if p is not None], load_first), flush=True)
        yield base, server.pid
    finally:
        for p in (server, emu, stt):
            if p is not None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
                if p.poll() is None:
                    p.kill()


async def webhook_params(http: httpx.AsyncClient, call_sid: str) -> dict:
    r = await http.post(
        "/twilio/voice", data={"CallSid": call_sid, "From": "+919800000000", "To": "+918000000000"}
    )
    r.raise_for_status()
    return {p.get("name"): p.get("value") for p in ET.fromstring(r.text).iter("Parameter")}


def step_result(n: int, results: list, before: dict, after: dict, wall_s: float) -> dict:
    """One load step's figures: the fake carrier's ``CarrierResult``s (or the exceptions that ended
    them) and the server's ``/debug/stats`` before and after (lag, jitter, CPU)."""
    ok = [r for r in results if not isinstance(r, BaseException)]
    completed = sum(1 for r in ok if r.completed and not r.errors)
    call_seconds = sum(r.duration_s or 0 for r in ok)
    cpu_ms = (after["cpu_s"] - before["cpu_s"]) * 1000
    return {
        "calls": n,
        "completed": completed,
        "failed": n - completed,
        "wall_s": round(wall_s, 1),
        "lag_p50_ms": after["inbound_lag_ms_p50"],
        "lag_p99_ms": after["inbound_lag_ms_p99"],
        "jitter_p50_ms": after["outbound_late_ms_p50"],
        "jitter_p99_ms": after["outbound_late_ms_p99"],
        "cpu_ms_per_call_second": round(cpu_ms / call_seconds, 2) if call_seconds else None,
        "generator_max_lag_ms": max((r.max_lag_ms or 0) for r in ok) if ok else None,
        # the collector over the step (/debug/stats is reset at its start): full collections, mean
        # CPU of a run, the longest pause of any generation (with --workers: runs and CPU summed over
        # the workers, the pause the worst worker's)
        "gc_full": after.get("gc2_count"),
        "gc_young_cpu_ms_mean": round(after["gc0_cpu_ms"] / after["gc0_count"], 3)
        if after.get("gc0_count")
        else None,
        "gc_full_cpu_ms_mean": round(after["gc2_cpu_ms"] / after["gc2_count"], 3)
        if after.get("gc2_count")
        else None,
        "gc_max_ms": max((after.get(f"gc{g}_max_ms") or 0) for g in range(3)),
        "gc_cpu_ms_per_call_second": round(
            sum(after.get(f"gc{g}_cpu_ms") or 0 for g in range(3)) / call_seconds, 3
        )
        if call_seconds
        else None,
        "errors": sorted(
            {str(e) for r in ok for e in r.errors}
            | {repr(r) for r in results if isinstance(r, BaseException)}
        )[:5],
    }


@contextlib.contextmanager
def stream_server_args(kind: str, event_loop: str = "uvloop", max_calls: int | None = None):
    """``kind`` "media": the server's streams on the websockets media server (``telephony.media_port``
    in a copy of the default config); "asgi": on the main port. ``event_loop``: the config's
    ``telephony.event_loop`` ("uvloop", the default config's, or "asyncio"). ``max_calls``: the
    call cap (``telephony.max_concurrent_calls``) raised to it when it is lower, so that a load step
    over the default cap measures the server, not its admission. Yields ``(serve_args, ws_base)``;
    ``ws_base`` None means the main port's."""
    if kind == "asgi" and event_loop == "uvloop" and max_calls is None:  # the default config as is
        yield (), None
        return
    import tempfile
    from pathlib import Path

    import yaml

    from voxroute.agent.config import DEFAULT_CONFIG_PATH

    data = yaml.safe_load(Path(os.environ.get("VOXROUTE_CONFIG", DEFAULT_CONFIG_PATH)).read_text())
    telephony = data.setdefault("telephony", {})
    telephony["event_loop"] = event_loop
    if max_calls is not None:
        from voxroute.agent.config import TelephonyConfig

        cap = telephony.get("max_concurrent_calls", TelephonyConfig().max_concurrent_calls)
        telephony["max_concurrent_calls"] = max(max_calls, cap)
    port = None
    if kind == "media":
        port = telephony["media_port"] = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        yield ("--config", str(path)), (f"ws://127.0.0.1:{port}" if port else None)
