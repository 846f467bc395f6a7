"""Sarvam speech clients: streaming STT (realtime or legacy socket), and the plumbing the Bulbul TTS
client (:mod:`voxroute.agent.providers.sarvam_tts`) shares with it.

Thin asyncio layers over :mod:`voxroute.agent.providers.sarvam_protocol` using our lean websocket
client (:mod:`voxroute.agent.providers.wsclient`: the ``websockets`` sans-I/O protocol on an
``asyncio.Protocol``) and ``httpx``. The STT interface takes PCM16 8 kHz (and the carrier's mu-law, when it has it).

- :class:`SarvamSTT` -> :class:`SarvamSTTStream`: the realtime socket gets the caller's audio as
  mu-law 8 kHz (what Twilio sends) in ``audio_input`` messages of at least ``batch_ms`` (default
  20 ms: one message per ``send_audio`` of whole frames; the STT feed, agent/sttfeed.py, joins
  frames into batches of ``sarvam.stt_batch_ms``); the legacy socket gets PCM s16le with
  ``sample_rate=8000`` in the query.
- :class:`~agent.providers.sarvam_tts.SarvamTTS`: see its module.

Every failure surfaces as :class:`~agent.providers.base.ProviderError` with a FaultKind:
handshake 401/403 -> ``http_error``, 429 -> ``http_429``, 5xx -> ``http_500``, socket dropped ->
``disconnected``, fatal error message -> ``stream_error`` (TTS errors before any audio carry the
HTTP-like kind of their code), unparsable frame -> ``malformed``, REST timeout -> ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxroute.agent.providers.base import ProviderError, SpeechEnded, SpeechStarted, STTEvent, Transcript
from voxroute.agent.providers.sarvam_protocol import (
    AUTH_HEADER,
    DEFAULT_LEGACY_MODEL,
    DEFAULT_REALTIME_MODEL,
    TAG_HEADER,
    LegacyError,
    LegacySignal,
    LegacyTranscript,
    RtError,
    RtSessionBegin,
    RtSessionEnd,
    RtTranscript,
    RtVadSpeechEnd,
    RtVadSpeechStart,
    SarvamProtocolError,
    fault_kind_for_status,
    legacy_audio,
    legacy_flush,
    legacy_stt_url,
    normalise_language,
    parse_legacy,
    parse_realtime,
    parse_rest_error,
    realtime_stt_url,
    retry_after_seconds,
    rt_audio_input,
    rt_flush,
)
from voxroute.agent.providers.wsclient import WebSocketClient, connect
from voxroute.audio import pcm16_to_ulaw

log = logging.getLogger(__name__)

DEFAULT_WS_BASE = "wss://api.sarvam.ai"
DEFAULT_REST_BASE = "https://api.sarvam.ai"
STT_PROVIDER = "sarvam-stt"
TTS_PROVIDER = "sarvam-tts"
CLOSE_TIMEOUT_S = 0.5


def _headers(api_key: str, tag: str | None) -> dict[str, str]:
    headers = {AUTH_HEADER: api_key}
    if tag:
        headers[TAG_HEADER] = tag
    return headers


async def _ws_connect(provider: str, url: str, headers: dict[str, str], timeout_s: float) -> WebSocketClient:
    try:
        return await connect(
            url,
            additional_headers=headers,
            open_timeout=timeout_s,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=4 << 20,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        detail = parse_rest_error(exc.response.body or b"").message if exc.response.body else ""
        log.warning("%s: handshake refused with HTTP %d %s", provider, status, detail)
        raise ProviderError(
            provider,
            fault_kind_for_status(status),
            f"websocket handshake refused: HTTP {status} {detail}".strip(),
            status=status,
            retry_after_s=retry_after_seconds(exc.response.headers),
        ) from None
    except TimeoutError:
        raise ProviderError(provider, "timeout", f"websocket handshake took over {timeout_s} s") from None
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        raise ProviderError(provider, "disconnected", f"websocket connect failed: {exc!r}") from None


async def _close_ws(ws: WebSocketClient) -> None:
    """Close promptly: a close handshake when the peer answers, an abort when it does not."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close()
    except (TimeoutError, OSError, ConnectionClosed):
        ws.transport.abort()


