"""Build the runtime from the config: provider clients (real or emulated), the router, the app.

Each provider kind is real when its API key is in the environment, and points at the local
emulators otherwise; the runtime logs which, once, at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException

from agent import metrics
from agent.config import Config
from agent.link import CarrierLink
from agent.providers.openai_compat import OpenAICompatLLM
from agent.providers.sarvam import SarvamSTT, SarvamTTS
from agent.services import Services
from agent.session import CallSession
from routing.classifier import StakesModel
from routing.router import Router
from telephony.app import TelephonySettings, create_app

log = logging.getLogger("voxroute.runtime")

EMULATED_KEY = "emulated"


@dataclass(frozen=True)
class EmulatorURLs:
    """Where the local emulators listen (see emulators/stack.py)."""

    llm: dict[str, str]  # LLM flavor -> base URL including the version prefix
    sarvam_ws: str  # ws://host:port
    sarvam_rest: str  # http://host:port


def _key(env_name: str) -> str | None:
    value = os.environ.get(env_name, "").strip()
    return value or None


@contextlib.asynccontextmanager
async def build_services(config: Config, emulators: EmulatorURLs | None) -> AsyncIterator[Services]:
    """Provider clients for one process. Without a key and without emulators, a provider cannot work:
    that is a clear error at start."""
    modes: list[str] = []
    llms: dict[str, OpenAICompatLLM] = {}
    stall_s = config.ladder.stall_timeout_ms / 1000
    for name, prov in config.providers.items():
        key = _key(prov.api_key_env)
        base_url = prov.base_url
        if key is None:
            if emulators is None or prov.flavor not in emulators.llm:
                raise RuntimeError(
                    f"providers.{name}: no API key in ${prov.api_key_env} and no emulator for it"
                )
            base_url, key = emulators.llm[prov.flavor], EMULATED_KEY
            modes.append(
                f"LLM {name}: emulated (simulated LLM at {base_url}; set ${prov.api_key_env} for real)"
            )
        else:
            modes.append(f"LLM {name}: {prov.flavor} at {base_url}")
        llms[name] = OpenAICompatLLM(
            name,
            prov.flavor,
            base_url,
            key,
            stall_timeout_s=stall_s,
            # The ladder times first tokens itself (hedges, first_token_timeout_ms); this is a backstop.
            first_token_timeout_s=config.ladder.first_token_timeout_ms / 1000 + 1.0,
        )

    s = config.sarvam
    sarvam_key = _key(s.api_key_env)
    ws_base, rest_base = s.ws_base_url, s.rest_base_url
    if sarvam_key is None:
        if emulators is None:
            raise RuntimeError(f"sarvam: no API key in ${s.api_key_env} and no emulator for it")
        ws_base, rest_base, sarvam_key = emulators.sarvam_ws, emulators.sarvam_rest, EMULATED_KEY
        modes.append(f"Sarvam STT/TTS: emulated at {rest_base} (set ${s.api_key_env} for real)")
    else:
        modes.append(f"Sarvam STT/TTS: {ws_base}")
    stt_kwargs = {"variant": s.stt_variant, "silence_duration_ms": s.stt_silence_ms}
    if s.stt_model:
        stt_kwargs["model"] = s.stt_model
    stt = SarvamSTT(sarvam_key, ws_base_url=ws_base, **stt_kwargs)
    tts = SarvamTTS(
        sarvam_key, ws_base_url=ws_base, rest_base_url=rest_base, model=s.tts_model, speakers=s.speakers
    )

    router = build_router(config)
    mode = "emulated" if any("emulated" in m for m in modes) else "live"
    for line in modes:
        log.info("%s", line)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(tts)
        for llm in llms.values():
            stack.push_async_callback(llm.aclose)
        yield Services(config, stt, tts, llms, router, mode=mode)


def build_router(config: Config) -> Router:
    """The routing table, the shipped (or configured) classifier, provider health."""
    model = StakesModel.load(config.routing.classifier)
    return Router(config.routing_table(), model, tts_first_audio_ms=config.budget.tts_first_audio_ms)


def emulator_options(config: Config) -> dict:
    """What the emulators learn from the config: which model ids are of the reasoning tier (they get
    its latency profile) and the models' prices (emulated OpenRouter reports cost with them)."""
    paths = list(config.models.values()) + [p for t in config.tenants.values() for p in t.models.values()]
    return {
        "reasoning_models": frozenset(p.model for p in paths if p.tier == "reasoning"),
        "prices": {p.model: (p.price_in_per_mtok, p.price_out_per_mtok) for p in paths},
    }


def create_runtime_app(services: Services) -> FastAPI:
    """The HTTP/websocket face of one runtime process: telephony routes plus the call API."""
    config = services.config
    settings = TelephonySettings(
        public_base_url=config.telephony.public_base_url,
        twilio_auth_token=_key(config.telephony.twilio_auth_token_env),
        default_tenant=config.telephony.default_tenant,
        max_message_bytes=config.telephony.max_message_bytes,
    )

    async def on_call(link: CarrierLink) -> None:
        await CallSession(link, services).run()

    app = create_app(settings, on_call, tenant_for_number=services.router.table.tenant_for_number)

    @app.get("/calls/{call_sid}")
    async def get_call(call_sid: str) -> dict:
        data = services.call_json(call_sid)
        if data is None:
            raise HTTPException(status_code=404, detail=f"no call {call_sid}")
        return data

    @app.get("/debug/stats")
    async def debug_stats() -> dict:
        return {"active_calls": len(services.calls), **metrics.snapshot()}

    @app.get("/debug/routing")
    async def debug_routing() -> dict:
        return services.router.health.snapshot()

    @app.post("/debug/stats/reset")
    async def debug_stats_reset() -> dict:
        metrics.reset()
        return {"ok": True}

    @app.get("/calls")
    async def list_calls() -> dict:
        return {"active": sorted(services.calls), "finished": list(services.finished)[-100:]}

    return app


def keys_missing(config: Config) -> bool:
    """True when some provider has no API key, so the emulators must stand in for it."""
    envs = [p.api_key_env for p in config.providers.values()] + [config.sarvam.api_key_env]
    return any(_key(e) is None for e in envs)
