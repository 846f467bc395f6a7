"""Loopback emulators of Sarvam's speech APIs, speaking the real wire protocols.

- :func:`create_stt_app`: ``WS /speech-to-text-realtime/ws`` (realtime: mu-law 8 kHz, partials,
  VAD events), ``WS /speech-to-text/ws`` (legacy: PCM s16le, START/END_SPEECH, one ``data`` per
  segment) and a minimal ``WS /speech-to-text-translate/ws``. Transcripts come from fixture
  scripts (:mod:`voxroute.emulators.transcripts`); unknown audio gives ``(unrecognised speech)``. A call
  whose utterances were registered (``POST /_emulator/transcripts``, below) gets those words by
  timing instead, whatever its audio.
- :func:`create_tts_app`: ``POST /text-to-speech`` and ``WS /text-to-speech/ws``. The "speech"
  is a soft two-tone pattern, about 65 ms per character (at least 300 ms); ``voice_speed`` (2.0:
  twice as fast, half the audio per character) shortens it for tests where how long the agent
  speaks is not what they check.
- :func:`create_app`: both on one host, like ``api.sarvam.ai`` (one base URL for the SDK).

Both apps take a :class:`~emulators.profiles.Dice` for latency and faults, require the
``api-subscription-key`` header (403 ``invalid_api_key_error`` otherwise), and serve
``GET /_emulator/faults`` (every injected fault, attributed with the client's ``X-Voxroute-Tag``
header), ``POST /_emulator/force`` (``{"service", "fault"}`` -> ``dice.force``) and
``GET /_emulator/stats`` (handshake counts, which connection served each TTS utterance). The STT
app also serves ``POST /_emulator/transcripts`` (``{"call_sid", "utterances": [...]}``, a
:func:`~emulators.transcripts.timed_plan` as JSON: the replayer's words for one call of a fixture
marked ``stt: transcripts``) and ``DELETE /_emulator/transcripts/{call_sid}`` (forget it; the
answer says how many finals and whole utterances were said). A connection belongs to the call its
``X-Voxroute-Tag`` names: the runtime tags its STT sockets ``<call sid>:stt``. The wire protocol
of the STT sockets is Sarvam's either way.

Choices where the docs disagree (reference §9): the TTS socket defaults to ``model=bulbul:v3``
and ``send_completion_event=false``; realtime STT defaults to ``encoding=linear16`` at 16 kHz.
Odia is accepted as both ``od-IN`` and ``or-IN`` everywhere; the legacy socket requires the
hyphenated ``language-code`` key. Time in the STT VAD is audio time (bytes received), so a
client streaming faster than real time sees the same segmentation; the final is sent
``max(silence window, profile.stt_final_s)`` after the last voiced frame.

Start standalone: ``python -m voxroute.emulators.sarvam --fixtures fixtures/audio --profile reference --port 8100``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import functools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

from voxroute.agent.providers import sarvam_protocol as wire
from voxroute.audio import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from voxroute.emulators.profiles import Dice, FaultRecord
from voxroute.emulators.recent import Recent, remember
from voxroute.emulators.transcripts import (
    SegmentEnded,
    SegmentStarted,
    TimedTranscripts,
    TimedTranscriptSession,
    TranscriptLibrary,
    TranscriptSession,
    VadSegmenter,
    parse_plan,
)

log = logging.getLogger(__name__)

TAG_HEADER = "x-voxroute-tag"
KEY_HEADER = "api-subscription-key"

# Both spellings of Odia are accepted by the emulator (reference §9); the codes are the client's.
STT_LANGUAGES = set(wire.STT_LANGUAGES) | {"or-IN"}
TTS_LANGUAGES = set(wire.TTS_LANGUAGES)
V2_SPEAKERS = {"anushka", "manisha", "vidya", "arya", "abhilash", "karun", "hitesh"}
V3_SPEAKERS = set(
    "shubh aditya ritu priya neha rahul pooja rohan simran kavya amit dev ishita shreya ratan varun manan sumit "
    "roopa kabir aayan ashutosh advait anand tanya tarun sunny mani gokul vijay shruti suhani mohit kavitha "
    "rehan soham rupali".split()
)
TTS_MODELS = {"bulbul:v2", "bulbul:v3", "bulbul:v4-flash"}
TTS_RATES = {8000, 16000, 22050, 24000}
TTS_REST_RATES = TTS_RATES | {32000, 44100, 48000}
EMULATED_CODECS = {"mulaw", "alaw", "linear16", "wav"}
ALL_CODECS = EMULATED_CODECS | {"mp3", "flac", "aac", "opus"}
REALTIME_MODELS = {"saaras:v3-realtime", "saaras:v4"}
LEGACY_MODELS = {"saaras:v4", "saaras:v3", "saarika:v2.5", "saarika:v2", "saaras:v2.5"}
STT_MODES = {"transcribe", "translate", "verbatim", "translit", "codemix"}
MS_PER_CHAR = 65  # synthetic speech per character of text
MIN_VOICE_MS = 300  # the shortest reply the emulated voice speaks
MAX_TIMED_CALLS = 10_000  # registered calls kept at once (the oldest go first)


def request_id() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%d}_{uuid.uuid4()}"


def error_envelope(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "code": code, "request_id": request_id()}}, status_code=status
    )


class EmulatorState:
    """What one emulator app remembers: the dice, the expected key, injected faults, counters."""

    def __init__(self, dice: Dice, api_key: str | None) -> None:
        self.dice = dice
        self.api_key = api_key
        self.faults: list[FaultRecord] = Recent()
        self.handshakes: Counter[str] = Counter()
        self.tts_utterances: list[dict[str, Any]] = (
            Recent()
        )  # per socket utterance: conn, tag, fault, codec, rate
        self.tts_rest: list[dict[str, Any]] = Recent()  # per valid REST request: tag, codec, rate
        self.timed: dict[str, TimedTranscripts] = {}  # call SID -> its words, by timing

    def record(self, service: str, fault: str, tag: str | None) -> None:
        log.info("emulator: injecting %s on %s (tag %s)", fault, service, tag)
        self.faults.append(FaultRecord(service, fault, tag, time.monotonic()))

    def key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        return self.api_key is None or key == self.api_key


def _add_control_routes(app: FastAPI, state: EmulatorState) -> None:
    @app.get("/_emulator/faults")
    async def faults() -> list[dict]:
        return [f.as_dict() for f in state.faults]

    @app.post("/_emulator/force")
    async def force(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            state.dice.force(str(body["service"]), str(body["fault"]))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad force request: {exc}"}, status_code=400)
        return JSONResponse({"ok": True})

    @app.get("/_emulator/stats")
    async def stats() -> dict:
        return {"handshakes": dict(state.handshakes), "tts_utterances": state.tts_utterances}


def _add_transcript_routes(app: FastAPI, state: EmulatorState) -> None:
    @app.post("/_emulator/transcripts")
    async def register(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            call_sid = body.get("call_sid")
            if not isinstance(call_sid, str) or not 0 < len(call_sid) <= 128:
                raise ValueError("call_sid must be a string of 1-128 characters")
            plan = parse_plan(body.get("utterances"))
        except ValueError as exc:
            log.info("emulator stt: bad transcripts registration: %s", exc)
            return JSONResponse({"error": f"bad transcripts registration: {exc}"}, status_code=400)
        state.timed.pop(call_sid, None)
        while len(state.timed) >= MAX_TIMED_CALLS:
            state.timed.pop(next(iter(state.timed)))
        remember(state.timed, call_sid, TimedTranscripts(plan))
        return JSONResponse({"ok": True, "utterances": len(plan)})

    @app.delete("/_emulator/transcripts/{call_sid}")
    async def forget(call_sid: str) -> JSONResponse:
        plan = state.timed.pop(call_sid, None)
        if plan is None:
            return JSONResponse({"error": f"no transcripts registered for {call_sid!r}"}, status_code=404)
        return JSONResponse({"ok": True, "utterances": len(plan.utterances), "said": plan.said,
                             "finals": plan.finals})  # fmt: skip


async def _ws_auth(ws: WebSocket, state: EmulatorState, allow_subprotocol: bool = False) -> str | None | bool:
    """Check the key before accepting. Returns the subprotocol to echo (or None), False if refused."""
    key = ws.headers.get(KEY_HEADER)
    subprotocol = None
    if not key and allow_subprotocol:
        for proto in ws.scope.get("subprotocols", []):
            if proto.lower().startswith(KEY_HEADER + "."):
                key, subprotocol = proto[len(KEY_HEADER) + 1 :], proto
    if "api_subscription_key" in ws.query_params or KEY_HEADER in ws.query_params:
        log.warning("emulator: API key in the query string refused")
        key = None
    if not state.key_ok(key):
        log.info("emulator: websocket handshake refused (missing or invalid key)")
        await ws.send_denial_response(
            error_envelope(403, "invalid_api_key_error", "Invalid API subscription key")
        )
        return False
    return subprotocol


# ---------------------------------------------------------------- audio helpers


def _decimate2(pcm: bytes) -> bytes:
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2")[::2].tobytes()


def to_ulaw8k(raw: bytes, encoding: str, sample_rate: int) -> bytes:
    """Whatever a client declared -> 8 kHz mu-law, what the VAD and the transcript matcher use."""
    if encoding == "mulaw" and sample_rate == 8000:
        return raw
    if encoding == "mulaw":
        pcm = ulaw_to_pcm16(raw)
    elif encoding == "alaw":
        pcm = alaw_to_pcm16(raw)
    elif encoding == "linear32":
        pcm = (np.frombuffer(raw[: len(raw) // 4 * 4], "<i4") >> 16).astype("<i2").tobytes()
    else:
        pcm = raw[: len(raw) // 2 * 2]
    if sample_rate == 16000:
        pcm = _decimate2(pcm)
    return pcm16_to_ulaw(pcm)


def strip_riff(audio: bytes) -> bytes:
    if len(audio) >= 12 and audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(audio):
            size = int.from_bytes(audio[pos + 4 : pos + 8], "little")
            if audio[pos : pos + 4] == b"data":
                return audio[pos + 8 : pos + 8 + size]
            pos += 8 + size + (size & 1)
        return b""
    return audio


def synth_pcm(text: str, rate: int, *, ms_per_char: float = MS_PER_CHAR, min_ms: int = MIN_VOICE_MS) -> bytes:
    """A soft, clearly non-silent two-tone "voice" whose length follows the text."""
    return _tone(*_tone_of(text, rate, ms_per_char, min_ms))


def synth_chunks(
    text: str, rate: int, codec: str, chunk_s: float, *, ms_per_char: float = MS_PER_CHAR
) -> tuple[str, ...]:
    """``synth_pcm(text)`` cut into ``chunk_s`` pieces, each encoded in ``codec`` and base64: the
    streaming socket's audio messages. Made once per length, rate, pitch, codec and chunk size (at
    hundreds of calls, encoding every chunk of every reply was a fifth of the emulator's CPU)."""
    return _chunks(*_tone_of(text, rate, ms_per_char, MIN_VOICE_MS), codec, int(chunk_s * rate) * 2)


