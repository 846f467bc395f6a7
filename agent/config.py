"""Runtime configuration: pydantic models loaded from one YAML file.

A bad file fails at start with the dotted path of the bad field (``ConfigError``).
Real API keys never live in the file: each provider names the environment variable that
holds its key, and a provider without a key falls back to the emulated stack (and says so).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from voxroute.agent.tools.spec import ToolsConfig
from voxroute.routing.table import ModelPath, RoutingConfig, RoutingTable, TenantConfig, check_references

if TYPE_CHECKING:
    from voxroute.agent.agentdef import AgentDef

__all__ = ["CarrierSecrets", "Config", "ConfigError", "ModelPath", "load_config", "parse_config"]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "examples" / "default.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LLMProviderConfig(_Model):
    """An OpenAI-compatible endpoint (OpenRouter, Sarvam, CallMissed)."""

    flavor: Literal["openrouter", "sarvam", "callmissed", "openai"]
    base_url: str
    api_key_env: str


class SarvamConfig(_Model):
    ws_base_url: str = "wss://api.sarvam.ai"
    rest_base_url: str = "https://api.sarvam.ai"
    api_key_env: str = "SARVAM_API_KEY"
    stt_variant: Literal["realtime", "legacy"] = "realtime"
    stt_model: str | None = None
    stt_silence_ms: int = Field(default=200, ge=50, le=2000)
    # Caller audio per STT message (agent/sttfeed.py joins 20 ms frames; any STT provider): fewer,
    # larger sends cost less CPU. Not where it costs latency: once speech stops, frames go one by one
    # for twice stt_silence_ms (the STT hears the end of an utterance at once), and flush sends a batch.
    stt_batch_ms: int = Field(default=100, ge=20, le=100, multiple_of=20)
    tts_model: str = "bulbul:v3"
    speakers: dict[str, str] = Field(default_factory=lambda: {"en-IN": "shubh", "hi-IN": "ritu"})


class BudgetConfig(_Model):
    """How the deadline is kept. The budgets themselves are per tenant, channel and class."""

    bridge_lead_ms: int = Field(default=150, ge=0)
    hard_cap_ms: int = Field(default=8000, gt=0)
    refill_ms: int = Field(default=2500, gt=0)  # silence after a bridge before another filler plays
    tts_first_audio_ms: int = Field(default=150, gt=0)  # expected, for "bridge then escalate"


class EndpointConfig(_Model):
    silence_ms: int = Field(default=300, ge=60, le=3000)
    min_speech_ms: int = Field(default=120, ge=20, le=2000)
    vad_mode: int = Field(default=2, ge=0, le=3)
    incomplete_hold_ms: int = Field(default=800, ge=0, le=5000)  # more silence allowed after "... booking to"
    # Caller sound over the agent (agent/bargein.py): voice needed before anything interrupts (a cough
    # or a keypad tone is shorter); then a non-backchannel word interrupts at once, and speech without
    # one interrupts after barge_in_confirm_ms.
    barge_in_min_voiced_ms: int = Field(default=300, ge=20, le=2000)
    barge_in_confirm_ms: int = Field(default=700, ge=20, le=5000)
    backchannels: list[str] = Field(default_factory=list)  # empty: agent.bargein.DEFAULT_BACKCHANNELS
    stt_final_wait_ms: int = Field(default=400, ge=0, le=5000)  # wait for the STT final after our endpoint
    dtmf_timeout_ms: int = Field(default=1000, ge=100, le=10000)
    # Caps on what a caller can make a turn hold (keys beyond the cap are dropped, text is cut).
    max_dtmf_digits: int = Field(default=32, ge=1, le=1000)
    max_transcript_chars: int = Field(default=2000, ge=50, le=100_000)


class LadderConfig(_Model):
    """How a turn's ladder runs: attempts, timeouts. The ladders themselves are in the routing table."""

    max_attempts: int = Field(default=4, ge=1, le=10)
    hedge_quantile: float = Field(default=0.9, gt=0.5, lt=1)  # hedge a first token later than this
    # A path whose live p90 is a few ms (a local model, the emulators) would otherwise be hedged on
    # scheduling noise, and its backups cooled down for losing races they joined a moment before.
    hedge_min_ms: int = Field(default=100, ge=0)  # never hedge sooner than this
    first_token_timeout_ms: int = Field(default=4000, gt=0)  # an attempt with no token by then failed
    ack_max_tokens: int = Field(default=24, gt=0)  # the fast path's acknowledgement before escalation
    # Start the answer's first model request when the caller pauses, on the STT's last partial;
    # kept if the final says the same words, else cancelled and its cost added to the turn
    # (agent/preemptive.py). "fast": only a fast-tier path (a reasoning answer misses the budget
    # anyway, and its unused prompt costs ten times as much): the answer's, or for a reasoning
    # answer that bridges first, the fast path's acknowledgement; "all": the answer's, any tier. At most early_requests_per_turn per caller turn; after
    # early_request_max_misses unused in a row a call starts no more (an STT whose partials never
    # come back as its finals).
    early_request: Literal["off", "fast", "all"] = "off"  # start the answer on the last partial at a pause
    early_requests_per_turn: int = Field(default=2, ge=1, le=5)  # for each caller turn
    early_request_max_misses: int = Field(default=3, ge=1, le=100)  # unused in a row: none after, that call
    stall_timeout_ms: int = Field(default=1500, gt=0)
    tts_first_audio_timeout_ms: int = Field(default=1000, gt=0)
    tts_gap_timeout_ms: int = Field(default=1500, gt=0)


