"""Replay fixture calls through the real stack: fake carrier -> runtime server -> emulators.

With no server URL, ``local_stack`` starts the emulators and a runtime server in this process,
on 127.0.0.1. Each fixture is dialled the way Twilio does it: the voice webhook first (its TwiML
gives the stream parameters), then the media stream.

A fixture marked ``stt: transcripts`` (a recorded call) is replayed with its reviewed words: once
the carrier has given the call its id, and before the media stream opens, the replayer registers
the call's utterances (text, language, timing) with the STT emulator under that call SID, and
forgets them when the call is over. The emulator is the local stack's (found by the server's URL)
or ``stt_emulator``; with neither (``--server`` with real providers) the STT hears the audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import ssl
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from voxroute.agent.calllog.report import percentile
from voxroute.agent.config import Config, load_config
from voxroute.agent.fixture import Fixture, load
from voxroute.runtime import EmulatorURLs, build_services, create_runtime_app, emulator_options
from voxroute.server import serve_app
from voxroute.telephony.carriers import CARRIERS

if TYPE_CHECKING:  # the emulators are dev/test code: imported where a replay starts them
    from voxroute.emulators.carriers import FakeCarrierSecrets

log = logging.getLogger(__name__)


# The STT emulator's control URL behind each running local stack's server (a replay only knows the
# server's URL); entries live as long as their stack, and each server has a port of its own.
_STT_CONTROL: dict[str, str] = {}


@dataclass
class LocalStack:
    server_url: str
    config: Config
    emulators: Any  # emulators.stack.EmulatorStack
    services: Any  # agent.services.Services
    tool_apps: dict[str, Any] = dataclasses.field(default_factory=dict)  # tool stand-ins, by tenant.tool


@contextlib.asynccontextmanager
async def local_stack(
    profile: str = "reference",
    seed: int = 0,
    fixtures: list[Fixture] | None = None,
    config: Config | None = None,
    **kwargs: Any,
) -> AsyncIterator[LocalStack]:
    """As :func:`_local_stack`, with the stand-ins of the config's HTTP tools (``stand_in``) served
    on 127.0.0.1 and the tools pointed at them (``LocalStack.tool_apps``: the apps, by tenant.tool)."""
    from voxroute.standins import stand_ins

    async with stand_ins(config or load_config()) as (config, tool_apps):
        async with _local_stack(profile, seed, fixtures, config, **kwargs) as running:
            running.tool_apps = tool_apps
            yield running


@contextlib.asynccontextmanager
async def _local_stack(
    profile: str = "reference",
    seed: int = 0,
    fixtures: list[Fixture] | None = None,
    config: Config | None = None,
    env_keys: bool = False,
    stack: str = "emulated",
    sip: bool = False,
    voice_speed: float = 1.0,
) -> AsyncIterator[LocalStack]:
    """Emulators plus one runtime server, all on 127.0.0.1. Real keys in the environment are
    ignored unless ``env_keys`` (a replay measures the stack against the emulators).
    ``stack="local"``: the embedded speech engines instead of the emulated Sarvam (see runtime).
    ``sip``: the runtime's SIP user agent too, for ``--carrier sip`` (``voxroute.emulators.sip_carrier``).
    ``voice_speed``: how fast the emulated TTS voice speaks (``emulators.stack.run_emulators``)."""
    import gc

    from voxroute.emulators.sip_carrier import sip_for_replay
    from voxroute.emulators.stack import run_emulators

    config = config or load_config()
    options = emulator_options(config)
    async with run_emulators(profile, seed, fixtures, voice_speed=voice_speed, **options) as emu:
        with _without_keys(config, enabled=not env_keys):
            async with build_services(config, emu.urls, stack=stack) as services:
                # Development by design: emulators stand in for keys, and the fake carriers dial
                # every carrier's routes, signed only when a secret is in the environment.
                app = create_runtime_app(services, dev=True, carriers=CARRIERS)
                async with contextlib.AsyncExitStack() as running:
                    url = await running.enter_async_context(serve_app(app))
                    if sip:
                        await running.enter_async_context(sip_for_replay(services, url))
                    if emu.carrier_rest is not None:
                        emu.carrier_rest.local_base = url  # Plivo's transfer fetch comes here
                    # As `voxroute serve` does: what exists at start is never garbage, so the
                    # collector's full passes during the calls do not walk it (they stall the loop).
                    gc.collect()
                    gc.freeze()
                    _STT_CONTROL[url] = f"{emu.sarvam_url}/_emulator/stt"
                    try:
                        yield LocalStack(url, config, emu, services)
                    finally:
                        _STT_CONTROL.pop(url, None)
                        gc.unfreeze()  # a test process runs many stacks: let their objects go


@contextlib.contextmanager
def _without_keys(config: Config, enabled: bool):
    import os

    names = {p.api_key_env for p in config.providers.values()} | {config.sarvam.api_key_env}
    saved = {n: os.environ.pop(n) for n in names if enabled and n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def operator_headers(config: Config | None = None) -> dict[str, str]:
    """The operator API key from the environment: ``GET /calls/{sid}`` needs it when the server has one."""
    import os

    env = (config or load_config()).handoff.operator_api_key_env
    key = os.environ.get(env, "").strip()
    return {"X-API-Key": key} if key else {}


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every replayed call. httpx builds a new one per client, and loading the
    CA store takes 0.1-0.5 s of CPU on the event loop, under the calls already running: on a
    loaded machine the SIP calls' RTP stalled that long at every dial (the agent's reply had a
    hole a caller took for its end; the caller's words had a gap the endpointer took for a pause)."""
    return httpx.create_ssl_context()