def _tone_of(text: str, rate: int, ms_per_char: float, min_ms: int) -> tuple[int, int, int]:
    dur_s = max(min_ms, ms_per_char * len(text)) / 1000
    return int(dur_s * rate), rate, len(text) % 5


@functools.lru_cache(maxsize=256)
def _chunks(n: int, rate: int, pitch: int, codec: str, step: int) -> tuple[str, ...]:
    pcm = _tone(n, rate, pitch)
    pieces = (encode_audio(pcm[i : i + step], codec, rate) for i in range(0, len(pcm), step))
    return tuple(base64.b64encode(piece).decode("ascii") for piece in pieces)


@functools.lru_cache(maxsize=256)
def _tone(n: int, rate: int, pitch: int) -> bytes:
    """``synth_pcm``'s audio: a function of its length, rate and pitch only, so the emulator makes
    each once (at hundreds of calls, making it for every chunk was a sixth of its CPU)."""
    t = np.arange(n) / rate
    syllables = 0.35 + 0.65 * np.abs(np.sin(np.pi * 4.0 * t))  # ~8 "syllables" per second
    f0 = 180.0 + 20.0 * pitch
    sig = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 1.5 * f0 * t)
    fade = np.minimum(1.0, np.minimum(t, t[::-1] if n else t) / 0.02)
    return (3000.0 * sig * syllables * fade).astype("<i2").tobytes()


