"""Build the runtime from the config: provider clients (real or emulated), the router, the app.

Each provider kind is real when its API key is in the environment, and points at the local
emulators otherwise; the runtime logs which, once, at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException

from agent import metrics
from agent.config import Config
from agent.link import CarrierLink
from agent.providers.openai_compat import OpenAICompatLLM
from agent.providers.sarvam import SarvamSTT, SarvamTTS
from agent.services import Services
from agent.session import CallSession
from agent.webhook import WebhookSender
from routing.classifier import StakesModel
from routing.router import Router
from telephony.app import DIAL_ACTION_PATH, WHISPER_PATH, TelephonySettings, create_app
from telephony.call_control import TwilioCallControl, transfer_twiml
from telephony.twiml import public_url

log = logging.getLogger("voxroute.runtime")

EMULATED_KEY = "emulated"


@dataclass(frozen=True)
class EmulatorURLs:
    """Where the local emulators listen (see emulators/stack.py)."""

    llm: dict[str, str]  # LLM flavor -> base URL including the version prefix
    sarvam_ws: str  # ws://host:port
    sarvam_rest: str  # http://host:port
    twilio_api: str | None = None  # the Twilio REST stand-in, http://host:port


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
    call_control = _call_control(config, emulators, modes)
    h = config.handoff
    secret = _key(h.webhook_secret_env)
    if h.webhook_url and not secret:
        # WebhookSender refuses an empty secret: say which setting is missing, at start.
        raise RuntimeError(f"handoff.webhook_url is set but ${h.webhook_secret_env} holds no signing secret")
    webhooks = WebhookSender(secret) if h.webhook_url and secret else None
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(tts)
        for llm in llms.values():
            stack.push_async_callback(llm.aclose)
        if call_control is not None:
            stack.push_async_callback(call_control.aclose)
        services = Services(config, stt, tts, llms, router, mode=mode)
        services.call_control, services.webhooks = call_control, webhooks
        if webhooks is None:
            yield services
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(webhooks.run(), name="handoff-webhooks")
            try:
                yield services
            finally:
                await webhooks.aclose()


class _HandoffHooks:
    """The telephony edge asks about transfers in progress: the whisper, how the human leg ended."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def whisper_for(self, call_sid: str) -> str | None:
        return (self.services.handoffs.get(call_sid) or {}).get("whisper")

    def on_dial_result(self, call_sid: str, result) -> None:
        record = self.services.handoffs.get(call_sid)
        if record is not None:
            record["human_leg"] = {
                "status": result.dial_status,
                "connected": result.connected,
                "duration_s": result.duration_s,
            }


class TwilioTransfers:
    """What a call session needs to hand a call to a person over Twilio, without knowing Twilio:
    ``transfer`` builds the ``<Dial>`` (whisper and action URLs on the public base) and updates the
    live call; ``hang_up`` ends it."""

    def __init__(self, control: TwilioCallControl, config: Config) -> None:
        self.control = control
        self.config = config

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        base = self.config.telephony.public_base_url
        twiml = transfer_twiml(
            to,
            caller_id=caller_id,
            timeout_s=self.config.handoff.dial_timeout_s,
            whisper_url=public_url(base, f"{WHISPER_PATH}/{call_sid}"),
            action_url=public_url(base, f"{DIAL_ACTION_PATH}/{call_sid}"),
            say=say,
        )
        return await self.control.transfer(call_sid, twiml)

    async def hang_up(self, call_sid: str) -> bool:
        return await self.control.hang_up(call_sid)

    async def aclose(self) -> None:
        await self.control.aclose()


def _call_control(config: Config, emulators: EmulatorURLs | None, modes: list[str]) -> TwilioTransfers | None:
    """Twilio's REST API for transfers and hang-ups: real with an account SID and auth token in the
    environment, else the local stand-in when the emulators run, else none (no transfers)."""
    sid = _key(config.handoff.twilio_account_sid_env)
    token = _key(config.telephony.twilio_auth_token_env)
    if sid and token:
        modes.append("Twilio call control: api.twilio.com")
        return TwilioTransfers(TwilioCallControl(sid, token), config)
    if emulators is not None and emulators.twilio_api:
        from emulators.stack import EMULATED_ACCOUNT_SID, EMULATED_AUTH_TOKEN

        modes.append(f"Twilio call control: emulated at {emulators.twilio_api}")
        control = TwilioCallControl(
            EMULATED_ACCOUNT_SID, EMULATED_AUTH_TOKEN, api_base_url=emulators.twilio_api
        )
        return TwilioTransfers(control, config)
    modes.append(
        f"Twilio call control: none (set ${config.handoff.twilio_account_sid_env} and "
        f"${config.telephony.twilio_auth_token_env} to transfer calls to a person)"
    )
    return None


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

    app = create_app(
        settings,
        on_call,
        tenant_for_number=services.router.table.tenant_for_number,
        handoff=_HandoffHooks(services),
    )
    api_key = _key(config.handoff.operator_api_key_env)
    if api_key is None:
        log.warning(
            "no operator API key in $%s: the handoff API is open to anyone who can reach this server",
            config.handoff.operator_api_key_env,
        )

    def operator(authorization: str | None, x_api_key: str | None) -> None:
        if api_key is None:
            return
        given = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            log.warning("operator API: rejected a request without a valid API key")
            raise HTTPException(status_code=401, detail="a valid API key is required")

    @app.get("/calls/{call_sid}/handoff")
    async def get_handoff(
        call_sid: str,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> dict:
        operator(authorization, x_api_key)
        record = services.handoffs.get(call_sid)
        if record is None:
            raise HTTPException(status_code=404, detail=f"no handoff for call {call_sid}")
        return record

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