def _closed_message(exc: ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "socket closed without a close frame"
    return f"socket closed by the server: code {rcvd.code} {rcvd.reason!r}"


# ---------------------------------------------------------------- STT


class SarvamSTTStream:
    """One streaming recognition session. ``events()`` may be iterated once."""

    def __init__(self, ws: WebSocketClient, *, variant: str, language: str | None, batch_bytes: int) -> None:
        self._ws = ws
        self._realtime = variant == "realtime"
        self._language = language  # normalised; None with auto-detection
        # batch_bytes counts PCM16; the realtime buffer holds mu-law, one byte per sample
        self._batch_bytes = batch_bytes // 2 if self._realtime else batch_bytes
        self._buf = bytearray()
        self._closing = False
        self._ended = False
        self.request_id: str | None = None

    async def send_audio(self, pcm: bytes, ulaw: bytes | None = None) -> None:
        # The realtime socket takes mu-law: buffer it as such (the carrier's bytes when given).
        if self._realtime:
            self._buf += ulaw if ulaw is not None and len(ulaw) * 2 == len(pcm) else pcm16_to_ulaw(pcm)
        else:
            self._buf += pcm
        if len(self._buf) >= self._batch_bytes:
            await self._send_buffer()

    async def _send_buffer(self) -> None:
        if not self._buf:
            return
        if self._realtime:
            ulaw = bytes(self._buf)
            self._buf.clear()
            await self._send(rt_audio_input(ulaw))
            return
        pcm = bytes(self._buf[: len(self._buf) // 2 * 2])
        del self._buf[: len(pcm)]
        await self._send(legacy_audio(pcm, 8000))

    async def _send(self, msg: str) -> None:
        try:
            await self._ws.send(msg)
        except ConnectionClosed as exc:
            raise ProviderError(STT_PROVIDER, "disconnected", _closed_message(exc)) from None

    async def flush(self) -> None:
        await self._send_buffer()
        await self._send(rt_flush() if self._realtime else legacy_flush())

    async def events(self) -> AsyncIterator[STTEvent]:
        while True:
            try:
                raw = await self._ws.recv()
            except ConnectionClosed as exc:
                if self._closing or self._ended:
                    return
                log.warning("%s: %s", STT_PROVIDER, _closed_message(exc))
                raise ProviderError(STT_PROVIDER, "disconnected", _closed_message(exc)) from None
            try:
                event = self._map(raw)
            except SarvamProtocolError as exc:
                log.warning("%s: malformed message: %s", STT_PROVIDER, exc)
                raise ProviderError(STT_PROVIDER, "malformed", str(exc)) from None
            if event is not None:
                yield event

    def _map(self, raw: str | bytes) -> STTEvent | None:
        if self._realtime:
            m = parse_realtime(raw)
            if isinstance(m, RtTranscript):
                return Transcript(m.text, m.final, m.language or self._language)
            if isinstance(m, RtVadSpeechStart):
                return SpeechStarted()
            if isinstance(m, RtVadSpeechEnd):
                return SpeechEnded()
            if isinstance(m, RtError):
                if m.is_fatal:
                    raise ProviderError(
                        STT_PROVIDER, "stream_error", f"{m.code}: {m.message}", status=m.status_code
                    )
                log.warning("%s: non-fatal error %s: %s", STT_PROVIDER, m.code, m.message)
            elif isinstance(m, RtSessionBegin):
                self.request_id = m.request_id
            elif isinstance(m, RtSessionEnd):
                self._ended = True
            return None
        lm = parse_legacy(raw)
        if isinstance(lm, LegacyTranscript):
            return Transcript(lm.transcript, True, lm.language_code or self._language)
        if isinstance(lm, LegacySignal):
            if lm.signal_type == "START_SPEECH":
                return SpeechStarted()
            if lm.signal_type == "END_SPEECH":
                return SpeechEnded()
            return None
        assert isinstance(lm, LegacyError)
        raise ProviderError(STT_PROVIDER, "stream_error", f"{lm.code}: {lm.error}")

    async def aclose(self) -> None:
        self._closing = True
        await _close_ws(self._ws)


class SarvamSTT:
    """Sarvam streaming STT. ``variant="realtime"`` (mu-law, partials) or ``"legacy"`` (PCM s16le)."""

    name = "sarvam"

    def __init__(
        self,
        api_key: str,
        ws_base_url: str = DEFAULT_WS_BASE,
        *,
        variant: str = "realtime",
        model: str | None = None,
        silence_duration_ms: int | None = None,
        stream_type: str = "fast",
        high_vad_sensitivity: bool = True,
        batch_ms: int = 20,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if variant not in ("realtime", "legacy"):
            raise ValueError(f"variant must be 'realtime' or 'legacy', got {variant!r}")
        self.api_key = api_key
        self.ws_base_url = ws_base_url
        self.variant = variant
        self.model = model or (DEFAULT_REALTIME_MODEL if variant == "realtime" else DEFAULT_LEGACY_MODEL)
        self.silence_duration_ms = silence_duration_ms
        self.stream_type = stream_type
        self.high_vad_sensitivity = high_vad_sensitivity
        self.batch_bytes = max(2, 16 * batch_ms)  # PCM16 at 8 kHz: 16 bytes per ms
        self.connect_timeout_s = connect_timeout_s

    def url(self, language: str) -> str:
        if self.variant == "realtime":
            return realtime_stt_url(
                self.ws_base_url,
                language,
                model=self.model,
                stream_type=self.stream_type,
                silence_duration_ms=self.silence_duration_ms,
            )
        return legacy_stt_url(
            self.ws_base_url, language, model=self.model, high_vad_sensitivity=self.high_vad_sensitivity
        )

    async def connect(self, language: str, tag: str | None = None) -> SarvamSTTStream:
        ws = await _ws_connect(
            STT_PROVIDER, self.url(language), _headers(self.api_key, tag), self.connect_timeout_s
        )
        return SarvamSTTStream(
            ws, variant=self.variant, language=normalise_language(language), batch_bytes=self.batch_bytes
        )
