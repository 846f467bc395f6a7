"""Sarvam speech clients: streaming STT (realtime or legacy socket) and Bulbul TTS (websocket + REST).

Thin asyncio layers over :mod:`voxroute.agent.providers.sarvam_protocol` using our lean websocket
client (:mod:`voxroute.agent.providers.wsclient`: the ``websockets`` sans-I/O protocol on an
``asyncio.Protocol``) and ``httpx``. The STT interface takes PCM16 8 kHz (and the carrier's mu-law, when it has it).

- :class:`SarvamSTT` -> :class:`SarvamSTTStream`: the realtime socket gets the caller's audio as
  mu-law 8 kHz (what Twilio sends) in ``audio_input`` messages of at least ``batch_ms`` (default
  20 ms: one message per ``send_audio`` of whole frames; the STT feed, agent/sttfeed.py, joins
  frames into batches of ``sarvam.stt_batch_ms``); the legacy socket gets PCM s16le with
  ``sample_rate=8000`` in the query.
- :class:`SarvamTTS` -> :class:`SarvamTTSStream`: one utterance per socket use, in the call's wire
  format: Bulbul is asked for that codec and rate (``mulaw``/``alaw`` at 8000, ``linear16`` at the
  carrier's rate) and its audio passes through untouched, no decode and re-encode on the way out.
  Bulbul has no cancel message, so barge-in closes the socket; to keep the next reply off the
  handshake path the provider keeps spare sockets per (language, speaker, format) connected and
  configured: one warmed by tasks of the provider's own TaskGroup (``async with SarvamTTS(...) as
  tts``), and each socket whose utterance completed normally goes back to the pool, up to
  ``max_spares`` per key (many calls in one process each need one at once). Spares are pinged every
  20 s; past the first, one idle for ``spare_idle_s`` is closed, so the pool shrinks with the load.

Every failure surfaces as :class:`~agent.providers.base.ProviderError` with a FaultKind:
handshake 401/403 -> ``http_error``, 429 -> ``http_429``, 5xx -> ``http_500``, socket dropped ->
``disconnected``, fatal error message -> ``stream_error`` (TTS errors before any audio carry the
HTTP-like kind of their code), unparsable frame -> ``malformed``, REST timeout -> ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from voxroute.agent.providers.base import ProviderError, SpeechEnded, SpeechStarted, STTEvent, Transcript
from voxroute.agent.providers.sarvam_protocol import (
    AUTH_HEADER,
    DEFAULT_LEGACY_MODEL,
    DEFAULT_REALTIME_MODEL,
    DEFAULT_TTS_MODEL,
    DEFAULT_V3_SPEAKERS,
    MAX_TTS_TEXT,
    TAG_HEADER,
    TTS_LANGUAGES,
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
    TtsAudio,
    TtsError,
    TtsFinal,
    fault_kind_for_status,
    legacy_audio,
    legacy_flush,
    legacy_stt_url,
    normalise_language,
    parse_legacy,
    parse_realtime,
    parse_rest_error,
    parse_tts,
    parse_tts_rest_response,
    realtime_stt_url,
    retry_after_seconds,
    rt_audio_input,
    rt_flush,
    strip_riff,
    tts_config,
    tts_flush,
    tts_ping,
    tts_rest_body,
    tts_rest_url,
    tts_text,
    tts_ws_url,
)
from voxroute.agent.providers.wsclient import WebSocketClient, connect
from voxroute.audio import PCM16_8K, WireFormat, pcm16_to_ulaw

log = logging.getLogger(__name__)

DEFAULT_WS_BASE = "wss://api.sarvam.ai"
DEFAULT_REST_BASE = "https://api.sarvam.ai"
STT_PROVIDER = "sarvam-stt"
TTS_PROVIDER = "sarvam-tts"
CLOSE_TIMEOUT_S = 0.5
# Bulbul's names for the wire formats (docs/reference/sarvam.md §5: ``output_audio_codec``): mulaw and
# alaw are raw G.711, linear16 raw little-endian PCM, each at ``speech_sample_rate``.
TTS_CODECS = {"ulaw": "mulaw", "alaw": "alaw", "l16le": "linear16"}
TtsKey = tuple[str, str, WireFormat]  # (language, speaker, format): what a socket's config fixed


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


# ---------------------------------------------------------------- TTS


@dataclass
class _Spare:
    ws: WebSocketClient
    since: float  # last sent to (connected, returned, or pinged)
    returned: float  # when it went back to the pool (idle since)


class _Linear16:
    """Bulbul's ``linear16`` chunks as whole PCM16 samples: a leading RIFF header dropped (the
    reference cannot say whether one comes), a chunk's odd last byte kept for the next chunk."""

    def __init__(self) -> None:
        self._first = True
        self._carry = b""

    def take(self, chunk: bytes) -> bytes:
        if self._first:
            self._first = False
            chunk = strip_riff(chunk)
        data = self._carry + chunk if self._carry else chunk
        cut = len(data) // 2 * 2
        self._carry = data[cut:]
        return data[:cut]


