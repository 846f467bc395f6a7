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
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from agent import metrics, pages, prom
from agent.calllog.source import CombinedCallSource, DatabaseCallSource
from agent.calllog.store import CallLog
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
from telephony.carrier_control import (
    CarrierTransfers,
    ExotelHandback,
    PlivoCallControl,
    TelnyxCallControl,
)
from telephony.twiml import public_url

log = logging.getLogger("voxroute.runtime")

EMULATED_KEY = "emulated"
LOCAL_STT_FINAL_WAIT_MS = 1500
STACKS = ("emulated", "local")  # what stands in for a provider without a key: emulators, or local engines


@dataclass(frozen=True)
class EmulatorURLs:
    """Where the local emulators listen (see emulators/stack.py)."""

    llm: dict[str, str]  # LLM flavor -> base URL including the version prefix
    sarvam_ws: str  # ws://host:port
    sarvam_rest: str  # http://host:port
    twilio_api: str | None = None  # the Twilio REST stand-in, http://host:port
    carrier_api: str | None = None  # the Plivo and Telnyx call-control stand-in, http://host:port


def _key(env_name: str) -> str | None:
    value = os.environ.get(env_name, "").strip()
    return value or None


@contextlib.asynccontextmanager
async def build_services(
    config: Config, emulators: EmulatorURLs | None, stack: str = "emulated"
) -> AsyncIterator[Services]:
    """Provider clients for one process. Without a key and without emulators, a provider cannot work:
    that is a clear error at start. ``stack="local"``: the embedded offline engines stand in for a
    speech provider without a key (agent/providers/local.py) and the emulated LLMs answer with the
    scripted responder, driven by each turn's routing class."""
    if stack not in STACKS:
        raise RuntimeError(f"unknown stack {stack!r}; choose one of {STACKS}")
    if stack == "local" and "stt_final_wait_ms" not in config.endpoint.model_fields_set:
        # Whisper finalises ~0.5 s after the utterance (not 250 ms as Sarvam): wait for it, else the
        # turn would be "not heard" and the late final a second turn.
        endpoint = config.endpoint.model_copy(update={"stt_final_wait_ms": LOCAL_STT_FINAL_WAIT_MS})
        config = config.model_copy(update={"endpoint": endpoint})
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
    services_ref: list[Services] = []  # the scripted LLM looks up each turn's routing class here
    offline = stack == "local"
    if offline:
        stt, tts, llms = _local_engines(
            config, stt, tts, llms, sarvam_key == EMULATED_KEY, services_ref, modes
        )

    router = build_router(config)
    mode = "emulated" if any("emulated" in m for m in modes) else "live"
    for line in modes:
        log.info("%s", line)
    call_control = _call_control(config, emulators, modes, services_ref)
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
        stack.push_async_callback(call_control.aclose)
        if offline and hasattr(stt, "aclose"):
            stack.push_async_callback(stt.aclose)  # the Whisper worker pool
        services = Services(
            config, stt, tts, llms, router, mode="local" if offline and mode == "emulated" else mode
        )
        services_ref.append(services)
        services.call_control, services.webhooks = call_control, webhooks
        # The call log: its writer task buffers while the database is away and drains at exit.
        call_log = CallLog.from_environment(config.call_log) if config.call_log.enabled else None
        if call_log is not None:
            services.observers.append(call_log)
        async with asyncio.TaskGroup() as tg:
            if webhooks is not None:
                tg.create_task(webhooks.run(), name="handoff-webhooks")
            if call_log is not None:
                tg.create_task(call_log.run(), name="call-log")
            try:
                yield services
            finally:
                try:
                    if webhooks is not None:
                        await webhooks.aclose()
                finally:
                    if call_log is not None:
                        await call_log.aclose()


