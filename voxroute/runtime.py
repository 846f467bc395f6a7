"""Build the runtime from the config: provider clients (real or emulated), the router, the app.

Each provider kind is real when its API key is in the environment, and points at the local
emulators otherwise; the runtime logs which, once, at start.

Fail closed: ``voxroute serve`` starts only when :func:`missing_secrets` is empty (every enabled
carrier's secret, the operator key, every provider key), or with ``--dev``. ``create_runtime_app``
enforces the same for the carriers and the operator key unless ``dev=True``: an in-process stack
without secrets (replay, demo, tests) says so explicitly. One operator check
(``voxroute.agent.pages.OperatorAuth``) guards the call API, the pages, ``/debug/*`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from voxroute.agent import metrics, pages, prom, recording
from voxroute.agent.calllog.redact import redact_handoff
from voxroute.agent.calllog.source import CombinedCallSource, DatabaseCallSource
from voxroute.agent.calllog.state import CallState
from voxroute.agent.calllog.store import CallLog
from voxroute.agent.config import CarrierSecrets, Config
from voxroute.agent.link import CarrierLink
from voxroute.agent.providers.base import LLMProvider
from voxroute.agent.providers.openai_compat import OpenAICompatLLM
from voxroute.agent.providers.sarvam import SarvamSTT
from voxroute.agent.providers.sarvam_tts import SarvamTTS
from voxroute.agent.services import Services
from voxroute.agent.session import CallSession
from voxroute.agent.webhook import WebhookSender
from voxroute.routing.classifier import StakesModel
from voxroute.routing.router import Router
from voxroute.telephony.admission import CallGate
from voxroute.telephony.app import TelephonySettings, create_app
from voxroute.telephony.call_control import CallControl, TwilioCallControl
from voxroute.telephony.carrier_control import (
    CarrierTransfers,
    ExotelHandback,
    PlivoCallControl,
    TelnyxCallControl,
)
from voxroute.telephony.carriers import (
    SECRETS_OF,
    TWILIO_DIAL_ACTION_PATH,
    TWILIO_WHISPER_PATH,
    CarrierSettings,
)
from voxroute.telephony.sip.transport import RTP_TOTALS

if TYPE_CHECKING:
    from voxroute.agent.providers.local import ByLanguageSTT, ByLanguageTTS

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
    # Sarvam's streaming STT from another emulator process, ws://host:port (bench.concurrency: the
    # STT's steady work apart from the TTS and LLM answers a turn waits for); None: ``sarvam_ws``
    sarvam_stt_ws: str | None = None


def llm_connections(config: Config) -> int:
    """Connections per LLM provider in one process: two per call the process may carry (a call can
    have its answer and a hedge, its acknowledgement or an early request in flight at once), and
    at least 100. A request waiting in the pool for a connection is silence the ladder cannot
    tell from a slow model: with a fixed 100, 200 calls whose turns fell together queued there."""
    return max(100, 2 * config.telephony.max_concurrent_calls)


def _key(env_name: str) -> str | None:
    value = os.environ.get(env_name, "").strip()
    return value or None


@contextlib.asynccontextmanager
async def build_services(
    config: Config, emulators: EmulatorURLs | None, stack: str = "emulated"
) -> AsyncIterator[Services]:
    """Provider clients for one process. Without a key and without emulators, a provider cannot work:
    that is a clear error at start. ``stack="local"``: the embedded offline engines stand in for a
    speech provider without a key (agent/providers/local/) and the emulated LLMs answer with the
    scripted responder, driven by each turn's routing class."""
    if stack not in STACKS:
        raise RuntimeError(f"unknown stack {stack!r}; choose one of {STACKS}")
    if stack == "local" and "stt_final_wait_ms" not in config.endpoint.model_fields_set:
        # Whisper decodes while the caller speaks; its final comes 0.2-0.7 s after the utterance
        # (later on a loaded machine; Sarvam's ~250 ms): a turn waits up to this long for it before
        # taking the partial or saying "not heard" (a final later still is not a second turn).
        endpoint = config.endpoint.model_copy(update={"stt_final_wait_ms": LOCAL_STT_FINAL_WAIT_MS})
        config = config.model_copy(update={"endpoint": endpoint})
    modes: list[str] = []
    llms: dict[str, LLMProvider] = {}
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
            max_connections=llm_connections(config),
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
    stt_ws_base = emulators.sarvam_stt_ws if emulators is not None and sarvam_key == EMULATED_KEY else None
    stt: SarvamSTT | ByLanguageSTT = SarvamSTT(sarvam_key, ws_base_url=stt_ws_base or ws_base, **stt_kwargs)
    # Built here, at start: its SSL context costs ~100 ms of loop time, which the first call's audio
    # would otherwise pay for (the phrases are synthesised over REST).
    tts_http = httpx.AsyncClient()
    tts: SarvamTTS | ByLanguageTTS = SarvamTTS(
        sarvam_key,
        ws_base_url=ws_base,
        rest_base_url=rest_base,
        model=s.tts_model,
        speakers=s.speakers,
        http_client=tts_http,
    )
    # The live calls by call sid: Services keeps them; the scripted LLM reads each turn's routing class
    # there, the call control each call's carrier.
    calls: dict[str, CallSession] = {}
    offline = stack == "local"
    if offline:
        stt, tts, llms = _local_engines(config, stt, tts, llms, sarvam_key == EMULATED_KEY, calls, modes)

    router = build_router(config)
    mode = "emulated" if any("emulated" in m for m in modes) else "live"
    for line in modes:
        log.info("%s", line)
    call_control = _call_control(config, emulators, modes, calls)
    h = config.handoff
    secret = _key(h.webhook_secret_env)
    if h.webhook_url and not secret:
        # WebhookSender refuses an empty secret: say which setting is missing, at start.
        raise RuntimeError(f"handoff.webhook_url is set but ${h.webhook_secret_env} holds no signing secret")
    webhooks = WebhookSender(secret) if h.webhook_url and secret else None
    async with contextlib.AsyncExitStack() as exits:
        exits.push_async_callback(tts_http.aclose)
        await exits.enter_async_context(tts)
        for llm in llms.values():
            exits.push_async_callback(llm.aclose)
        exits.push_async_callback(call_control.aclose)
        if not isinstance(stt, SarvamSTT):
            exits.push_async_callback(stt.aclose)  # ByLanguageSTT: the offline Whisper worker pool
        services = Services(
            config, stt, tts, llms, router, mode="local" if offline and mode == "emulated" else mode,
            calls=calls, call_control=call_control, webhooks=webhooks,
        )  # fmt: skip
        # The call log: its writer task buffers while the database is away and drains at exit.
        call_log = CallLog.from_environment(config.call_log) if config.call_log.enabled else None
        if call_log is not None:
            services.observers.append(call_log)
        if call_log is not None:
            await _migrate_early(call_log)
            # State other processes of the database need (agent/calllog/state.py), on its own engine.
            services.state = CallState.from_environment(migrated=call_log._migrated)
            _share_plivo_transfers(call_control, services.state)
        async with asyncio.TaskGroup() as tg:
            if webhooks is not None:
                tg.create_task(webhooks.run(), name="handoff-webhooks")
            if call_log is not None:
                tg.create_task(call_log.run(), name="call-log")
                tg.create_task(services.state.run(), name="call-state")
            # Deletes call recordings past their tenant's retention_days (agent/recording.py).
            retention = tg.create_task(recording.retention_loop(config), name="recording-retention")
            try:
                yield services
            finally:
                retention.cancel()
                try:
                    if webhooks is not None:
                        await webhooks.aclose()
                finally:
                    if call_log is not None:
                        await services.state.aclose()
                        await call_log.aclose()