class SarvamTTSStream:
    """One utterance on a configured socket: text in, audio in the key's format out (Bulbul's bytes
    as they came), ``cancel()`` closes."""

    def __init__(self, provider: SarvamTTS, ws: WebSocketClient, key: TtsKey, *, warm: bool) -> None:
        self._provider = provider
        self._ws = ws
        self._key = key
        self._pcm = _Linear16() if key[2].encoding == "l16le" else None
        self.warm = warm  # True when a pre-connected socket was used (no handshake on this utterance)
        self._cancelled = False
        self._done = False
        self._got_audio = False

    def _error(self, kind: str, message: str, status: int | None = None) -> ProviderError:
        log.warning("%s: %s: %s", TTS_PROVIDER, kind, message)
        return ProviderError(TTS_PROVIDER, kind, message, status=status, after_first=self._got_audio)

    async def _send(self, msg: str) -> None:
        try:
            await self._ws.send(msg)
        except ConnectionClosed as exc:
            raise self._error("disconnected", _closed_message(exc)) from None

    async def send_text(self, text: str) -> None:
        for i in range(0, len(text), MAX_TTS_TEXT):
            await self._send(tts_text(text[i : i + MAX_TTS_TEXT]))

    async def flush(self) -> None:
        await self._send(tts_flush())

    async def audio(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    raw = await self._ws.recv()
                except ConnectionClosed as exc:
                    if self._cancelled:
                        return
                    raise self._error("disconnected", _closed_message(exc)) from None
                try:
                    m = parse_tts(raw)
                except SarvamProtocolError as exc:
                    raise self._error("malformed", str(exc)) from None
                if isinstance(m, TtsAudio):
                    audio = self._pcm.take(m.audio) if self._pcm is not None else m.audio
                    if audio:
                        self._got_audio = True
                        yield audio
                elif isinstance(m, TtsFinal):
                    self._done = True
                    return
                elif isinstance(m, TtsError):
                    if self._got_audio or m.code is None:
                        kind = "stream_error"
                    else:
                        kind = fault_kind_for_status(m.code) if m.code >= 400 else "stream_error"
                    raise self._error(kind, f"error message (code {m.code}): {m.message}", status=m.code)
        finally:
            if self._done and not self._cancelled:
                await self._provider._release(self._key, self._ws)
            elif not self._cancelled:
                self._cancelled = True  # an abandoned or failed socket is never reused
                await _close_ws(self._ws)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if not self._done:
            await _close_ws(self._ws)


class SarvamTTS:
    """Bulbul TTS over the websocket (streaming, pre-warmed) and REST (whole utterances).

    Use as ``async with SarvamTTS(...) as tts:`` to get pre-warmed sockets; without the context
    every ``open()`` connects on demand.
    """

    name = "sarvam"

    def __init__(
        self,
        api_key: str,
        ws_base_url: str = DEFAULT_WS_BASE,
        rest_base_url: str = DEFAULT_REST_BASE,
        *,
        model: str = DEFAULT_TTS_MODEL,
        speakers: dict[str, str] | None = None,
        pace: float | None = None,
        min_buffer_size: int | None = None,
        warm: bool = True,
        ping_interval_s: float = 20.0,
        max_spares: int = 64,
        spare_idle_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        rest_timeout_s: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_key = api_key
        self.ws_base_url = ws_base_url
        self.rest_base_url = rest_base_url
        self.model = model
        self.speakers = {**DEFAULT_V3_SPEAKERS, **(speakers or {})}
        self.pace = pace
        self.min_buffer_size = min_buffer_size
        self.warm_enabled = warm
        self.ping_interval_s = ping_interval_s
        self.max_spares = max_spares
        self.spare_idle_s = spare_idle_s
        self.connect_timeout_s = connect_timeout_s
        self.rest_timeout_s = rest_timeout_s
        self._http = http_client
        self._own_http = http_client is None
        self._spares: dict[TtsKey, list[_Spare]] = {}  # per key, the last returned at the end
        self._warming: set[TtsKey] = set()
        self._spare_ready: dict[TtsKey, asyncio.Event] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.handshakes = 0  # sockets this provider opened (tests and metrics)

    # -- lifecycle

    async def __aenter__(self) -> SarvamTTS:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._spawn(self._keep_spares_alive())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        try:
            if tg is not None:
                await tg.__aexit__(exc_type, exc, tb)
        finally:
            await self._close_spares()
            if self._http is not None and self._own_http:
                await self._http.aclose()
                self._http = None

    async def aclose(self) -> None:
        """Close spares and the HTTP client (the ``async with`` exit does this too)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await self._close_spares()
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    def _spawn(self, coro: Any) -> None:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_spares(self) -> None:
        spares, self._spares = [s for pool in self._spares.values() for s in pool], {}
        for spare in spares:
            await _close_ws(spare.ws)

    # -- sockets

    def _key(self, language: str, voice: str | None, fmt: WireFormat) -> TtsKey:
        lang = normalise_language(language)
        if lang not in TTS_LANGUAGES:
            raise ProviderError(TTS_PROVIDER, "http_error", f"Bulbul has no voice for language {language!r}")
        return lang, voice or self.speakers.get(lang, "shubh"), fmt

    async def _connect_configured(self, key: TtsKey, tag: str | None) -> WebSocketClient:
        url = tts_ws_url(self.ws_base_url, model=self.model, send_completion_event=True)
        self.handshakes += 1
        ws = await _ws_connect(TTS_PROVIDER, url, _headers(self.api_key, tag), self.connect_timeout_s)
        fmt = key[2]
        config = tts_config(
            key[0],
            key[1],
            model=self.model,
            sample_rate=fmt.rate,
            codec=TTS_CODECS[fmt.encoding],
            pace=self.pace,
            min_buffer_size=self.min_buffer_size,
        )
        try:
            await ws.send(config)
        except ConnectionClosed as exc:
            raise ProviderError(TTS_PROVIDER, "disconnected", _closed_message(exc)) from None
        return ws

    def _take_spare(self, key: TtsKey) -> WebSocketClient | None:
        """The most recently returned open spare of ``key`` (closed ones on the way are dropped)."""
        pool = self._spares.get(key)
        while pool:
            spare = pool.pop()
            if spare.ws.state is State.OPEN:
                return spare.ws
            spare.ws.transport.abort()
        return None

    def spares(self, language: str, voice: str | None = None, fmt: WireFormat = PCM16_8K) -> int:
        """Open spare sockets of that key."""
        pool = self._spares.get(self._key(language, voice, fmt), [])
        return sum(1 for spare in pool if spare.ws.state is State.OPEN)

    def warm_ready(self, language: str, voice: str | None = None, fmt: WireFormat = PCM16_8K) -> bool:
        return self.spares(language, voice, fmt) > 0

    async def wait_warm(self, language: str, voice: str | None = None, fmt: WireFormat = PCM16_8K) -> None:
        """Pre-warm and wait until the spare is connected (bound it with ``asyncio.timeout``)."""
        key = self._key(language, voice, fmt)
        while not self.warm_ready(language, voice, fmt):
            self._schedule_warm(key, None)
            await self._spare_ready.setdefault(key, asyncio.Event()).wait()

    def _add_spare(self, key: TtsKey, ws: WebSocketClient) -> None:
        now = time.monotonic()
        self._spares.setdefault(key, []).append(_Spare(ws, now, now))
        event = self._spare_ready.pop(key, None)
        if event is not None:
            event.set()

    def _schedule_warm(self, key: TtsKey, tag: str | None) -> None:
        if self._tg is None or self._closed or not self.warm_enabled:
            return
        if self._spares.get(key) or key in self._warming:
            return
        self._warming.add(key)
        self._spawn(self._warm_up(key, tag))

    async def _warm_up(self, key: TtsKey, tag: str | None) -> None:
        try:
            ws = await self._connect_configured(key, tag)
        except ProviderError as exc:
            log.info("%s: warm-up for %s failed: %s", TTS_PROVIDER, key, exc)
            return
        except Exception:  # a warm-up must never take down the provider's task group
            log.exception("%s: warm-up for %s crashed", TTS_PROVIDER, key)
            return
        finally:
            self._warming.discard(key)
        if self._closed or self._spares.get(key):
            await _close_ws(ws)
        else:
            self._add_spare(key, ws)

    async def _release(self, key: TtsKey, ws: WebSocketClient) -> None:
        """An utterance completed: its configured socket goes back to the pool, if there is room."""
        if not self._closed and self._tg is not None and self.warm_enabled and ws.state is State.OPEN:
            if len(self._spares.get(key, ())) < self.max_spares:
                self._add_spare(key, ws)
                return
        await _close_ws(ws)

    def idle_spares(self, now: float) -> list[_Spare]:
        """Take out of the pool the spares idle for ``spare_idle_s`` at ``now`` (monotonic s), past
        the most recently returned one of each key: the pool shrinks when the load does."""
        idle: list[_Spare] = []
        for pool in self._spares.values():
            keep = pool[-1:]
            for spare in pool[:-1]:
                (idle if now - spare.returned >= self.spare_idle_s else keep).append(spare)
            pool[:] = keep
        return idle

    async def _keep_spares_alive(self) -> None:
        """Bulbul closes a socket idle for ~60 s; ping spares every ``ping_interval_s``. Past the
        most recently returned one, a spare idle for ``spare_idle_s`` is closed."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            now = time.monotonic()
            for spare in self.idle_spares(now):
                await _close_ws(spare.ws)
            for key, pool in list(self._spares.items()):
                for spare in list(pool):
                    try:
                        if spare.ws.state is not State.OPEN:
                            raise ConnectionError("spare socket closed")
                        if now - spare.since >= self.ping_interval_s * 0.9:
                            await spare.ws.send(tts_ping())
                            spare.since = now
                    except (ConnectionClosed, ConnectionError, OSError) as exc:
                        log.info("%s: dropping spare socket for %s: %r", TTS_PROVIDER, key, exc)
                        if spare in pool:
                            pool.remove(spare)
                        spare.ws.transport.abort()

    # -- the TTSProvider interface

    async def open(
        self, language: str, voice: str | None = None, tag: str | None = None, fmt: WireFormat = PCM16_8K
    ) -> SarvamTTSStream:
        key = self._key(language, voice, fmt)
        ws = self._take_spare(key)
        warm = ws is not None
        if ws is None:
            ws = await self._connect_configured(key, tag)
        self._schedule_warm(key, tag)
        return SarvamTTSStream(self, ws, key, warm=warm)

    async def synthesize(
        self,
        text: str,
        language: str,
        voice: str | None = None,
        tag: str | None = None,
        fmt: WireFormat = PCM16_8K,
    ) -> bytes:
        key = self._key(language, voice, fmt)
        if self._http is None:
            self._http = httpx.AsyncClient()
            self._own_http = True
        body = tts_rest_body(
            text[:MAX_TTS_TEXT],
            key[0],
            key[1],
            model=self.model,
            sample_rate=fmt.rate,
            codec=TTS_CODECS[fmt.encoding],
            pace=self.pace,
        )
        try:
            resp = await self._http.post(
                tts_rest_url(self.rest_base_url),
                json=body,
                headers=_headers(self.api_key, tag),
                timeout=self.rest_timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise ProviderError(TTS_PROVIDER, "timeout", f"REST TTS timed out: {exc!r}") from None
        except httpx.TransportError as exc:
            raise ProviderError(
                TTS_PROVIDER, "disconnected", f"REST TTS connection failed: {exc!r}"
            ) from None
        if resp.status_code != 200:
            err = parse_rest_error(resp.content)
            log.warning("%s: REST HTTP %d %s: %s", TTS_PROVIDER, resp.status_code, err.code, err.message)
            raise ProviderError(
                TTS_PROVIDER,
                fault_kind_for_status(resp.status_code),
                f"HTTP {resp.status_code} {err.code or ''}: {err.message}",
                status=resp.status_code,
                retry_after_s=retry_after_seconds(resp.headers),
            )
        try:
            result = parse_tts_rest_response(resp.content)
        except SarvamProtocolError as exc:
            log.warning("%s: malformed REST response: %s", TTS_PROVIDER, exc)
            raise ProviderError(TTS_PROVIDER, "malformed", str(exc)) from None
        if fmt.encoding == "l16le":
            return _Linear16().take(result.audio)
        return result.audio