def _local_engines(
    config: Config, stt, tts, llms: dict, sarvam_emulated: bool, services_ref: list, modes: list[str]
):
    """The offline stack: Whisper/Piper for the languages they know when Sarvam has no key (Sarvam,
    emulated, keeps the rest, and says so); emulated LLMs answer by routing class."""
    from agent.providers.local import (
        ByLanguageSTT,
        ByLanguageTTS,
        ClassTaggedLLM,
        LocalPiperTTS,
        LocalWhisperSTT,
        class_lookup,
    )

    if sarvam_emulated:
        stt = ByLanguageSTT(LocalWhisperSTT(), stt)
        tts = ByLanguageTTS(LocalPiperTTS(), tts)
        modes.append(
            "STT: embedded faster-whisper tiny.en for English; other languages have no offline model: "
            f"emulated Sarvam (set ${config.sarvam.api_key_env} for real)"
        )
        espeak = "espeak-ng for Hindi" if tts.local.espeak else "no espeak-ng: Hindi on emulated Sarvam"
        modes.append(f"TTS: embedded Piper (en_US joe) for English, {espeak}")
    class_of = class_lookup(services_ref)
    for name, llm in list(llms.items()):
        if _key(config.providers[name].api_key_env) is None:  # emulated: a scripted reply per routing class
            llms[name] = ClassTaggedLLM(llm, class_of)
            modes.append(f"LLM {name}: simulated LLM, scripted replies by routing class")
    return stt, tts, llms


def simulated_llms(services: Services) -> set[str]:
    """Names of the LLM providers answered by an emulator (their turns say "simulated LLM")."""
    from agent.providers.local import ClassTaggedLLM

    if services.mode == "emulated":
        return set(services.llms)
    return {n for n, llm in services.llms.items() if isinstance(llm, ClassTaggedLLM)}