async def _migrate_early(call_log: CallLog, timeout_s: float = 30.0) -> None:
    """The database schema at start, not during the first call (Alembic holds the loop for 100-200 ms).
    A database that is away now is not fatal: the writer migrates when it comes back."""
    from voxroute.agent.calllog.database import migrate

    try:
        async with asyncio.timeout(timeout_s):
            await migrate(call_log.engine)
    except Exception as exc:
        log.warning("call log: database not ready at start (%s: %s); writing later", type(exc).__name__, exc)
        return
    if hasattr(call_log, "_migrated"):
        call_log._migrated = True  # the writer would run Alembic again on its first write


def _local_engines(
    config: Config,
    sarvam_stt: SarvamSTT,
    sarvam_tts: SarvamTTS,
    llms: dict[str, LLMProvider],
    sarvam_emulated: bool,
    calls: dict[str, CallSession],
    modes: list[str],
) -> tuple[SarvamSTT | ByLanguageSTT, SarvamTTS | ByLanguageTTS, dict[str, LLMProvider]]:
    """The offline stack: Whisper/Piper for the languages they know when Sarvam has no key (Sarvam,
    emulated, keeps the rest, and says so); emulated LLMs answer by routing class."""
    from voxroute.agent.providers.local import (
        ByLanguageSTT,
        ByLanguageTTS,
        ClassTaggedLLM,
        LocalPiperTTS,
        LocalWhisperSTT,
        class_lookup,
    )

    stt: SarvamSTT | ByLanguageSTT = sarvam_stt
    tts: SarvamTTS | ByLanguageTTS = sarvam_tts
    if sarvam_emulated:
        stt = ByLanguageSTT(LocalWhisperSTT(), sarvam_stt)
        tts = ByLanguageTTS(LocalPiperTTS(), sarvam_tts)
        modes.append(
            "STT: embedded faster-whisper tiny.en for English; other languages have no offline model: "
            f"emulated Sarvam (set ${config.sarvam.api_key_env} for real)"
        )
        espeak = "espeak-ng for Hindi" if tts.local.espeak else "no espeak-ng: Hindi on emulated Sarvam"
        modes.append(f"TTS: embedded Piper (en_US joe) for English, {espeak}")
    class_of = class_lookup(calls)
    for name, llm in list(llms.items()):
        if _key(config.providers[name].api_key_env) is None:  # emulated: a scripted reply per routing class
            llms[name] = ClassTaggedLLM(llm, class_of)
            modes.append(f"LLM {name}: simulated LLM, scripted replies by routing class")
    return stt, tts, llms