async def replay_fixture(
    fixture: Fixture,
    server_url: str,
    *,
    speed: float = 1.0,
    record_dir: Path | None = None,
    config: Config | None = None,
    auth_token: str | None = None,
    carrier: str = "twilio",
    carrier_secrets: FakeCarrierSecrets | None = None,
    stt_emulator: str | None = None,
) -> dict[str, Any]:
    """One call: the carrier's call set-up (Twilio: the voice webhook), its media stream, then the
    runtime's own turn records. ``carrier``: one of ``voxroute.emulators.carriers.CARRIERS``.
    ``stt_emulator``: the STT emulator's control URL (``.../_emulator/stt``) for a fixture marked
    ``stt: transcripts``, when the server is not a local stack's."""
    from voxroute.emulators.carriers import FakeCarrierSecrets, dial_fixture

    config = config or load_config()
    fake_secrets = carrier_secrets or FakeCarrierSecrets()
    if auth_token:
        fake_secrets = dataclasses.replace(fake_secrets, twilio_auth_token=auth_token)
    words = _ReviewedWords.of(fixture, stt_emulator or _STT_CONTROL.get(server_url))
    async with httpx.AsyncClient(base_url=server_url, timeout=10, verify=_tls_context()) as http:
        record_path = record_dir / f"{fixture.name}.agent.wav" if record_dir else None
        if record_dir:
            await asyncio.to_thread(record_dir.mkdir, parents=True, exist_ok=True)
        try:
            result = await dial_fixture(
                carrier,
                fixture,
                server_url,
                http=http,
                public_base_url=config.telephony.public_base_url,
                speed=speed,
                record_path=record_path,
                secrets=fake_secrets,
                before_stream=functools.partial(words.register, http) if words else None,
            )
        finally:
            stt_words = await words.forget(http) if words else None
        call: dict[str, Any] = {}
        for _ in range(100):
            r = await http.get(f"/calls/{result.call_sid}", headers=operator_headers(config))
            if r.status_code == 200:
                call = r.json()
                if call.get("ended") != "in_progress":
                    break
            await asyncio.sleep(0.05)
    errors = list(result.errors)
    if words and words.call_sid is None:
        errors.append(
            f"stt: transcripts: the {carrier} dialler gave no call id before the stream, so the STT "
            "emulator matched the audio instead of saying the fixture's words"
        )
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
    if stt_words is not None:
        out["stt_transcripts"] = stt_words  # utterances registered, said in full, finals sent
    if ended == "error":
        out["error"] = (
            "; ".join(errors) or f"carrier did not complete the call (runtime ended={call.get('ended')})"
        )
    if record_path:
        out["recording"] = str(record_path)
    return out


@dataclass
class _ReviewedWords:
    """A ``stt: transcripts`` fixture's utterances, registered with the STT emulator for one call."""

    control_url: str
    plan: list[dict[str, Any]]
    call_sid: str | None = None

    @classmethod
    def of(cls, fixture: Fixture, control_url: str | None) -> _ReviewedWords | None:
        if fixture.script.stt != "transcripts":
            return None
        if control_url is None:
            log.info(
                "%s: stt: transcripts, but no STT emulator is known: the STT hears the audio", fixture.name
            )
            return None
        from voxroute.emulators.transcripts import timed_plan

        return cls(control_url.rstrip("/"), [u.as_json() for u in timed_plan(fixture)])

    async def register(self, http: httpx.AsyncClient, call_sid: str) -> None:
        r = await http.post(
            f"{self.control_url}/transcripts", json={"call_sid": call_sid, "utterances": self.plan}
        )
        r.raise_for_status()
        self.call_sid = call_sid

    async def forget(self, http: httpx.AsyncClient) -> dict[str, Any] | None:
        """Unregister the call; what the emulator said of it (None if it was never registered)."""
        if self.call_sid is None:
            return None
        try:
            r = await http.delete(f"{self.control_url}/transcripts/{quote(self.call_sid, safe='')}")
        except httpx.HTTPError as exc:
            log.warning("call %s: could not unregister its transcripts: %r", self.call_sid, exc)
            return None
        return r.json() if r.status_code == 200 else None