class AgentConfig(_Model):
    system_prompt: str = (
        "You are a helpful, concise phone agent for a business. Reply in one to three short spoken "
        "sentences, in the caller's language. Never use lists or markdown."
    )
    greeting: str | None = None
    bridge_phrases: dict[str, str] = Field(
        default_factory=lambda: {"en-IN": "One moment, please.", "hi-IN": "एक क्षण, कृपया।"}
    )
    apology_phrases: dict[str, str] = Field(
        default_factory=lambda: {
            "en-IN": "Sorry, I am having trouble right now. Could you say that again?",
            "hi-IN": "क्षमा करें, अभी कुछ दिक्कत है। क्या आप दोबारा कह सकते हैं?",
        }
    )
    handoff_phrases: dict[str, str] = Field(
        default_factory=lambda: {
            "en-IN": "Sorry, I can't sort this out right now. I'm passing you to a colleague who can help.",
            "hi-IN": "क्षमा करें, मैं अभी यह हल नहीं कर पा रहा हूँ। मैं आपको एक सहकर्मी से जोड़ रहा हूँ।",
        }
    )
    transfer_phrases: dict[str, str] = Field(
        default_factory=lambda: {
            "en-IN": "Of course. I'm connecting you to a colleague now, who will have the details. Please hold.",
            "hi-IN": "ज़रूर। मैं आपको अभी एक सहकर्मी से जोड़ रहा हूँ, उनके पास पूरी जानकारी होगी। कृपया प्रतीक्षा करें।",
        }
    )
    callback_phrases: dict[str, str] = Field(
        default_factory=lambda: {
            "en-IN": "Sorry, no one could take your call just now. A colleague will call you back soon. "
            "Is there anything else I can help with?",
            "hi-IN": "क्षमा करें, अभी कोई सहकर्मी उपलब्ध नहीं है। हम जल्द ही आपको वापस कॉल करेंगे। "
            "क्या मैं और कुछ मदद कर सकता हूँ?",
        }
    )
    ack_prompt: str = (
        "Before the full answer, say only one short sentence (under twelve words) that shows you "
        "understood the caller and are checking. Do not answer yet."
    )
    not_heard_phrases: dict[str, str] = Field(
        default_factory=lambda: {
            "en-IN": "Sorry, I didn't catch that. Could you repeat it?",
            "hi-IN": "माफ़ कीजिए, मैं सुन नहीं पाया। क्या आप दोहरा सकते हैं?",
        }
    )
    closing_phrases: dict[str, str] = Field(
        default_factory=lambda: {
            "en-IN": "Sorry, we have to end this call now. Please call us again in a moment. Goodbye.",
            "hi-IN": "क्षमा करें, हमें यह कॉल अभी समाप्त करनी होगी। कृपया थोड़ी देर में फिर से कॉल करें। धन्यवाद।",
        }
    )
    max_tokens: int = Field(default=160, gt=0)
    temperature: float = Field(default=0.3, ge=0, le=2)