def simulated_llms(services: Services) -> set[str]:
    """Names of the LLM providers answered by an emulator (their turns say "simulated LLM")."""
    from voxroute.agent.providers.local import ClassTaggedLLM

    if services.mode == "emulated":
        return set(services.llms)
    return {n for n, llm in services.llms.items() if isinstance(llm, ClassTaggedLLM)}


def _share_plivo_transfers(control: CarrierTransfers, state: CallState) -> None:
    """Plivo fetches a transfer's XML from whichever process its request reaches: the pending
    transfer goes to the shared call state too."""
    plivo = control.controls.get("plivo")
    if isinstance(plivo, PlivoCallControl) and state.shared:
        plivo.shared = state


class _HandoffHooks:
    """The telephony edge asks about transfers in progress: the whisper, how the human leg ended.
    Any process may be asked (behind a load balancer): the answers come from the shared call state
    (``Services.handoff_record``, ``dial_result``), reads bounded in time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def whisper_for(self, call_sid: str) -> str | None:
        return ((await self.services.handoff_record(call_sid)) or {}).get("whisper")

    async def plivo_transfer_xml(self, call_uuid: str) -> str | None:
        controls = self.services.call_control
        plivo = controls.controls.get("plivo") if isinstance(controls, CarrierTransfers) else None
        return await plivo.take_pending(call_uuid) if isinstance(plivo, PlivoCallControl) else None

    async def on_dial_result(self, call_sid: str, result) -> None:
        human_leg = {
            "status": result.dial_status,
            "connected": result.connected,
            "duration_s": result.duration_s,
        }
        await self.services.dial_result(call_sid, human_leg)


def _call_control(
    config: Config, emulators: EmulatorURLs | None, modes: list[str], calls: dict[str, CallSession]
) -> CarrierTransfers:
    """Each carrier's own call control for transfers and hang-ups (a ``CallControl``), behind the one
    ``voxroute.agent.services.Transfers`` that dispatches each call to its carrier's: real with its secrets in the environment, else its local
    stand-in when the emulators run, else none for that carrier. Exotel needs none (closing the
    stream hands the call to the flow's next applet)."""
    secrets = config.carrier_secrets()
    envs = config.carrier_secret_envs()
    base = config.telephony.public_base_url
    timeout = config.handoff.dial_timeout_s
    controls: dict[str, CallControl] = {"exotel": ExotelHandback()}

    def twilio(account_sid: str, auth_token: str, api_base_url: str | None = None) -> TwilioCallControl:
        return TwilioCallControl(
            account_sid, auth_token, api_base_url=api_base_url, public_base_url=base,
            whisper_path=TWILIO_WHISPER_PATH, action_path=TWILIO_DIAL_ACTION_PATH, dial_timeout_s=timeout,
        )  # fmt: skip

    if secrets.twilio_account_sid and secrets.twilio_auth_token:
        modes.append("Twilio call control: api.twilio.com")
        controls["twilio"] = twilio(secrets.twilio_account_sid, secrets.twilio_auth_token)
    elif emulators is not None and emulators.twilio_api:
        from voxroute.emulators.stack import EMULATED_ACCOUNT_SID, EMULATED_AUTH_TOKEN

        modes.append(f"Twilio call control: emulated at {emulators.twilio_api}")
        controls["twilio"] = twilio(EMULATED_ACCOUNT_SID, EMULATED_AUTH_TOKEN, emulators.twilio_api)
    else:
        modes.append(
            f"Twilio call control: none (set ${envs['twilio_account_sid']} and "
            f"${envs['twilio_auth_token']} to transfer calls to a person)"
        )
    if secrets.plivo_auth_id and secrets.plivo_auth_token:
        modes.append("Plivo call control: api.plivo.com")
        controls["plivo"] = PlivoCallControl(
            secrets.plivo_auth_id, secrets.plivo_auth_token, base, dial_timeout_s=timeout
        )
    elif emulators is not None and emulators.carrier_api:
        from voxroute.emulators.carrier_rest import EMULATED_PLIVO_AUTH_ID, emulated_plivo_token

        modes.append(f"Plivo call control: emulated at {emulators.carrier_api}")
        controls["plivo"] = PlivoCallControl(
            EMULATED_PLIVO_AUTH_ID, emulated_plivo_token(), base, api_base_url=emulators.carrier_api,
            dial_timeout_s=timeout,
        )  # fmt: skip
    if secrets.telnyx_api_key:
        modes.append("Telnyx call control: api.telnyx.com")
        controls["telnyx"] = TelnyxCallControl(secrets.telnyx_api_key)
    elif emulators is not None and emulators.carrier_api:
        from voxroute.emulators.carrier_rest import EMULATED_TELNYX_API_KEY

        modes.append(f"Telnyx call control: emulated at {emulators.carrier_api}")
        controls["telnyx"] = TelnyxCallControl(EMULATED_TELNYX_API_KEY, api_base_url=emulators.carrier_api)
    missing = [c for c in ("twilio", "plivo", "telnyx") if c not in controls]
    if missing:
        modes.append(f"no call control for {', '.join(missing)} calls: they are not transferred to a person")

    def carrier_of(call_sid: str) -> str | None:
        session = calls.get(call_sid)
        return session.link.start.carrier if session is not None else None

    return CarrierTransfers(controls, carrier_of)


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


DEV_BANNER = "DEVELOPMENT MODE: unsigned carrier traffic accepted, emulators stand in for missing keys"


# What each carrier's edge needs to check its traffic (fields of agent.config.CarrierSecrets, whose
# environment variables the config names): ``voxroute serve`` refuses to start without them.
CARRIER_SECRETS_NEEDED = {
    "twilio": (("twilio_auth_token", "Twilio auth token (webhook and stream signatures)"),),
    "exotel": (("exotel_credentials", "Exotel stream credentials KEY:TOKEN (Basic auth)"),),
    "plivo": (("plivo_auth_token", "Plivo auth token (webhook signatures, stream tokens)"),),
    "telnyx": (
        ("telnyx_public_key", "Telnyx public key (webhook signatures)"),
        ("telnyx_stream_secret", "Telnyx stream secret (per-call stream tokens)"),
    ),
}


def carrier_settings(config: Config, secrets: CarrierSecrets | None = None) -> CarrierSettings:
    """Exotel, Plivo and Telnyx secrets as the config's carrier secrets hold them (read once,
    ``Config.carrier_secrets``), and the stream choices the environment sets."""
    s = secrets if secrets is not None else config.carrier_secrets()
    return CarrierSettings.from_env(
        secrets={field: getattr(s, field) for fields in SECRETS_OF.values() for field in fields}
    )


def missing_secrets(config: Config, *, sip_registration: bool = True) -> list[tuple[str, str]]:
    """What ``voxroute serve`` needs and the environment lacks: (variable, what it is for), one per
    variable, in a stable order. Empty: the server may start without ``--dev``."""
    t = config.telephony
    envs = config.carrier_secret_envs()
    env_of = {
        carrier: [(envs[f], what) for f, what in needs] for carrier, needs in CARRIER_SECRETS_NEEDED.items()
    }
    assert set(env_of) - {"twilio"} == set(SECRETS_OF)
    needed = [pair for carrier in t.carriers for pair in env_of[carrier]]
    needed.append(
        (config.handoff.operator_api_key_env, "operator API key (call API, pages, /debug, /metrics)")
    )
    for name, prov in config.providers.items():
        needed.append((prov.api_key_env, f"API key of provider {name}"))
    needed.append((config.sarvam.api_key_env, "Sarvam API key (speech)"))
    if config.handoff.webhook_url:
        needed.append((config.handoff.webhook_secret_env, "handoff webhook signing secret"))
    if sip_registration and config.sip.enabled and config.sip.registration is not None:
        needed.append((config.sip.registration.password_env, "SIP registration password"))
    from voxroute.agent.chat import missing_chat_keys

    needed += missing_chat_keys(config)  # a tenant's text channel without its key: refuse
    if _key("VOXROUTE_DATABASE_URL"):  # a database other hosts may share: one salt for them all
        needed.append(
            ("VOXROUTE_CALLER_SALT", "caller-number hash salt, the same on every host of the database")
        )
    missing: dict[str, list[str]] = {}
    for env, what in needed:
        if _key(env) is None:
            missing.setdefault(env, []).append(what)
    return [(env, "; ".join(dict.fromkeys(whats))) for env, whats in missing.items()]


def create_runtime_app(
    services: Services,
    *,
    dev: bool = False,
    carriers: tuple[str, ...] | list[str] | None = None,
    gate: CallGate | None = None,
) -> FastAPI:
    """The HTTP/websocket face of one runtime process: telephony routes plus the call API.

    ``dev``: carriers without their secret take unsigned traffic and the operator routes are open
    when no key is set (a banner says so on every page); without it, a missing carrier secret or
    operator key raises ``RuntimeError``. ``carriers``: the carriers routed (default: the config's
    ``telephony.carriers``). ``gate``: the call admission shared with the SIP edge (default: one of
    ``telephony.max_concurrent_calls``); ``app.state.call_gate``."""
    config = services.config
    t = config.telephony
    enabled = tuple(carriers if carriers is not None else t.carriers)
    if not dev:
        missing = [
            env
            for env, _ in missing_secrets(config, sip_registration=False)
            if env in _carrier_envs(config, enabled) or env == config.handoff.operator_api_key_env
        ]
        if missing:
            raise RuntimeError(f"missing secrets (or run in dev mode): {', '.join('$' + m for m in missing)}")
    gate = gate if gate is not None else CallGate(t.max_concurrent_calls)
    secrets = config.carrier_secrets()
    settings = TelephonySettings(
        public_base_url=t.public_base_url,
        twilio_auth_token=secrets.twilio_auth_token,
        default_tenant=t.default_tenant,
        max_message_bytes=t.max_message_bytes,
        carriers=enabled,
        allow_unsigned=dev,
        max_concurrent_calls=t.max_concurrent_calls,
        media_silence_timeout_s=t.media_silence_timeout_s,
    )

    async def on_call(link: CarrierLink) -> None:
        await services.before_call(link.start)  # a leg back from a failed transfer: its conversation
        await CallSession(link, services).run()

    app = create_app(
        settings,
        on_call,
        tenant_for_number=services.router.table.tenant_for_number,
        handoff=_HandoffHooks(services),
        carriers=carrier_settings(config, secrets),
        gate=gate,
    )
    app.state.dev = dev
    api_key = _key(config.handoff.operator_api_key_env)
    if api_key is None:
        log.warning(
            "DEV: no operator API key in $%s: the call API, pages, /debug and /metrics are open",
            config.handoff.operator_api_key_env,
        )
    auth = pages.OperatorAuth(api_key)
    operator = auth.require  # the one operator check (its five forms: agent.pages.OperatorAuth)

    from voxroute.agent.chat import add_chat_routes

    add_chat_routes(app, services, dev=dev)  # POST /v1/chat/completions: the text channel

    @app.get("/calls/{call_sid}/handoff")
    async def get_handoff(call_sid: str, request: Request) -> dict:
        operator(request)
        record = await services.handoff_record(call_sid)  # from whichever process wrote it
        if record is None and call_log is not None:  # an older call: as the call log keeps it
            record = await _logged_handoff(call_log, call_sid)
        if record is None:
            raise HTTPException(status_code=404, detail=f"no handoff for call {call_sid}")
        return redact_handoff(record)  # as the call log stores it (a transfer error may quote the caller)

    # GET /calls and /calls/{call_sid}: JSON for API clients, HTML pages for browsers (agent/pages.py)
    source: pages.CallSource = pages.MemoryCallSource(services, simulated=lambda: simulated_llms(services))
    call_log = next((o for o in services.observers if isinstance(o, CallLog)), None)
    if call_log is not None:  # past calls too, after a restart (agent/calllog/source.py)
        source = CombinedCallSource(source, DatabaseCallSource(call_log.engine))
    pages.add_call_routes(app, source, auth, banner=DEV_BANNER if dev else None)
    metrics_observer = prom.PromMetrics.for_services(services)
    metrics_observer.watch_gate(gate)
    metrics_observer.watch_rtp(RTP_TOTALS)  # the SIP edge's, when serve runs one (zeros otherwise)
    services.observers.append(metrics_observer)
    app.state.prom = metrics_observer
    prom.add_metrics_route(app, metrics_observer, operator)

    @app.post("/calls/{call_sid}/outcome")
    async def set_outcome(call_sid: str, body: OutcomeUpdate, request: Request) -> dict:
        """The operator's verdict on a call: the live session (if the call is on), the finished call's
        record, and the call log (queued behind everything the call wrote)."""
        operator(request)
        live, finished = services.calls.get(call_sid), services.finished.get(call_sid)
        if live is None and finished is None:
            known = await call_log.call_exists(call_sid) if call_log is not None else False
            if known is False:  # None: the database cannot say now; the update waits in the queue
                raise HTTPException(status_code=404, detail=f"no call {call_sid}")
        for record in (live, finished):
            if record is not None:
                record.outcome, record.outcome_reason = body.outcome, body.reason
        if live is None:  # the call may be live on another process: it takes the verdict at its end
            await services.share_outcome(call_sid, body.outcome, body.reason)
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
    async def debug_stats(request: Request) -> dict:
        operator(request)
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # asyncio or uvloop
        return {"active_calls": len(services.calls), "event_loop": loop, **metrics.snapshot()}

    @app.get("/debug/engines")
    async def debug_engines(request: Request) -> dict:
        """CPU seconds of the embedded speech engines (offline stack) and the audio they handled."""
        operator(request)
        local = sys.modules.get("voxroute.agent.providers.local")
        return {k: v.snapshot() for k, v in local.CPU.items()} if local else {}

    @app.get("/debug/routing")
    async def debug_routing(request: Request) -> dict:
        operator(request)
        return services.router.health.snapshot()

    @app.post("/debug/stats/reset")
    async def debug_stats_reset(request: Request) -> dict:
        operator(request)
        metrics.reset()
        return {"ok": True}

    return app


async def _logged_handoff(call_log: CallLog, call_sid: str, timeout_s: float = 0.5) -> dict | None:
    """The handoff record the call log kept for a call (redacted), or None (none, or no answer in time)."""
    from sqlalchemy import select

    from voxroute.agent.calllog.schema import calls_table

    try:
        async with asyncio.timeout(timeout_s), call_log.engine.connect() as conn:
            return await conn.scalar(select(calls_table.c.handoff).where(calls_table.c.call_sid == call_sid))
    except Exception as exc:
        log.warning("call %s: the call log's handoff record could not be read: %s", call_sid, exc)
        return None


def _carrier_envs(config: Config, enabled: tuple[str, ...]) -> set[str]:
    envs = config.carrier_secret_envs()
    return {envs[field] for c in enabled for field, _ in CARRIER_SECRETS_NEEDED[c]}


async def drain(services: Services, gate: CallGate, *, drain_s: float, closing_timeout_s: float,
                hurry: asyncio.Event | None = None) -> int:  # fmt: skip
    """Shutdown: refuse new calls now; give the calls in progress ``drain_s`` to finish (``hurry``
    set cuts it short); then each remaining call hears the closing phrase and is hung up. Returns
    how many calls were ended that way."""
    gate.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    log.warning(
        "shutting down: refusing new calls; %d call(s) in progress get up to %.0f s",
        len(services.calls),
        drain_s,
    )
    voices = {(s.language, s.agent.voice(s.language), s.player.audio_format) for s in services.calls.values()}
    async with asyncio.TaskGroup() as tg:
        for language, voice, fmt in voices:  # ready before it is needed
            tg.create_task(
                _quietly(services.phrase(language, "closing", voice, fmt)), name=f"closing-phrase-{language}"
            )
        # Polled: Services.calls has no event for "a call ended", and 100 ms is precise enough here.
        while services.calls and loop.time() < deadline and not (hurry is not None and hurry.is_set()):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    left = _live_sessions(services)
    if left:
        log.warning("shutting down: ending %d call(s) with the closing phrase", len(left))
        async with asyncio.TaskGroup() as tg:
            for session in left:
                tg.create_task(
                    _close_call(services, session, closing_timeout_s), name=f"{session.call_sid}:close"
                )
        end = loop.time() + 2.0
        while services.calls and loop.time() < end:  # noqa: ASYNC110  # the sessions unregister as they end
            await asyncio.sleep(0.05)
    return len(left)


def _live_sessions(services: Services) -> list[CallSession]:
    """Every live call session, a second stream of the same call too (``Services.streams``)."""
    streams = getattr(services, "streams", None)
    if streams is not None:
        return [session for session, _ in list(streams.values())]
    return list(services.calls.values())


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as exc:
        log.warning("shutting down: %s: %s", type(exc).__name__, exc)


async def _close_call(services: Services, session: CallSession, timeout_s: float) -> None:
    """The closing phrase on a live call (after what is playing is cut), then hang up."""
    try:
        async with asyncio.timeout(timeout_s):
            audio = await services.phrase(
                session.language,
                "closing",
                session.agent.voice(session.language),
                session.player.audio_format,
            )
            await session.player.clear()
            session.player.play(audio, None, "closing")
            await asyncio.sleep(0.05)
            while session.player.speaking:  # noqa: ASYNC110  # the player keeps time, it signals nothing
                await asyncio.sleep(0.05)
    except Exception as exc:  # a timeout or a dead link: hang up all the same
        log.warning("call %s: closing phrase not played in full: %s", session.call_sid, type(exc).__name__)
    if session.ended == "in_progress":
        session.ended = "completed"
    log.info("call %s: ended by shutdown", session.call_sid)
    await session.link.hangup()


def keys_missing(config: Config) -> bool:
    """True when some provider has no API key, so the emulators must stand in for it."""
    envs = [p.api_key_env for p in config.providers.values()] + [config.sarvam.api_key_env]
    return any(_key(e) is None for e in envs)
