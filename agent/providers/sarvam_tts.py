"""Sarvam Bulbul TTS client: websocket streaming and REST, in the call's wire format.

:class:`SarvamTTS` -> :class:`SarvamTTSStream`: one utterance per socket use, in the call's wire
format: Bulbul is asked for that codec and rate (``mulaw``/``alaw`` at 8000, ``linear16`` at the
carrier's rate) and its audio passes through untouched, no decode and re-encode on the way out.
Bulbul has no cancel message, so barge-in closes the socket; to keep the next reply off the
handshake path the provider keeps spare sockets per (language, speaker, format) connected and
configured: one warmed by tasks of the provider's own TaskGroup (``async with SarvamTTS(...) as
tts``), and each socket whose utterance completed normally goes back to the pool, up to
``max_spares`` per key (many calls in one process each need one at once). Spares are pinged every
20 s; past the first, one idle for ``spare_idle_s`` is closed, so the pool shrinks with the load.

The socket and REST plumbing it shares with the STT client (headers, connect, close, fault kinds)
is in :mod:`voxroute.agent.providers.sarvam`.
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
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from voxroute.agent.providers.base import ProviderError
from voxroute.agent.providers.sarvam import (
    DEFAULT_REST_BASE,
    DEFAULT_WS_BASE,
    TTS_PROVIDER,
    _close_ws,
    _closed_message,
    _headers,
    _ws_connect,
)
from voxroute.agent.providers.sarvam_protocol import (
    DEFAULT_TTS_MODEL,
    DEFAULT_V3_SPEAKERS,
    MAX_TTS_TEXT,
    TTS_LANGUAGES,
    SarvamProtocolError,
    TtsAudio,
    TtsError,
    TtsFinal,
    fault_kind_for_status,
    normalise_language,
    parse_rest_error,
    parse_tts,
    parse_tts_rest_response,
    retry_after_seconds,
    strip_riff,
    tts_config,
    tts_flush,
    tts_ping,
    tts_rest_body,
    tts_rest_url,
    tts_text,
    tts_ws_url,
)
from voxroute.agent.providers.wsclient import WebSocketClient
from voxroute.audio import PCM16_8K, WireFormat

log = logging.getLogger(__name__)

# Bulbul's names for the wire formats (docs/reference/sarvam.md §5: ``output_audio_codec``): mulaw and
# alaw are raw G.711, linear16 raw little-endian PCM, each at ``speech_sample_rate``.
TTS_CODECS = {"ulaw": "mulaw", "alaw": "alaw", "l16le": "linear16"}
TtsKey = tuple[str, str, WireFormat]  # (language, speaker, format): what a socket's config fixed


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