def _turn_json(t: dict[str, Any]) -> dict[str, Any]:
    keys = ("index", "kind", "transcript", "language", "route", "timeline", "first_audio_ms", "budget_ms")
    keys += ("llm",)  # "simulated LLM" when an emulator answered the turn
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
        "first_audio_ms_p95": round(percentile(fa, 95), 1) if fa else None,
    }


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
    stack: str = "emulated",
    carrier: str = "twilio",
    stt_emulator: str | None = None,
) -> dict[str, Any]:
    """Replay ``names`` through ``server`` (or a local stack started here). ``stt_emulator``: with
    ``server``, the base URL of the Sarvam emulator that server uses (``serve --dev --emulators``),
    so that fixtures marked ``stt: transcripts`` are said with their reviewed words."""
    from voxroute.emulators.carriers import check_dialable

    check_dialable(carrier)  # a clear error before anything starts
    fixtures = [load(n) for n in names]
    config = config or load_config()
    speed = 4.0 if fast else 1.0
    calls: list[dict[str, Any]] = []

    async def run_all(url: str) -> None:
        for fixture in fixtures:
            call = await replay_fixture(
                fixture,
                url,
                speed=speed,
                record_dir=record_dir,
                config=config,
                carrier=carrier,
                stt_emulator=f"{stt_emulator.rstrip('/')}/_emulator/stt" if stt_emulator and server else None,
            )
            calls.append(call)
            if on_call_done is not None:
                on_call_done(call)

    if server:
        await run_all(server.rstrip("/"))
    else:
        async with local_stack(profile, seed, fixtures, config, stack=stack, sip=carrier == "sip") as running:
            await run_all(running.server_url)
    return {"profile": profile, "seed": seed, "calls": calls, "summary": summarise(calls)}


__all__ = [
    "EmulatorURLs",
    "LocalStack",
    "local_stack",
    "operator_headers",
    "replay",
    "replay_fixture",
    "summarise",
]


def fixture_from_wav(path: Path, *, pause_ms: int = 700, language: str = "en-IN") -> Fixture:
    """Any WAV (PCM 8/16/24/32-bit, float, mu-law; any rate; mono or not) as a fixture call: converted
    to 8 kHz mu-law and cut into utterances at pauses of ``pause_ms`` (webrtcvad), each played after
    the agent's answer. For ``voxroute dial``: the words are whatever the caller said (no script)."""
    import numpy as np
    import webrtcvad

    from voxroute.agent.fixture import FixtureError, FixtureScript, read_wav
    from voxroute.agent.providers.local import resample_any
    from voxroute.audio import FRAME_BYTES, pcm16_to_ulaw, ulaw_to_pcm16

    tag, rate, channels, data = read_wav(path)
    if tag == 7:
        samples = np.frombuffer(ulaw_to_pcm16(data), "<i2").astype(np.float64)
    elif tag == 3:
        samples = np.frombuffer(data[: len(data) // 4 * 4], "<f4").astype(np.float64) * 32767
    elif tag == 1:
        width = _pcm_width(path)
        dtype = {1: "u1", 2: "<i2", 4: "<i4"}.get(width)
        if width == 3:
            raw = np.frombuffer(data[: len(data) // 3 * 3], "u1").reshape(-1, 3).astype(np.int32)
            samples = ((raw[:, 0] << 8 | raw[:, 1] << 16 | raw[:, 2] << 24) >> 16).astype(np.float64)
        elif dtype is None:
            raise FixtureError(f"{path}: unsupported sample width {width} bytes")
        else:
            x = np.frombuffer(data[: len(data) // width * width], dtype).astype(np.float64)
            samples = (x - 128) * 256 if width == 1 else x / (65536 if width == 4 else 1)
    else:
        raise FixtureError(f"{path}: unsupported WAV format {tag} (use PCM, float or mu-law)")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    pcm = np.clip(samples, -32768, 32767).astype("<i2").tobytes()
    pcm = resample_any(pcm, rate, 8000)
    pcm += b"\x00" * (-len(pcm) % FRAME_BYTES)
    vad = webrtcvad.Vad(2)
    voiced = [vad.is_speech(pcm[i : i + FRAME_BYTES], 8000) for i in range(0, len(pcm), FRAME_BYTES)]
    spans: list[list[int]] = []  # [first, last] voiced frame of each utterance
    for i, v in enumerate(voiced):
        if not v:
            continue
        if spans and (i - spans[-1][1]) * 20 < pause_ms:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    spans = [s for s in spans if (s[1] - s[0] + 1) * 20 >= 200]
    if not spans:
        raise FixtureError(f"{path}: no speech found")
    n = len(voiced)
    utterances = [
        {
            "start_ms": max(0, a - 5) * 20,
            "end_ms": min(n, b + 6) * 20,
            "text": "(your recording)",
            "play": "after_agent",
            "gap_ms": 600,
        }
        for a, b in spans
    ]
    script = FixtureScript.model_validate(
        {"version": 1, "call": path.stem, "audio": path.name, "language": language, "utterances": utterances}
    )
    return Fixture(script, pcm16_to_ulaw(pcm), path.with_suffix(".dial.json"))


def _pcm_width(path: Path) -> int:
    import wave

    with wave.open(str(path), "rb") as w:
        return w.getsampwidth()
