"""The three provider interfaces of the core loop: STT, LLM, TTS.

Each is small and async-streaming. Implementations speak real wire protocols
(``sarvam.py``, ``sarvam_tts.py``, ``openai_compat.py``); the session only ever sees these types.

Audio into the STT is 8 kHz signed 16-bit little-endian mono PCM ("PCM16"), the format of the
session's 20 ms frames (320 bytes). Audio out of the TTS is in the format the call's carrier wants
on the wire (``voxroute.audio.WireFormat``: mu-law, A-law or PCM16 at a rate), asked for per
utterance: a TTS that can make it (Sarvam) is asked for it and passes its bytes through; one that
makes PCM (Piper) encodes once at its edge.

Errors: every provider failure is raised as :class:`ProviderError` with a ``kind`` from
:data:`FAULT_KINDS`, so the fallback ladder and the turn log can name what went wrong
without knowing the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from voxroute.audio import PCM16_8K, WireFormat

FRAME_MS = 20
SAMPLE_RATE = 8000
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2  # 320 bytes of PCM16

# What went wrong, in words shared by clients, emulators (their fault log) and the turn log.
FaultKind = Literal[
    "http_500",  # 5xx before the first token / byte
    "http_429",  # rate limited before the first token / byte
    "http_error",  # any other non-2xx status (4xx: auth, bad request)
    "stream_error",  # an error chunk / error message after data had started
    "timeout",  # no first token / byte within the attempt's deadline (a hang)
    "stall",  # the connection stays open but only keep-alives arrive
    "malformed",  # a chunk / message that is not valid protocol
    "disconnected",  # the socket or connection dropped
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


class ProviderError(Exception):
    """A provider attempt failed. ``after_first`` is True when some output had already arrived."""

    def __init__(
        self,
        provider: str,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        after_first: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {kind}: {message}")
        self.provider = provider
        self.kind = kind
        self.message = message
        self.status = status
        self.after_first = after_first
        self.retry_after_s = retry_after_s


# ---------------------------------------------------------------- STT


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The STT heard speech begin (server VAD)."""


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The STT decided the caller stopped speaking (server VAD end of speech)."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    final: bool
    language: str | None = None  # normalised "xx-IN" code when the STT reports one
    confidence: float | None = None  # 0..1 when the engine reports one (Sarvam's sockets do not)


STTEvent = SpeechStarted | SpeechEnded | Transcript


class STTStream(Protocol):
    """One streaming recognition session (one websocket for the whole call)."""

    async def send_audio(self, pcm: bytes, ulaw: bytes | None = None) -> None:
        """Send one or more 20 ms PCM16 8 kHz frames. ``ulaw``: the same audio as the carrier's
        mu-law bytes, when it has them; an STT that takes mu-law can skip encoding."""
        ...

    async def flush(self) -> None:
        """Ask the STT to finalise whatever it has buffered now (our endpointer decided)."""
        ...

    def events(self) -> AsyncIterator[STTEvent]:
        """Events in arrival order. Raises ProviderError if the session fails."""
        ...

    async def aclose(self) -> None: ...


class STTProvider(Protocol):
    name: str

    async def connect(self, language: str, tag: str | None = None) -> STTStream:
        """Open a session for a call whose expected language is ``language`` ("en-IN", "hi-IN", ...).
        ``tag`` ("CALLSID:TURN" or a purpose) names the session to emulators, which attribute faults by it."""
        ...


# ---------------------------------------------------------------- LLM


@dataclass(slots=True)
class LLMRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int = 200
    temperature: float = 0.3
    tools: list[dict[str, Any]] | None = None
    # Structured output (OpenAI ``response_format``); dropped for flavors whose allow-list lacks it.
    response_format: dict[str, Any] | None = None
    # Opaque tag sent as the X-Voxroute-Tag header so emulators can attribute faults to a turn.
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class LLMToken:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the model asked for, its arguments parsed."""

    id: str
    name: str
    arguments: dict[str, Any]
    index: int = 0
    # Lenient parsing only: why the arguments are not a JSON object (``arguments`` is then empty); the
    # tool runner answers the model with an error result instead of failing the whole stream.
    arguments_error: str | None = None


@dataclass(frozen=True, slots=True)
class LLMToolCalls:
    """The model asked for tool calls (arguments parsed). Yielded at finish, before the usage."""

    calls: tuple[ToolCall, ...]
    model: str | None = None


@dataclass(frozen=True, slots=True)
class LLMUsage:
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None  # as reported by the provider (OpenRouter); None otherwise


LLMEvent = LLMToken | LLMToolCalls | LLMUsage


class LLMProvider(Protocol):
    name: str

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        """Stream the reply. Raises ProviderError (after_first tells whether tokens flowed)."""
        ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- TTS


class TTSStream(Protocol):
    """One utterance being synthesised: text goes in as it is produced, audio comes out in the
    format the stream was opened with."""

    async def send_text(self, text: str) -> None: ...

    async def flush(self) -> None:
        """No more text for this utterance; the stream ends after the last audio."""
        ...

    def audio(self) -> AsyncIterator[bytes]:
        """Chunks in the stream's ``WireFormat`` (whole samples, any length) until the utterance is
        complete. Raises ProviderError."""
        ...

    async def cancel(self) -> None:
        """Barge-in: stop now, drop what is pending (closes the socket where the protocol has no cancel)."""
        ...


class TTSProvider(Protocol):
    name: str

    async def open(
        self, language: str, voice: str | None = None, tag: str | None = None, fmt: WireFormat = PCM16_8K
    ) -> TTSStream:
        """Start an utterance whose audio comes in ``fmt`` (a pre-warmed connection is used when one is
        ready). ``tag`` as for :meth:`STTProvider.connect`."""
        ...

    async def synthesize(
        self,
        text: str,
        language: str,
        voice: str | None = None,
        tag: str | None = None,
        fmt: WireFormat = PCM16_8K,
    ) -> bytes:
        """Whole-utterance synthesis (REST) in ``fmt``, used for cached bridge phrases and fallback."""
        ...

    async def aclose(self) -> None: ...