def encode_audio(pcm: bytes, codec: str, rate: int) -> bytes:
    if codec == "mulaw":
        return pcm16_to_ulaw(pcm)
    if codec == "alaw":
        return pcm16_to_alaw(pcm)
    if codec == "wav":
        import struct

        fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
        body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
        return b"RIFF" + struct.pack("<I", len(body)) + body
    return pcm  # linear16: raw little-endian


def _bool(value: str | None, default: bool) -> bool | None:
    if value is None:
        return default
    v = value.lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    return None


# ---------------------------------------------------------------- STT


@dataclass
class _SttConfig:
    flavour: str  # realtime | legacy | translate
    language: str
    model: str
    sample_rate: int
    encoding: str  # realtime: declared encoding; legacy: always linear16
    silence_ms: int
    stream_type: str = "balanced"
    endpointing: str = "vad"
    mode: str = "transcribe"
    vad_signals: bool = False
    flush_signal: bool = False
    return_timestamps: bool = False


def _int_param(q: Any, key: str, default: int | None, lo: int = 0, hi: int = 10**6) -> int | None | str:
    v = q.get(key)
    if v is None:
        return default
    try:
        iv = int(v)
    except ValueError:
        return f"{key} must be an integer, got {v!r}"
    if not lo <= iv <= hi:
        return f"{key} out of range: {iv}"
    return iv


class _BadQuery(ValueError):
    """A query parameter the real socket would refuse; the message is what the client is told."""


def _one_of(q: Any, key: str, default: str, allowed: Any, complaint: str = "invalid") -> str:
    value = q.get(key, default)
    if value not in allowed:
        raise _BadQuery(f"{complaint} {key} {value!r}")
    return value


def _sample_rate(q: Any) -> int:
    sr = q.get("sample_rate", "16000")
    if sr not in ("8000", "16000"):
        raise _BadQuery(f"sample_rate must be 8000 or 16000, got {sr!r}")
    return int(sr)


def _realtime_config(q: Any) -> _SttConfig | str:
    try:
        lang = q.get("language_code")
        if lang is None:
            return "language_code is required"
        if lang != "auto" and lang not in STT_LANGUAGES:
            return f"unsupported language_code {lang!r}"
        model = _one_of(q, "model", "saaras:v3-realtime", REALTIME_MODELS)
        sr = _sample_rate(q)
        enc = _one_of(q, "encoding", "linear16", ("linear16", "linear32", "mulaw", "alaw"), "unsupported")
        stream_type = _one_of(q, "stream_type", "balanced", ("fast", "balanced", "simulated"))
        endpointing = _one_of(q, "endpointing", "vad", ("vad", "manual"))
        mode = _one_of(q, "mode", "transcribe", STT_MODES)
    except _BadQuery as exc:
        return str(exc)
    silence = _int_param(q, "silence_duration_ms", 200, 0, 10_000)
    if isinstance(silence, str):
        return silence
    ts = _bool(q.get("return_timestamps"), False)
    if ts is None:
        return "return_timestamps must be true or false"
    return _SttConfig(
        "realtime",
        lang,
        model,
        sr,
        enc,
        int(silence or 0),
        stream_type,
        endpointing,
        mode,
        return_timestamps=ts,
    )


def _legacy_config(q: Any, translate: bool) -> _SttConfig | str:
    if translate:
        lang = "unknown"
        default_model = "saaras:v2.5"
    else:
        lang = q.get("language-code")
        if lang is None:
            if "language_code" in q:
                return "language-code is required on this socket (with a hyphen, not language_code)"
            return "language-code is required"
        if lang != "unknown" and lang not in STT_LANGUAGES:
            return f"unsupported language-code {lang!r}"
        default_model = "saaras:v4"
    try:
        model = _one_of(q, "model", default_model, LEGACY_MODELS)
        sr = _sample_rate(q)
        _one_of(
            q, "input_audio_codec", "pcm_s16le", ("wav", "pcm_s16le", "pcm_l16", "pcm_raw"), "unsupported"
        )
        flags = {}
        for key in ("high_vad_sensitivity", "vad_signals", "flush_signal"):
            b = _bool(q.get(key), False)
            if b is None:
                return f"{key} must be true or false"
            flags[key] = b
        mode = _one_of(q, "mode", "transcribe", STT_MODES)
    except _BadQuery as exc:
        return str(exc)
    silence = 200 if flags["high_vad_sensitivity"] else 1000
    return _SttConfig(
        "translate" if translate else "legacy",
        lang,
        model,
        sr,
        "linear16",
        silence,
        mode=mode,
        vad_signals=flags["vad_signals"],
        flush_signal=flags["flush_signal"],
    )


def _our_language(code: str | None) -> str | None:
    if code in (None, "auto", "unknown"):
        return None
    return "od-IN" if code == "or-IN" else code


