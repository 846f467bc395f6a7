"""Replay fixture calls through the real stack: fake carrier -> runtime server -> emulators.

With no server URL, ``local_stack`` starts the emulators and a runtime server in this process,
on 127.0.0.1. Each fixture is dialled the way Twilio does it: the voice webhook first (its TwiML
gives the stream parameters), then the media stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.config import Config, load_config
from agent.fixture import Fixture, load
from agent.runtime import EmulatorURLs, build_services, create_runtime_app, emulator_options
from emulators.carrier import dial, make_ids
from emulators.serve import serve_app, ws_url
from telephony.twiml import public_ws_url


@dataclass
class LocalStack:
    server_url: str
    config: Config
    emulators: Any  # emulators.stack.EmulatorStack
    services: Any  # agent.services.Services


@contextlib.asynccontextmanager
async def local_stack(
    profile: str = "reference",
    seed: int = 0,
    fixtures: list[Fixture] | None = None,
    config: Config | None = None,
    env_keys: bool = False,
) -> AsyncIterator[LocalStack]:
    """Emulators plus one runtime server, all on 127.0.0.1. Real keys in the environment are
    ignored unless ``env_keys`` (a replay measures the stack against the emulators)."""
    from emulators.stack import run_emulators

    config = config or load_config()
    async with run_emulators(profile, seed, fixtures, **emulator_options(config)) as emu:
        with _without_keys(config, enabled=not env_keys):
            async with build_services(config, emu.urls) as services:
                app = create_runtime_app(services)
                async with serve_app(app) as url:
                    yield LocalStack(url, config, emu, services)


@contextlib.contextmanager
def _without_keys(config: Config, enabled: bool):
    import os

    names = {p.api_key_env for p in config.providers.values()} | {config.sarvam.api_key_env}
    saved = {n: os.environ.pop(n) for n in names if enabled and n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _stream_parameters(twiml: str) -> dict[str, str]:
    root = ET.fromstring(twiml)
    return {p.get("name", ""): p.get("value", "") for p in root.iter("Parameter")}


async def replay_fixture(
    fixture: Fixture,
    server_url: str,
    *,
    speed: float = 1.0,
    record_dir: Path | None = None,
    config: Config | None = None,
    auth_token: str | None = None,
) -> dict[str, Any]:
    """One call: webhook, media stream, then the runtime's own turn records."""
    config = config or load_config()
    ids = make_ids()
    form = {
        "CallSid": ids.call_sid,
        "AccountSid": ids.account_sid,
        "From": fixture.script.from_,
        "To": "+918000000000",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    headers = {}
    public_base = config.telephony.public_base_url
    if auth_token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            public_base.rstrip("/") + "/twilio/voice", form
        )
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as http:
        resp = await http.post("/twilio/voice", data=form, headers=headers)
        resp.raise_for_status()
        params = _stream_parameters(resp.text)
        params.setdefault("language", fixture.script.language)
        params["tenant"] = fixture.script.tenant
        record_path = record_dir / f"{fixture.name}.agent.wav" if record_dir else None
        if record_dir:
            await asyncio.to_thread(record_dir.mkdir, parents=True, exist_ok=True)
        result = await dial(
            fixture,
            ws_url(server_url) + "/twilio/stream",
            auth_token=auth_token,
            public_url=public_ws_url(public_base, "/twilio/stream"),
            speed=speed,
            record_path=record_path,
            custom_parameters=params,
            call_sid=ids.call_sid,
        )
        call: dict[str, Any] = {}
        for _ in range(100):
            r = await http.get(f"/calls/{result.call_sid}")
            if r.status_code == 200:
                call = r.json()
                if call.get("ended") != "in_progress":
                    break
            await asyncio.sleep(0.05)
    errors = list(result.errors)
    if call.get("error"):
        errors.append(f"runtime: {call['error']}")
    if not call:
        errors.append("runtime has no record of the call")
    ended = "completed" if result.completed and not errors and call.get("ended") == "completed" else "error"
    if call.get("ended") == "handoff":
        ended = "handoff"
    out: dict[str, Any] = {
        "fixture": fixture.name,
        "call_sid": result.call_sid,
        "ended": ended,
        "mode": call.get("mode"),
        "outcome": call.get("outcome", "unknown"),
        "policy": call.get("policy"),
        "turns": [_turn_json(t) for t in call.get("turns", [])],
        "merged_turns": call.get("merged_turns", []),
        "faults": call.get("faults", []),
        "carrier": result.as_dict(),
    }
    if call.get("handoff"):
        out["handoff"] = call["handoff"]
    if ended == "error":
        out["error"] = (
            "; ".join(errors) or f"carrier did not complete the call (runtime ended={call.get('ended')})"
        )
    if record_path:
        out["recording"] = str(record_path)
    return out


def _turn_json(t: dict[str, Any]) -> dict[str, Any]:
    keys = ("index", "kind", "transcript", "language", "route", "timeline", "first_audio_ms", "budget_ms")
    out = {k: t.get(k) for k in keys}
    out.update(
        within_budget=t.get("within_budget"),
        bridge=t.get("bridge"),
        bridge_kind=t.get("bridge_kind"),
        handoff=t.get("handoff"),
        fallbacks=t.get("fallbacks", []),
        reply=t.get("reply"),
        heard=t.get("heard"),
        interrupted=t.get("interrupted"),
        outcome=t.get("outcome"),
        usage=t.get("usage"),
        chunks=t.get("chunks", []),
        tools=t.get("tools", []),
        overlaps=t.get("overlaps", []),
    )
    return out


def summarise(calls: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [t for c in calls for t in c["turns"]]
    fa = sorted(t["first_audio_ms"] for t in turns if t["first_audio_ms"] is not None)
    return {
        "calls": len(calls),
        "completed": sum(c["ended"] == "completed" for c in calls),
        "turns": len(turns),
        "within_budget": sum(bool(t["within_budget"]) for t in turns),
        "bridges": sum(bool(t["bridge"]) for t in turns),
        "fallbacks": sum(len(t["fallbacks"]) for t in turns),
        "first_audio_ms_p50": round(statistics.median(fa), 1) if fa else None,
        "first_audio_ms_p95": round(_percentile(fa, 95), 1) if fa else None,
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


async def replay(
    names: list[str],
    *,
    server: str | None = None,
    profile: str = "reference",
    seed: int = 0,
    fast: bool = False,
    record_dir: Path | None = None,
    config: Config | None = None,
    on_call_done=None,
) -> dict[str, Any]:
    fixtures = [load(n) for n in names]
    config = config or load_config()
    speed = 4.0 if fast else 1.0
    calls: list[dict[str, Any]] = []

    async def run_all(url: str) -> None:
        for fixture in fixtures:
            call = await replay_fixture(fixture, url, speed=speed, record_dir=record_dir, config=config)
            calls.append(call)
            if on_call_done is not None:
                on_call_done(call)

    if server:
        await run_all(server.rstrip("/"))
    else:
        async with local_stack(profile, seed, fixtures, config) as stack:
            await run_all(stack.server_url)
    return {"profile": profile, "seed": seed, "calls": calls, "summary": summarise(calls)}


__all__ = ["EmulatorURLs", "LocalStack", "local_stack", "replay", "replay_fixture", "summarise"]