class _HandoffHooks:
    """The telephony edge asks about transfers in progress: the whisper, how the human leg ended."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def whisper_for(self, call_sid: str) -> str | None:
        return (self.services.handoffs.get(call_sid) or {}).get("whisper")

    def plivo_transfer_xml(self, call_uuid: str) -> str | None:
        control = self.services.call_control
        while control is not None and not isinstance(control, CarrierTransfers):
            control = getattr(control, "fallback", None)  # SipTransfers wraps the carriers' control
        plivo = control.controls.get("plivo") if control is not None else None
        return plivo.pending(call_uuid) if isinstance(plivo, PlivoCallControl) else None

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


PLIVO_AUTH_ID_ENV, PLIVO_AUTH_TOKEN_ENV = "PLIVO_AUTH_ID", "PLIVO_AUTH_TOKEN"
TELNYX_API_KEY_ENV = "TELNYX_API_KEY"


def _call_control(
    config: Config, emulators: EmulatorURLs | None, modes: list[str], services_ref: list[Services]
) -> CarrierTransfers:
    """Each carrier's own call control for transfers and hang-ups: real with its keys in the
    environment, else its local stand-in when the emulators run, else none for that carrier.
    Exotel needs none (closing the stream hands the call to the flow's next applet)."""
    controls: dict[str, Any] = {"exotel": ExotelHandback()}
    twilio = _twilio_control(config, emulators, modes)
    if twilio is not None:
        controls["twilio"] = twilio
    base = config.telephony.public_base_url
    timeout = config.handoff.dial_timeout_s
    plivo_id, plivo_token = _key(PLIVO_AUTH_ID_ENV), _key(PLIVO_AUTH_TOKEN_ENV)
    if plivo_id and plivo_token:
        modes.append("Plivo call control: api.plivo.com")
        controls["plivo"] = PlivoCallControl(plivo_id, plivo_token, base, dial_timeout_s=timeout)
    elif emulators is not None and emulators.carrier_api:
        from emulators.carrier_rest import EMULATED_PLIVO_AUTH_ID, emulated_plivo_token

        modes.append(f"Plivo call control: emulated at {emulators.carrier_api}")
        controls["plivo"] = PlivoCallControl(
            EMULATED_PLIVO_AUTH_ID, emulated_plivo_token(), base, api_base_url=emulators.carrier_api,
            dial_timeout_s=timeout,
        )  # fmt: skip
    telnyx_key = _key(TELNYX_API_KEY_ENV)
    if telnyx_key:
        modes.append("Telnyx call control: api.telnyx.com")
        controls["telnyx"] = TelnyxCallControl(telnyx_key)
    elif emulators is not None and emulators.carrier_api:
        from emulators.carrier_rest import EMULATED_TELNYX_API_KEY

        modes.append(f"Telnyx call control: emulated at {emulators.carrier_api}")
        controls["telnyx"] = TelnyxCallControl(EMULATED_TELNYX_API_KEY, api_base_url=emulators.carrier_api)
    missing = [c for c in ("twilio", "plivo", "telnyx") if c not in controls]
    if missing:
        modes.append(f"no call control for {', '.join(missing)} calls: they are not transferred to a person")

    def carrier_of(call_sid: str) -> str | None:
        session = services_ref[0].calls.get(call_sid) if services_ref else None
        return session.link.start.carrier if session is not None else None

    return CarrierTransfers(controls, carrier_of)


def _twilio_control(
    config: Config, emulators: EmulatorURLs | None, modes: list[str]
) -> TwilioTransfers | None:
    """Twilio's REST API: real with an account SID and auth token in the environment, else the
    local stand-in when the emulators run, else none."""
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


class OutcomeUpdate(BaseModel):
    """``POST /calls/{id}/outcome``: how the conversation ended for the business."""

    model_config = ConfigDict(extra="forbid")
    outcome: Literal["resolved", "unresolved", "handoff", "unknown"]
    reason: str | None = Field(default=None, max_length=500)


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

    # GET /calls and /calls/{call_sid}: JSON for API clients, HTML pages for browsers (agent/pages.py)
    source: pages.CallSource = pages.MemoryCallSource(services, simulated=lambda: simulated_llms(services))
    call_log = next((o for o in services.observers if isinstance(o, CallLog)), None)
    if call_log is not None:  # past calls too, after a restart (agent/calllog/source.py)
        source = CombinedCallSource(source, DatabaseCallSource(call_log.engine))
    pages.add_call_routes(app, source, pages.OperatorAuth(api_key))
    metrics_observer = prom.PromMetrics.for_services(services)
    services.observers.append(metrics_observer)
    prom.add_metrics_route(app, metrics_observer)

    @app.post("/calls/{call_sid}/outcome")
    async def set_outcome(
        call_sid: str,
        body: OutcomeUpdate,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> dict:
        """The operator's verdict on a call: the live session (if the call is on), the finished call's
        record, and the call log (queued behind everything the call wrote)."""
        operator(authorization, x_api_key)
        live, finished = services.calls.get(call_sid), services.finished.get(call_sid)
        if live is None and finished is None:
            known = await call_log.call_exists(call_sid) if call_log is not None else False
            if known is False:  # None: the database cannot say now; the update waits in the queue
                raise HTTPException(status_code=404, detail=f"no call {call_sid}")
        for record in (live, finished):
            if record is not None:
                record.outcome, record.outcome_reason = body.outcome, body.reason
        if call_log is not None:
            call_log.set_outcome(call_sid, body.outcome, body.reason)
        log.info("call %s: outcome %s set by the operator (%s)", call_sid, body.outcome, body.reason)
        return {
            "call_sid": call_sid,
            "outcome": body.outcome,
            "reason": body.reason,
            "live": live is not None,
        }

    @app.get("/debug/stats")
    async def debug_stats() -> dict:
        return {"active_calls": len(services.calls), **metrics.snapshot()}

    @app.get("/debug/engines")
    async def debug_engines() -> dict:
        """CPU seconds of the embedded speech engines (offline stack) and the audio they handled."""
        local = sys.modules.get("agent.providers.local")
        return {k: v.snapshot() for k, v in local.CPU.items()} if local else {}

    @app.get("/debug/routing")
    async def debug_routing() -> dict:
        return services.router.health.snapshot()

    @app.post("/debug/stats/reset")
    async def debug_stats_reset() -> dict:
        metrics.reset()
        return {"ok": True}

    return app


def keys_missing(config: Config) -> bool:
    """True when some provider has no API key, so the emulators must stand in for it."""
    envs = [p.api_key_env for p in config.providers.values()] + [config.sarvam.api_key_env]
    return any(_key(e) is None for e in envs)