class _SttConnection:
    """One STT socket: feed audio to the VAD, schedule finals, speak the flavour's message format."""

    IDLE_END_S = 1.0  # in speech and nothing received for this long (wall time): end of speech

    def __init__(
        self,
        ws: WebSocket,
        cfg: _SttConfig,
        library: TranscriptLibrary,
        state: EmulatorState,
        tag: str | None,
    ) -> None:
        self.ws = ws
        self.cfg = cfg
        self.state = state
        self.dice = state.dice
        self.tag = tag
        self.vad = VadSegmenter(silence_ms=cfg.silence_ms)
        self.session = TranscriptSession(library, _our_language(cfg.language))
        self.call_sid = tag.rpartition(":")[0] or tag if tag else None  # the runtime's tag: "<sid>:stt"
        self.timed: TimedTranscriptSession | None = None  # the call's registered words, once found
        self.request_id = request_id()
        self.utt_idx = 0
        # (due monotonic, message, what to do once sent) finals waiting for latency
        self.pending: list[tuple[float, dict, Callable[[], None] | None]] = []
        self.next_partial_s = 0.0
        self.last_partial = ""
        self.manual: bytearray | None = None
        self.started = time.monotonic()
        self.utterances = 0
        self.drop_after_s: float | None = None
        if self.dice.socket_drop("stt"):
            self.drop_after_s = self.dice.rng.uniform(0.5, 8.0)  # seconds of audio into the call

    @property
    def realtime(self) -> bool:
        return self.cfg.flavour == "realtime"

    def _find_timed(self) -> TimedTranscriptSession | None:
        """The call's registered words (looked up at each speech start until found)."""
        if self.timed is None and self.call_sid is not None:
            plan = self.state.timed.get(self.call_sid)
            if plan is not None:
                self.timed = plan.session(_our_language(self.cfg.language))
        return self.timed

    async def send(self, msg: dict) -> None:
        await self.ws.send_text(json.dumps(msg, ensure_ascii=False))

    # -- message builders per flavour

    def _final_msg(self, text: str, language: str | None, audio_s: float) -> dict:
        if self.realtime:
            msg: dict[str, Any] = {"event": "transcript.final", "utterance_idx": self.utt_idx, "text": text}
            if self.cfg.language == "auto":
                msg["language"] = language or "en-IN"
                msg["language_confidence"] = 0.97
            return msg
        detect = self.cfg.language == "unknown"
        return {
            "type": "data",
            "data": {
                "request_id": self.request_id,
                "transcript": text,
                "timestamps": None,
                "diarized_transcript": None,
                "language_code": language or _our_language(self.cfg.language) or "en-IN",
                "language_probability": 0.97 if detect else None,
                "metrics": {
                    "audio_duration": round(audio_s, 3),
                    "processing_latency": self.dice.profile.stt_final_s,
                },
            },
        }

    def _signal(self, kind: str) -> dict:
        return {"type": "events", "data": {"signal_type": kind, "occured_at": time.time()}}

    async def _error(self, code: str, message: str, fatal: bool, status: int | None = None) -> None:
        if self.realtime:
            msg: dict[str, Any] = {"event": "error", "code": code, "is_fatal": fatal, "message": message}
            if fatal and status is not None:
                msg["status_code"] = status
        else:
            msg = {"type": "error", "data": {"error": message, "code": code}}
        await self.send(msg)

    # -- VAD results

    async def _speech_started(self, at_s: float) -> None:
        self.next_partial_s = self.dice.profile.stt_partial_every_s
        self.last_partial = ""
        timed = self._find_timed()
        if timed is not None:
            timed.begin(at_s)
        if self.realtime and self.cfg.endpointing == "vad":
            await self.send({"event": "vad.speech_start", "utterance_idx": self.utt_idx, "confidence": 0.93})
        elif not self.realtime and self.cfg.vad_signals:
            await self.send(self._signal("START_SPEECH"))

    async def _speech_ended(self, audio: bytes, now: bool, end_s: float) -> None:
        """A segment is complete: VAD end (final after the latency) or flush (final now).
        ``end_s``: audio time of the end of its last voiced frame."""
        commit = None
        timed = self._find_timed()
        if timed is not None:
            text, language = timed.final(audio, end_s)
            commit = timed.checkpoint()
        else:
            text, language = self.session.final(audio)
        if self.realtime and self.cfg.endpointing == "vad":
            await self.send({"event": "vad.speech_end", "utterance_idx": self.utt_idx, "confidence": 0.88})
        elif not self.realtime and self.cfg.vad_signals:
            await self.send(self._signal("END_SPEECH"))
        msg = self._final_msg(text, language, len(audio) / 8000)
        self.utt_idx += 1
        self.utterances += 1
        delay = 0.0 if now else max(0.0, self.dice.profile.stt_final_s - self.cfg.silence_ms / 1000)
        self.pending.append((time.monotonic() + delay, msg, commit))
        if now:
            await self._send_due(force=True)

    async def _send_due(self, force: bool = False) -> None:
        now = time.monotonic()
        while self.pending and (force or self.pending[0][0] <= now):
            _, msg, commit = self.pending.pop(0)
            await self.send(msg)
            if commit is not None:
                commit()  # sent: a replacement connection carries on after these words

    async def _partial(self) -> None:
        every = self.dice.profile.stt_partial_every_s
        if not self.realtime or self.cfg.stream_type == "simulated" or every <= 0 or not self.vad.in_speech:
            return
        if self.vad.speech_s < self.next_partial_s:
            return
        while self.next_partial_s <= self.vad.speech_s:
            self.next_partial_s += every
        got = (self.timed or self.session).partial(self.vad.current())
        if got and got[0] != self.last_partial:
            self.last_partial = got[0]
            msg: dict[str, Any] = {
                "event": "transcript.partial",
                "utterance_idx": self.utt_idx,
                "text": got[0],
            }
            if self.cfg.language == "auto":
                msg["language"] = got[1] or "en-IN"
            await self.send(msg)

    async def _audio(self, ulaw: bytes) -> None:
        if self.manual is not None:
            self.manual += ulaw
        for ev in self.vad.feed(ulaw):
            if self.cfg.endpointing == "manual":
                continue
            if isinstance(ev, SegmentStarted):
                await self._speech_started(ev.at_s)
            elif isinstance(ev, SegmentEnded):
                await self._speech_ended(ev.audio, now=False, end_s=ev.at_s)
        if self.cfg.endpointing == "vad":
            await self._partial()

    async def _finalise_now(self) -> None:
        if self.cfg.endpointing == "manual":
            if self.manual:
                await self._speech_ended(bytes(self.manual), now=True, end_s=self.vad.audio_s)
            self.manual = None
            return
        seg = self.vad.force_end()
        if seg is not None:
            await self._speech_ended(seg.audio, now=True, end_s=seg.at_s)
        else:
            await self._send_due(force=True)

    # -- the loop

    async def run(self) -> None:
        if self.realtime:
            await self.send(
                {
                    "event": "session.begin",
                    "request_id": self.request_id,
                    "config": {
                        "model": self.cfg.model,
                        "language_code": self.cfg.language,
                        "encoding": self.cfg.encoding,
                        "sample_rate": self.cfg.sample_rate,
                        "stream_type": self.cfg.stream_type,
                        "mode": self.cfg.mode,
                        "prompt": None,
                        "turn_detection": self.cfg.endpointing,
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": self.cfg.silence_ms,
                        "min_speech_duration_ms": 0,
                        "return_timestamps": self.cfg.return_timestamps,
                    },
                }
            )
        last_rx = time.monotonic()
        while True:
            now = time.monotonic()
            waits = [self.pending[0][0] - now] if self.pending else []
            if self.vad.in_speech and self.cfg.endpointing == "vad":
                waits.append(last_rx + self.IDLE_END_S - now)
            try:
                async with asyncio.timeout(max(0.0, min(waits)) if waits else None):
                    message = await self.ws.receive()
            except TimeoutError:
                await self._send_due()
                if self.vad.in_speech and time.monotonic() - last_rx >= self.IDLE_END_S:
                    seg = self.vad.force_end()
                    if seg is not None:
                        await self._speech_ended(seg.audio, now=False, end_s=seg.at_s)
                continue
            last_rx = time.monotonic()
            if message["type"] == "websocket.disconnect":
                return
            await self._send_due()
            if not await self._handle(message):
                return
            if self.drop_after_s is not None and self.vad.audio_s >= self.drop_after_s:
                self.state.record("stt", "drop", self.tag)
                await self.ws.close(code=1011, reason="internal error")
                return

    async def _handle(self, message: dict) -> bool:
        """Handle one frame; False ends the connection."""
        text = message.get("text")
        if text is None:
            await self._error("invalid_message", "binary frames are not accepted; send JSON", fatal=False)
            return True
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except ValueError:
            log.info("emulator stt: malformed client message %r", text[:80])
            await self._error("invalid_message", "message is not a JSON object", fatal=False)
            return True
        if self.realtime:
            return await self._handle_realtime(obj)
        return await self._handle_legacy(obj)

    async def _handle_realtime(self, obj: dict) -> bool:
        event = obj.get("event")
        if event == "audio_input":
            raw = _b64(obj.get("audio"))
            if raw is None:
                await self._error("invalid_audio", "audio must be a base64 string", fatal=False)
                return True
            await self._audio(to_ulaw8k(raw, self.cfg.encoding, self.cfg.sample_rate))
        elif event == "flush":
            await self._finalise_now()
        elif event == "speech_start":
            if self.cfg.endpointing == "manual":
                self.manual = bytearray()
                timed = self._find_timed()
                if timed is not None:
                    timed.begin(self.vad.audio_s)
        elif event == "speech_end":
            if self.cfg.endpointing == "manual":
                await self._finalise_now()
        elif event == "ping":
            await self.send({"event": "pong"})
        elif event == "config.update":
            await self._config_update(obj)
        elif event == "end":
            await self._finalise_now()
            await self.send(
                {
                    "event": "session.end",
                    "request_id": self.request_id,
                    "total_duration_s": round(time.monotonic() - self.started, 3),
                    "total_utterances": self.utterances,
                    "audio_duration_s": round(self.vad.audio_s, 3),
                }
            )
            await self.ws.close(code=1000)
            return False
        else:
            await self._error("invalid_message", f"unknown event {event!r}", fatal=False)
        return True

    async def _config_update(self, obj: dict) -> None:
        applied = []
        st = obj.get("stream_type")
        if st is not None and (
            st not in ("fast", "balanced", "simulated")
            or (st == "simulated") != (self.cfg.stream_type == "simulated")
        ):
            await self._error("invalid_config", "stream_type cannot change to or from simulated", fatal=False)
            return
        lang = obj.get("language_code")
        if lang is not None and lang != "auto" and lang not in STT_LANGUAGES:
            await self._error("invalid_config", f"unsupported language_code {lang!r}", fatal=False)
            return
        sil = obj.get("silence_duration_ms")
        if sil is not None and (not isinstance(sil, int) or isinstance(sil, bool) or sil < 0):
            await self._error(
                "invalid_config", "silence_duration_ms must be a non-negative integer", fatal=False
            )
            return
        for key in ("language_code", "prompt", "mode", "stream_type", "endpointing", "threshold",
                    "silence_duration_ms", "min_speech_duration_ms"):  # fmt: skip
            if key in obj and obj[key] is not None:
                applied.append(key)
        if lang is not None:
            self.cfg.language = lang
            self.session.default_language = _our_language(lang)
            if self.timed is not None:
                self.timed.default_language = _our_language(lang)
        if st is not None:
            self.cfg.stream_type = st
        if sil is not None:
            self.cfg.silence_ms = sil
            self.vad.set_silence_ms(sil)
        await self.send({"event": "config.updated", "applied": applied})

    async def _handle_legacy(self, obj: dict) -> bool:
        typ = obj.get("type")
        if "audio" in obj and typ in (None, "audio"):
            audio = obj.get("audio")
            raw = _b64(audio.get("data")) if isinstance(audio, dict) else None
            if raw is None:
                await self._error("invalid_request", "audio.data must be base64", fatal=True)
                await self.ws.close(code=4000, reason="invalid audio")
                return False
            pcm = strip_riff(raw)
            await self._audio(to_ulaw8k(pcm, "linear16", self.cfg.sample_rate))
        elif typ == "flush":
            if self.cfg.flush_signal:
                await self._finalise_now()
        elif typ in ("config", "end_of_stream"):
            pass  # accepted; the prompt does not change what the emulator "hears"
        else:
            await self._error("invalid_request", f"unknown message type {typ!r}", fatal=True)
            await self.ws.close(code=4000, reason="invalid message")
            return False
        return True


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def create_stt_app(library: TranscriptLibrary, dice: Dice, *, api_key: str | None = None) -> FastAPI:
    """The STT emulator: realtime, legacy and translate sockets over one transcript library."""
    app = FastAPI(title="sarvam-stt-emulator")
    state = EmulatorState(dice, api_key)
    app.state.emulator = state
    _add_control_routes(app, state)
    _add_transcript_routes(app, state)
    add_stt_routes(app, library, state)
    return app