class TenantAgentConfig(_Model):
    """A tenant's own agent (agent/agentdef.py): unset fields take the shared ``agent:`` section's.

    ``system_prompt`` and ``greeting`` are templates: ``{tenant}``, ``{local_time}``, ``{local_date}``,
    ``{caller}`` (the caller's number, masked to its last four digits) and ``{language}``. The knowledge
    file (markdown, at most ``knowledge_max_bytes``, a relative path from the config file's folder) is
    read at start and added to the prompt. ``greeting``: the agent speaks first at the stream's start
    (a text, or one per language); None: the caller speaks first (the default, and what the fixtures
    expect). ``voices``: the TTS speaker per language."""

    system_prompt: str | None = Field(default=None, max_length=20_000)
    greeting: str | dict[str, str] | None = None
    voices: dict[str, str] = Field(default_factory=dict)
    knowledge_file: str | None = None
    knowledge_max_bytes: int = Field(default=32 * 1024, ge=256, le=1024 * 1024)
    timezone: str = "Asia/Kolkata"  # the prompt's {local_time}


class TenantChatConfig(_Model):
    """The text channel, ``POST /v1/chat/completions`` with ``model`` = the tenant (agent/chat.py).
    Outside ``voxroute serve --dev`` it needs ``Authorization: Bearer`` with the key in ``api_key_env``,
    and serve refuses to start while a tenant enables chat without that key set."""

    enabled: bool = False
    api_key_env: str | None = None  # None: VOXROUTE_CHAT_KEY_<TENANT>


class TenantRecordingConfig(_Model):
    """Call recording (agent/recording.py), off by default: each call's audio as an 8 kHz WAV under
    ``$VOXROUTE_DATA_DIR/recordings/<tenant>/`` with a JSON sidecar of the turn boundaries.
    ``channels``: ``caller`` (mono) or ``both`` (stereo: left the caller, right the agent). Files
    older than ``retention_days`` are deleted by a background task. A call is recorded up to
    ``max_minutes`` (the audio is held in memory until the call ends: 16 KB per second per channel)."""

    enabled: bool = False  # record this tenant's calls
    channels: Literal["caller", "both"] = "caller"  # caller: mono; both: stereo, left caller, right agent
    retention_days: int = Field(default=30, ge=1, le=3650)  # recordings older than this are deleted
    max_minutes: int = Field(default=60, ge=1, le=240)  # a longer call's recording stops here


class AgentTenantConfig(TenantConfig):
    """A tenant of the routing table, plus its agent and its text channel."""

    agent: TenantAgentConfig = TenantAgentConfig()
    chat: TenantChatConfig = TenantChatConfig()
    recording: TenantRecordingConfig = TenantRecordingConfig()

    def chat_key_env(self, name: str) -> str:
        return self.chat.api_key_env or "VOXROUTE_CHAT_KEY_" + "".join(
            c if c.isalnum() else "_" for c in name.upper()
        )


class ChatConfig(_Model):
    """Bounds of the text channel (every tenant's)."""

    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_messages: int = Field(default=100, ge=1, le=10_000)  # in one request
    max_message_chars: int = Field(default=8000, ge=50, le=1_000_000)  # of one message's text
    max_sessions: int = Field(default=1000, ge=1, le=1_000_000)  # conversations kept in memory
    max_concurrent: int = Field(default=50, ge=1, le=10_000)  # requests answered at once (over: 429)
    max_turns: int = Field(default=200, ge=1, le=10_000)  # of one conversation
    session_idle_s: float = Field(default=1800.0, gt=0)  # a quiet conversation is forgotten after this