def create_app(
    library: TranscriptLibrary,
    dice: Dice,
    *,
    api_key: str | None = None,
    pace: float = 1.25,
    idle_timeout_s: float = 60.0,
    hang_s: float = 30.0,
    voice_speed: float = 1.0,
) -> FastAPI:
    """STT and TTS on one host, as ``api.sarvam.ai`` is (one fault log, one set of counters)."""
    app = FastAPI(title="sarvam-emulator")
    state = EmulatorState(dice, api_key)
    app.state.emulator = state
    _add_control_routes(app, state)
    _add_transcript_routes(app, state)
    add_stt_routes(app, library, state)
    add_tts_routes(
        app, state, pace=pace, idle_timeout_s=idle_timeout_s, hang_s=hang_s, voice_speed=voice_speed
    )
    return app


def add_stt_routes(app: FastAPI, library: TranscriptLibrary, state: EmulatorState) -> None:
    library.build()  # index once at start-up, not inside the first call

    async def serve(ws: WebSocket, flavour: str) -> None:
        subprotocol = await _ws_auth(ws, state, allow_subprotocol=flavour == "realtime")
        if subprotocol is False:
            return
        state.handshakes[f"stt_{flavour}"] += 1
        tag = ws.headers.get(TAG_HEADER)
        await ws.accept(subprotocol=subprotocol or None)
        cfg = (
            _realtime_config(ws.query_params)
            if flavour == "realtime"
            else _legacy_config(ws.query_params, flavour == "translate")
        )
        try:
            if isinstance(cfg, str):
                log.info("emulator stt: rejecting %s socket: %s", flavour, cfg)
                if flavour == "realtime":
                    msg: dict = {"event": "error", "code": "invalid_request", "is_fatal": True, "message": cfg,
                                 "status_code": 400}  # fmt: skip
                else:
                    msg = {"type": "error", "data": {"error": cfg, "code": "invalid_request"}}
                await ws.send_text(json.dumps(msg))
                await ws.close(code=4000, reason=cfg[:123])
                return
            await _SttConnection(ws, cfg, library, state, tag).run()
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            log.debug("emulator stt: %s socket ended: %r", flavour, exc)
        except Exception:  # a bug or odd input must cost one socket, never the server
            log.exception("emulator stt: %s socket failed", flavour)
            with contextlib.suppress(Exception):
                await ws.close(code=1011, reason="internal error")

    @app.websocket("/speech-to-text-realtime/ws")
    async def realtime(ws: WebSocket) -> None:
        await serve(ws, "realtime")

    @app.websocket("/speech-to-text/ws")
    async def legacy(ws: WebSocket) -> None:
        await serve(ws, "legacy")

    @app.websocket("/speech-to-text-translate/ws")
    async def translate(ws: WebSocket) -> None:
        await serve(ws, "translate")


# ---------------------------------------------------------------- TTS


def _valid_speaker(model: str, speaker: str) -> bool:
    if model == "bulbul:v2":
        return speaker in V2_SPEAKERS
    if model == "bulbul:v4-flash":
        return speaker.count("_") >= 2 and speaker == speaker.lower()
    return speaker in V3_SPEAKERS


@dataclass
class _TtsConfig:
    model: str
    language: str
    speaker: str
    rate: int
    codec: str
    min_buffer_size: int = 50


def _tts_config(data: Any, model_default: str, rest: bool = False) -> _TtsConfig | str:
    """Validate a config (WS) or body (REST); accepts the old names (target_language_code, sample_rate)."""
    if not isinstance(data, dict):
        return "config data must be an object"
    model = data.get("model") or model_default
    if model not in TTS_MODELS:
        return f"invalid model {model!r}"
    lang = data.get("language_code") or data.get("target_language_code")
    if lang == "or-IN":
        lang = "od-IN"
    if lang not in TTS_LANGUAGES:
        return f"language_code must be one of {sorted(TTS_LANGUAGES)}, got {lang!r}"
    default_speaker = {"bulbul:v2": "anushka", "bulbul:v3": "shubh"}.get(model, "shubh_enhi_ads")
    speaker = data.get("speaker") or default_speaker
    if not isinstance(speaker, str) or not _valid_speaker(model, speaker):
        return f"Speaker {speaker!r} is not valid for {model}"
    rate_raw = data.get("speech_sample_rate", data.get("sample_rate", 22050))
    try:
        rate = int(rate_raw)
    except (TypeError, ValueError):
        return f"invalid speech_sample_rate {rate_raw!r}"
    if rate not in (TTS_REST_RATES if rest else TTS_RATES):
        return f"unsupported speech_sample_rate {rate}"
    codec = data.get("output_audio_codec") or ("wav" if rest else "mp3")
    if codec not in ALL_CODECS:
        return f"invalid output_audio_codec {codec!r}"
    if codec not in EMULATED_CODECS:
        return f"output_audio_codec {codec!r} is not supported by the emulator (use mulaw, alaw, linear16 or wav)"
    mbs = data.get("min_buffer_size", 50)
    if not isinstance(mbs, int) or isinstance(mbs, bool):
        return "min_buffer_size must be an integer"
    return _TtsConfig(model, lang, speaker, rate, codec, mbs)


class _Closed(Exception):
    """The emulator ended the connection on purpose."""