class HandoffConfig(_Model):
    """Handing a call to a person: the summary, its webhook, the Twilio transfer."""

    summary_timeout_ms: int = Field(default=2000, gt=0)  # the model's summary, else the deterministic one
    dial_timeout_s: int = Field(default=30, ge=5, le=600)
    dtmf_digit: str | None = Field(default="0", pattern=r"^[0-9*#]$")  # keyed alone: a person, please
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    webhook_secret_env: str = "VOXROUTE_WEBHOOK_SECRET"
    twilio_account_sid_env: str = "TWILIO_ACCOUNT_SID"
    operator_api_key_env: str = "VOXROUTE_API_KEY"


CARRIERS = ("twilio", "exotel", "plivo", "telnyx")


class TelephonyConfig(_Model):
    """The carriers' edge. Only the carriers listed in ``carriers`` are routed (the others answer 404);
    ``voxroute serve`` refuses to start while one of them lacks its secret (``--dev`` aside). Each
    secret lives in the environment variable named here."""

    public_base_url: str = "http://127.0.0.1:8080"
    carriers: list[Literal["twilio", "exotel", "plivo", "telnyx"]] = Field(default_factory=lambda: ["twilio"])
    twilio_auth_token_env: str = "TWILIO_AUTH_TOKEN"
    exotel_credentials_env: str = "EXOTEL_STREAM_CREDENTIALS"  # "KEY:TOKEN", Basic auth on the upgrade
    plivo_auth_id_env: str = "PLIVO_AUTH_ID"  # with the auth token: Plivo's REST API (call control)
    plivo_auth_token_env: str = "PLIVO_AUTH_TOKEN"
    telnyx_api_key_env: str = "TELNYX_API_KEY"  # Telnyx Call Control's REST API (transfers, hang-ups)
    telnyx_public_key_env: str = "TELNYX_PUBLIC_KEY"  # webhook signatures (Ed25519, base64)
    telnyx_stream_secret_env: str = "TELNYX_STREAM_SECRET"  # our HMAC key for the per-call stream token
    default_tenant: str = "default"
    max_message_bytes: int = Field(default=64 * 1024, gt=1024)
    # Bounds: calls carried at once by this process (over it: busy), and media silence that ends a call.
    max_concurrent_calls: int = Field(default=100, ge=1, le=100_000)
    media_silence_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)  # a request's headers (or upgrade) by then
    # The carrier media streams also on this second port, on voxroute's lean websocket server (less
    # CPU per media message than the ASGI port: telephony/wsserver.py); a reverse proxy routes the
    # stream paths (/twilio/stream, /exotel/stream, /plivo/stream, /telnyx/stream) to it.
    media_port: int | None = Field(default=None, ge=1, le=65535)  # streams' own port; None: the main one
    # The event loop `voxroute serve` runs on. "uvloop" (libuv, in C; pip install 'voxroute[uvloop]')
    # takes less CPU per socket message than the standard library's loop and carries more calls per
    # core (README: Calls per server core); without the package the server runs on the standard loop
    # and says so once at start. "asyncio": the standard library's loop.
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # The cyclic garbage collector's thresholds in `voxroute serve` (Python's gc.set_threshold: new
    # objects before a young collection, young collections before a middle one, middle ones before a
    # full one). Python's (700, 10, 10) spends twice the CPU on the collector under load and runs a
    # full collection (70-90 ms at 100 calls) every 20-30 s; here a young one takes a few ms and a
    # full one comes about thirty times less often (README: Garbage collection).
    gc_thresholds: tuple[int, int, int] = (2000, 10, 100)

    @model_validator(mode="after")
    def _unique_carriers(self) -> TelephonyConfig:
        if len(set(self.carriers)) != len(self.carriers):
            raise ValueError("carriers: each carrier once")
        return self

    @field_validator("gc_thresholds")
    @classmethod
    def _collector_on(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if value[0] < 100 or min(value[1:]) < 1:  # 0 would turn the collector off: leaks, not speed
            raise ValueError("gc_thresholds: the first at least 100, the others at least 1")
        return value


@dataclass(frozen=True)
class CarrierSecrets:
    """Every carrier secret, read once from the environment variables the config names
    (:meth:`Config.carrier_secret_envs`); None: unset or blank. Never printed (``repr`` hides them)."""

    twilio_account_sid: str | None = field(default=None, repr=False)
    twilio_auth_token: str | None = field(default=None, repr=False)
    exotel_credentials: str | None = field(default=None, repr=False)
    plivo_auth_id: str | None = field(default=None, repr=False)
    plivo_auth_token: str | None = field(default=None, repr=False)
    telnyx_api_key: str | None = field(default=None, repr=False)
    telnyx_public_key: str | None = field(default=None, repr=False)
    telnyx_stream_secret: str | None = field(default=None, repr=False)


class ShutdownConfig(_Model):
    """SIGTERM/SIGINT: new calls are refused at once; calls in progress get ``drain_s`` to finish, then
    hear the closing phrase and are ended; the call log is flushed; the process exits 0."""

    drain_s: float = Field(default=20.0, ge=0, le=3600)
    closing_timeout_s: float = Field(default=8.0, gt=0, le=60)  # the closing phrase's longest wait


class SipRegistrationConfig(_Model):
    """REGISTER to a SIP trunk so its DID rings us (digest auth; refreshed at half the expiry)."""

    registrar: str = Field(pattern=r"^[^\s:]+(:\d{1,5})?$")  # host[:port]
    domain: str | None = None  # the AOR's domain when it is not the registrar's host
    username: str
    password_env: str = "VOXROUTE_SIP_PASSWORD"
    expires: int = Field(default=3600, ge=30, le=86400)


class SipConfig(_Model):
    """The SIP user agent (``voxroute serve --sip HOST:PORT``) and Asterisk AudioSocket."""

    enabled: bool = False  # or ``voxroute serve --sip HOST:PORT``
    bind: str = Field(default="127.0.0.1:5060", pattern=r"^[^\s]+:\d{1,5}$")
    advertise: str | None = None  # the address put in Contact and SDP, when not the bound one (NAT)
    allow_from: list[str] = Field(default_factory=lambda: ["127.0.0.1/32"])  # direct INVITEs from
    registration: SipRegistrationConfig | None = None
    transfer_target: str | None = Field(default=None, pattern=r"^sips?:\S+$")  # REFER target for a number
    hang_up_on_refused_transfer: bool = True  # apologise, then BYE (else the caller stays)
    audiosocket_bind: str | None = Field(default=None, pattern=r"^[^\s]+:\d{1,5}$")

    @model_validator(mode="after")
    def _networks(self) -> SipConfig:
        import ipaddress

        for i, net in enumerate(self.allow_from):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"allow_from[{i}]: {net!r} is not an IP address or network") from None
        return self


class CallLogConfig(_Model):
    """The call log database (agent/calllog): where it is comes from the environment
    (``VOXROUTE_DATABASE_URL``, else SQLite in ``VOXROUTE_DATA_DIR``); how it buffers, from here."""

    enabled: bool = True
    store_raw_numbers: bool = False  # the caller's number in clear beside its salted hash
    queue_size: int = Field(default=10000, ge=10)  # records waiting for the writer
    memory_records: int = Field(default=2000, ge=10)  # records held while the database is down, then spilled
    spool_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # the on-disk spill file's cap
    # Finished calls kept in memory (call pages, a leg back from a failed transfer) beside the database.
    recent_calls: int = Field(default=1000, ge=1, le=1_000_000)


class Config(_Model):
    language: str = "en-IN"  # a call's language when the call set-up does not say
    providers: dict[str, LLMProviderConfig]
    models: dict[str, ModelPath] = Field(default_factory=dict)  # shared by every tenant
    ladder: LadderConfig = LadderConfig()
    routing: RoutingConfig = RoutingConfig()
    tenants: dict[str, AgentTenantConfig] = Field(min_length=1)
    sarvam: SarvamConfig = SarvamConfig()
    budget: BudgetConfig = BudgetConfig()
    endpoint: EndpointConfig = EndpointConfig()
    agent: AgentConfig = AgentConfig()
    telephony: TelephonyConfig = TelephonyConfig()
    sip: SipConfig = SipConfig()
    handoff: HandoffConfig = HandoffConfig()
    call_log: CallLogConfig = CallLogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    tools: ToolsConfig = ToolsConfig()  # business tools per tenant (agent/tools)
    chat: ChatConfig = ChatConfig()
    _agents: dict[str, AgentDef] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems = [
            f"models.{name}.provider: unknown provider {path.provider!r}"
            for name, path in self.models.items()
            if path.provider not in self.providers
        ]
        for tname, tenant in self.tenants.items():
            problems += [
                f"tenants.{tname}.models.{name}.provider: unknown provider {path.provider!r}"
                for name, path in tenant.models.items()
                if path.provider not in self.providers
            ]
            for channel, budget in (("voice", tenant.budgets.voice_ms), ("chat", tenant.budgets.chat_ms)):
                if self.budget.bridge_lead_ms >= budget:
                    problems.append(
                        f"tenants.{tname}.budgets.{channel}_ms: must be larger than bridge_lead_ms"
                    )
                if self.budget.hard_cap_ms <= budget:
                    problems.append(f"tenants.{tname}.budgets.{channel}_ms: must be smaller than hard_cap_ms")
        problems += check_references(self.routing, self.tenants, self.models)
        problems += [
            f"tools.tenants.{t}: no tenant {t!r}" for t in self.tools.tenants if t not in self.tenants
        ]
        if self.telephony.default_tenant not in self.tenants:
            problems.append(f"telephony.default_tenant: no tenant {self.telephony.default_tenant!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def agent_for(self, tenant: str) -> AgentDef:
        """The tenant's agent (agent/agentdef.py), resolved when the config loaded (else now, with
        knowledge files found from the working directory)."""
        if not self._agents:
            self.resolve_agents(None)
        return self._agents[tenant]

    def resolve_agents(self, base_dir: Path | None, source: str = "<config>") -> None:
        """Build every tenant's agent; ``ConfigError`` naming each bad field."""
        from voxroute.agent.agentdef import build_agents

        agents, problems = build_agents(self, base_dir)
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            raise ConfigError(f"{source}: invalid configuration\n{lines}")
        self._agents = agents

    def carrier_secret_envs(self) -> dict[str, str]:
        """The environment variable of each carrier secret (:class:`CarrierSecrets`' fields)."""
        t, h = self.telephony, self.handoff
        return {
            "twilio_account_sid": h.twilio_account_sid_env,
            "twilio_auth_token": t.twilio_auth_token_env,
            "exotel_credentials": t.exotel_credentials_env,
            "plivo_auth_id": t.plivo_auth_id_env,
            "plivo_auth_token": t.plivo_auth_token_env,
            "telnyx_api_key": t.telnyx_api_key_env,
            "telnyx_public_key": t.telnyx_public_key_env,
            "telnyx_stream_secret": t.telnyx_stream_secret_env,
        }

    def carrier_secrets(self, env: Mapping[str, str] | None = None) -> CarrierSecrets:
        """Every carrier secret from the environment (``env``, default ``os.environ``): the one place
        that reads them."""
        env = os.environ if env is None else env
        return CarrierSecrets(
            **{name: (env.get(var) or "").strip() or None for name, var in self.carrier_secret_envs().items()}
        )

    def routing_table(self) -> RoutingTable:
        return RoutingTable(self.routing, self.tenants, self.models, self.telephony.default_tenant)

    def phrase(self, table: dict[str, str], language: str) -> str:
        return table.get(language) or table.get(self.language) or next(iter(table.values()))


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if not loc and err["type"] == "value_error":
            # Cross-reference problems from Config._references: each already names its dotted path.
            msg = err["msg"].removeprefix("Value error, ")
            lines += [f"  {problem}" for problem in msg.split("; ")]
            continue
        lines.append(f"  {loc or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """``base_dir``: where relative paths in the config (knowledge files) are found."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{_format_errors(exc)}") from None
    config.resolve_agents(base_dir, source)
    return config


def load_config(path: str | Path | None = None) -> Config:
    p = Path(path) if path else Path(os.environ.get("VOXROUTE_CONFIG", DEFAULT_CONFIG_PATH))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, str(p), p.resolve().parent)