class _TtsConnection:
    CHUNK_S = 0.1

    def __init__(
        self,
        ws: WebSocket,
        state: EmulatorState,
        *,
        model: str,
        completion_event: bool,
        tag: str | None,
        conn_id: int,
        pace: float,
        idle_timeout_s: float,
        ms_per_char: float = MS_PER_CHAR,
    ) -> None:
        self.ws = ws
        self.state = state
        self.dice = state.dice
        self.model = model
        self.completion_event = completion_event
        self.tag = tag
        self.conn_id = conn_id
        self.pace = pace
        self.ms_per_char = ms_per_char
        self.idle_timeout_s = idle_timeout_s
        self.cfg: _TtsConfig | None = None
        self.buffer = ""
        self.queue: asyncio.Queue[tuple[str, str | None, _TtsConfig | None]] = asyncio.Queue()
        self.drop_socket = self.dice.socket_drop("tts")
        # per-utterance state (synthesiser side)
        self.utt_open = False
        self.fault: str | None = None
        self.failed = False
        self.audio_sent = False

    async def send(self, msg: dict) -> None:
        await self.ws.send_text(json.dumps(msg, ensure_ascii=False))

    async def error(self, message: str, code: int | None = 400) -> None:
        await self.send({"type": "error", "data": {"message": message, "code": code, "details": {},
                                                    "request_id": request_id()}})  # fmt: skip

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive())
                tg.create_task(self._synthesise())
        except* _Closed:
            pass
        except* (WebSocketDisconnect, OSError, RuntimeError) as eg:
            log.debug("emulator tts: connection %d ended: %r", self.conn_id, eg.exceptions[0])

    async def _close(self, code: int, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason)
        raise _Closed

    async def _receive(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await self.ws.receive()
            except TimeoutError:
                log.info(
                    "emulator tts: connection %d idle for %.0f s, closing", self.conn_id, self.idle_timeout_s
                )
                await self._close(1000, "idle timeout")
            if message["type"] == "websocket.disconnect":
                raise _Closed
            text = message.get("text")
            try:
                obj = json.loads(text) if text is not None else None
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError:
                log.info("emulator tts: malformed client message %r", (text or "")[:80])
                await self.error("Invalid message: expected a JSON object")
                continue
            typ = obj.get("type")
            if typ == "config":
                cfg = _tts_config(obj.get("data"), self.model)
                if isinstance(cfg, str):
                    log.info("emulator tts: bad config: %s", cfg)
                    await self.error(cfg)
                    continue
                if self.buffer:
                    await self.queue.put(("piece", self.buffer, self.cfg))
                    self.buffer = ""
                self.cfg = cfg
            elif typ == "text":
                data = obj.get("data")
                piece = data.get("text") if isinstance(data, dict) else None
                if self.cfg is None:
                    await self.error("The first message must be a config message")
                elif not isinstance(piece, str) or not 1 <= len(piece) <= 2500:
                    await self.error("text must be 1-2500 characters")
                else:
                    self.buffer += piece
                    if len(self.buffer) >= self.cfg.min_buffer_size:
                        await self.queue.put(("piece", self.buffer, self.cfg))
                        self.buffer = ""
            elif typ == "flush":
                if self.buffer:
                    await self.queue.put(("piece", self.buffer, self.cfg))
                    self.buffer = ""
                await self.queue.put(("flush", None, self.cfg))
            elif typ == "ping":
                pass  # keeps the socket alive; no reply in the protocol
            else:
                await self.error(f"Unknown message type {typ!r}")

    async def _synthesise(self) -> None:
        while True:
            kind, value, cfg = await self.queue.get()
            if kind == "piece" and cfg is not None:
                await self._piece(value, cfg)
            elif kind == "flush":
                if self.utt_open and not self.failed and self.fault not in ("hang", "stall"):
                    if self.completion_event:
                        await self.send({"type": "event", "data": {"event_type": "final",
                                         "message": "generation complete",
                                         "timestamp": dt.datetime.now(dt.UTC).isoformat()}})  # fmt: skip
                self.utt_open = False

    async def _piece(self, text: str, cfg: _TtsConfig) -> None:
        first = not self.utt_open
        if first:
            self.utt_open, self.failed, self.audio_sent = True, False, False
            self.fault = self.dice.request_fault("tts")
            utterance = {"conn": self.conn_id, "tag": self.tag, "fault": self.fault}
            self.state.tts_utterances.append({**utterance, "codec": cfg.codec, "rate": cfg.rate})
            if self.fault in ("hang", "stall"):
                self.state.record("tts", self.fault, self.tag)  # other faults are logged when they show
        if self.failed or self.fault in ("hang", "stall"):
            return  # a hung utterance produces nothing; the client's deadline decides
        if first:
            await asyncio.sleep(self.dice.tts_first_audio())
        fault = self.fault if first else None
        if fault in ("http_500", "http_429", "malformed", "drop"):
            self.state.record("tts", fault, self.tag)
        if fault in ("http_500", "http_429"):
            self.failed = True
            code = 500 if fault == "http_500" else 429
            await self.error("Internal server error" if code == 500 else "Rate limit exceeded", code)
            return
        if fault == "malformed":
            await self.ws.send_text('{"type": "audio", "data": {"audio": ')  # truncated JSON
            self.failed = True
            return
        if fault == "drop":
            await self._close(1011, "internal error")
        chunks = synth_chunks(text, cfg.rate, cfg.codec, self.CHUNK_S, ms_per_char=self.ms_per_char)
        if fault == "error_midstream":
            chunks = chunks[: max(1, len(chunks) // 2)]
        # {"type": "audio", "data": {"content_type": ..., "audio": <base64>, "request_id": ...}}, built
        # around each chunk's base64 (which needs no escaping) rather than by json.dumps per chunk
        head = (
            '{"type": "audio", "data": {"content_type": ' + json.dumps(f"audio/{cfg.codec}") + ', "audio": "'
        )
        tail = '", "request_id": ' + json.dumps(request_id()) + "}}"
        t0 = time.monotonic()
        for i, audio in enumerate(chunks):
            if self.pace > 0:
                delay = t0 + i * self.CHUNK_S / self.pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.ws.send_text(head + audio + tail)
            self.audio_sent = True
            if self.drop_socket:
                self.state.record("tts", "drop", self.tag)
                await self._close(1011, "internal error")
            if self.pace <= 0:
                await asyncio.sleep(0)
        if fault == "error_midstream":
            self.failed = True
            self.state.record("tts", fault, self.tag)
            await self.error("Synthesis failed mid-stream", 500)


def create_tts_app(
    dice: Dice,
    *,
    api_key: str | None = None,
    pace: float = 1.25,
    idle_timeout_s: float = 60.0,
    hang_s: float = 30.0,
    voice_speed: float = 1.0,
) -> FastAPI:
    """The TTS emulator. ``pace``: websocket audio is sent at this multiple of real time (0 = at once).
    ``voice_speed``: how fast the synthetic voice speaks, a multiple of ``MS_PER_CHAR`` per character
    (2.0: half the audio for the same text)."""
    app = FastAPI(title="sarvam-tts-emulator")
    state = EmulatorState(dice, api_key)
    app.state.emulator = state
    _add_control_routes(app, state)
    add_tts_routes(
        app, state, pace=pace, idle_timeout_s=idle_timeout_s, hang_s=hang_s, voice_speed=voice_speed
    )
    return app


def add_tts_routes(
    app: FastAPI,
    state: EmulatorState,
    *,
    pace: float,
    idle_timeout_s: float,
    hang_s: float,
    voice_speed: float = 1.0,
) -> None:
    if voice_speed <= 0:
        raise ValueError("voice_speed must be > 0")
    dice = state.dice
    ms_per_char = MS_PER_CHAR / voice_speed

    @app.websocket("/text-to-speech/ws")
    async def tts_ws(ws: WebSocket) -> None:
        if await _ws_auth(ws, state) is False:
            return
        state.handshakes["tts_ws"] += 1
        conn_id = state.handshakes["tts_ws"]
        tag = ws.headers.get(TAG_HEADER)
        model = ws.query_params.get("model", "bulbul:v3")
        completion = _bool(ws.query_params.get("send_completion_event"), False)
        await ws.accept()
        if model not in TTS_MODELS or completion is None:
            problem = (
                f"invalid model {model!r}"
                if model not in TTS_MODELS
                else "send_completion_event must be true/false"
            )
            log.info("emulator tts: rejecting socket: %s", problem)
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await ws.send_text(json.dumps({"type": "error", "data": {"message": problem, "code": 400}}))
                await ws.close(code=4000, reason=problem[:123])
            return
        conn = _TtsConnection(
            ws, state, model=model, completion_event=completion, tag=tag, conn_id=conn_id, pace=pace,
            idle_timeout_s=idle_timeout_s, ms_per_char=ms_per_char,
        )  # fmt: skip
        try:
            await conn.run()
        except Exception:  # a bug or odd input must cost one socket, never the server
            log.exception("emulator tts: connection %d failed", conn_id)
            with contextlib.suppress(Exception):
                await ws.close(code=1011, reason="internal error")

    @app.post("/text-to-speech")
    async def tts_rest(request: Request) -> Response:
        if not state.key_ok(request.headers.get(KEY_HEADER)):
            return error_envelope(403, "invalid_api_key_error", "Invalid API subscription key")
        tag = request.headers.get(TAG_HEADER)
        try:
            body = await request.json()
        except ValueError:
            return error_envelope(400, "invalid_request_error", "Request body is not valid JSON")
        if not isinstance(body, dict):
            return error_envelope(400, "invalid_request_error", "Request body must be a JSON object")
        text = body.get("text")
        if text is None and isinstance(body.get("inputs"), list):  # SDK <= 0.0.15
            text = " ".join(str(t) for t in body["inputs"])
        if not isinstance(text, str) or not 1 <= len(text) <= 2500:
            return error_envelope(400, "invalid_request_error", "text must be 1-2500 characters")
        cfg = _tts_config(body, "bulbul:v3", rest=True)
        if isinstance(cfg, str):
            return error_envelope(400, "invalid_request_error", cfg)
        state.tts_rest.append({"tag": tag, "codec": cfg.codec, "rate": cfg.rate})
        fault = dice.request_fault("tts")
        if fault is not None:
            state.record("tts", fault, tag)
        if fault in ("http_500", "error_midstream"):
            return error_envelope(500, "internal_server_error", "Internal server error")
        if fault == "http_429":
            resp = error_envelope(429, "rate_limit_exceeded_error", "Rate limit exceeded")
            resp.headers["retry-after"] = "1"
            return resp
        if fault in ("hang", "stall"):
            await asyncio.sleep(hang_s)
            return error_envelope(500, "gateway_timeout_error", "Upstream timed out")
        await asyncio.sleep(dice.tts_first_audio())
        if fault == "malformed":
            return Response('{"request_id": "x", "audios": ["', media_type="application/json")
        if fault == "drop":
            return StreamingResponse(_dropping_body(), media_type="application/json")
        audio = encode_audio(synth_pcm(text, cfg.rate, ms_per_char=ms_per_char), cfg.codec, cfg.rate)
        return JSONResponse({"request_id": request_id(), "audios": [base64.b64encode(audio).decode("ascii")]})


async def _dropping_body():
    yield b'{"request_id": "'
    raise ConnectionAbortedError("emulated connection drop")


# ---------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    import argparse

    import uvicorn

    from voxroute.emulators.profiles import get_profile

    ap = argparse.ArgumentParser(description="Sarvam STT + TTS emulator")
    ap.add_argument("--fixtures", default="fixtures/audio")
    ap.add_argument("--profile", default="reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8100)
    args = ap.parse_args(argv)
    dice = Dice(get_profile(args.profile), args.seed)
    app = create_app(TranscriptLibrary.from_dir(args.fixtures), dice)
    uvicorn.run(app, host="127.0.0.1", port=args.port, ws="websockets-sansio")


if __name__ == "__main__":  # pragma: no cover
    main()
