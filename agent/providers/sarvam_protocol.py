"""Sarvam speech wire formats, sans-I/O: URLs, client messages, parsed server messages.

Pure functions over ``str``/``bytes`` and dataclasses; no sockets, no awaits. The asyncio
clients in :mod:`voxroute.agent.providers.sarvam` are thin layers over this module.

Sockets covered (see ``docs/reference/sarvam.md``):

- realtime STT ``/speech-to-text-realtime/ws``: underscore query keys, ``or-IN`` for Odia,
  ``auto`` for detection, JSON frames keyed by ``event``, mu-law 8 kHz accepted;
- legacy STT ``/speech-to-text/ws``: ``language-code`` with a hyphen, ``od-IN``, ``unknown``,
  PCM s16le only, messages ``{"type": "data" | "events" | "error", "data": {...}}``;
- TTS websocket ``/text-to-speech/ws`` (config first, text, flush, ping; audio / event / error)
  and TTS REST ``POST /text-to-speech``.

Inside voxroute a language is always ``xx-IN`` with Odia as ``od-IN`` (the TTS spelling);
:func:`normalise_language` maps whatever a server reports onto that.

Anything that is not valid protocol raises :class:`SarvamProtocolError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

REALTIME_STT_PATH = "/speech-to-text-realtime/ws"
LEGACY_STT_PATH = "/speech-to-text/ws"
TRANSLATE_STT_PATH = "/speech-to-text-translate/ws"
TTS_WS_PATH = "/text-to-speech/ws"
TTS_REST_PATH = "/text-to-speech"

AUTH_HEADER = "api-subscription-key"
TAG_HEADER = "X-Voxroute-Tag"

DEFAULT_REALTIME_MODEL = "saaras:v3-realtime"
DEFAULT_LEGACY_MODEL = "saaras:v3"
DEFAULT_TTS_MODEL = "bulbul:v3"

STT_LANGUAGES = (
    "en-IN", "hi-IN", "bn-IN", "gu-IN", "kn-IN", "ml-IN", "mr-IN", "od-IN", "pa-IN", "ta-IN", "te-IN",
    "as-IN", "ur-IN", "ne-IN", "kok-IN", "doi-IN", "ks-IN", "sd-IN", "sa-IN", "sat-IN", "mni-IN",
    "brx-IN", "mai-IN",
)  # fmt: skip
TTS_LANGUAGES = (
    "bn-IN",
    "en-IN",
    "gu-IN",
    "hi-IN",
    "kn-IN",
    "ml-IN",
    "mr-IN",
    "od-IN",
    "pa-IN",
    "ta-IN",
    "te-IN",
)

BULBUL_V2_SPEAKERS = ("anushka", "manisha", "vidya", "arya", "abhilash", "karun", "hitesh")
BULBUL_V3_SPEAKERS = (
    "shubh", "aditya", "ritu", "priya", "neha", "rahul", "pooja", "rohan", "simran", "kavya", "amit", "dev",
    "ishita", "shreya", "ratan", "varun", "manan", "sumit", "roopa", "kabir", "aayan", "ashutosh", "advait",
    "anand", "tanya", "tarun", "sunny", "mani", "gokul", "vijay", "shruti", "suhani", "mohit", "kavitha",
    "rehan", "soham", "rupali",
)  # fmt: skip

# Default bulbul:v3 voice per TTS language (all valid v3 speakers; v3 voices are multilingual).
DEFAULT_V3_SPEAKERS = {
    "en-IN": "shubh",
    "hi-IN": "ritu",
    "bn-IN": "priya",
    "gu-IN": "neha",
    "kn-IN": "kavya",
    "ml-IN": "kavitha",
    "mr-IN": "pooja",
    "od-IN": "simran",
    "pa-IN": "rahul",
    "ta-IN": "anand",
    "te-IN": "rohan",
}


class SarvamProtocolError(ValueError):
    """A message that is not valid Sarvam protocol (bad JSON, wrong shape, wrong types)."""


# ---------------------------------------------------------------- languages


def normalise_language(code: str | None) -> str | None:
    """Any code a server reports -> ``xx-IN`` (``hi`` -> ``hi-IN``, ``or-IN`` -> ``od-IN``); None stays None."""
    if code is None:
        return None
    code = code.strip()
    if not code or code in ("auto", "unknown"):
        return None
    base = code.split("-", 1)[0].split("_", 1)[0].lower()
    if base == "or":
        base = "od"
    return f"{base}-IN"


def realtime_language(code: str) -> str:
    """Our language -> the realtime socket's spelling (``or-IN`` for Odia, ``auto`` for detection)."""
    if code in ("auto", "unknown", ""):
        return "auto"
    norm = normalise_language(code) or "auto"
    return "or-IN" if norm == "od-IN" else norm


def legacy_language(code: str) -> str:
    """Our language -> the legacy socket's spelling (``od-IN`` for Odia, ``unknown`` for detection)."""
    if code in ("auto", "unknown", ""):
        return "unknown"
    return normalise_language(code) or "unknown"


def _with_query(base_url: str, path: str, params: dict[str, Any]) -> str:
    query = {k: _query_value(v) for k, v in params.items() if v is not None}
    return base_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ---------------------------------------------------------------- realtime STT: URL and client messages


def realtime_stt_url(
    base_url: str,
    language: str,
    *,
    model: str = DEFAULT_REALTIME_MODEL,
    stream_type: str = "fast",
    encoding: str = "mulaw",
    sample_rate: int = 8000,
    endpointing: str = "vad",
    silence_duration_ms: int | None = None,
    mode: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """The realtime socket URL. Query keys use underscores; never put the key in the query."""
    params: dict[str, Any] = {
        "language_code": realtime_language(language),
        "model": model,
        "stream_type": stream_type,
        "mode": mode,
        "encoding": encoding,
        "sample_rate": sample_rate,
        "endpointing": endpointing,
        "silence_duration_ms": silence_duration_ms,
    }
    params.update(extra or {})
    return _with_query(base_url, REALTIME_STT_PATH, params)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def rt_audio_input(audio: bytes) -> str:
    """One ``audio_input`` message: raw bytes in the declared encoding, base64 inside JSON."""
    # Built by hand: base64 needs no JSON escaping, and this runs 25 times a second per call.
    return '{"event":"audio_input","audio":"' + base64.b64encode(audio).decode("ascii") + '"}'


def rt_flush() -> str:
    return _dumps({"event": "flush"})


def rt_speech_start() -> str:
    return _dumps({"event": "speech_start"})


def rt_speech_end() -> str:
    return _dumps({"event": "speech_end"})


def rt_ping() -> str:
    return _dumps({"event": "ping"})


def rt_end() -> str:
    return _dumps({"event": "end"})


def rt_config_update(**changes: Any) -> str:
    """``config.update``; ``language_code`` is mapped to the realtime spelling."""
    allowed = {
        "language_code",
        "prompt",
        "mode",
        "stream_type",
        "endpointing",
        "threshold",
        "silence_duration_ms",
        "min_speech_duration_ms",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"config.update does not take {sorted(unknown)}")
    msg: dict[str, Any] = {"event": "config.update"}
    for k, v in changes.items():
        if v is not None:
            msg[k] = realtime_language(v) if k == "language_code" else v
    return _dumps(msg)


# ---------------------------------------------------------------- realtime STT: server messages


@dataclass(frozen=True, slots=True)
class RtSessionBegin:
    request_id: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RtVadSpeechStart:
    utterance_idx: int
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class RtVadSpeechEnd:
    utterance_idx: int
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class RtTranscript:
    utterance_idx: int
    text: str
    final: bool
    language: str | None = None  # normalised; present only with language_code=auto
    language_confidence: float | None = None
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True, slots=True)
class RtConfigUpdated:
    applied: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RtPong:
    pass


@dataclass(frozen=True, slots=True)
class RtError:
    code: str
    is_fatal: bool
    message: str
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class RtSessionEnd:
    request_id: str
    total_duration_s: float | None = None
    total_utterances: int | None = None
    audio_duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class RtUnknown:
    """An event this code does not know; the SDK skips these, and so do we (servers may add events)."""

    event: str
    raw: dict[str, Any]


RealtimeMessage = (
    RtSessionBegin
    | RtVadSpeechStart
    | RtVadSpeechEnd
    | RtTranscript
    | RtConfigUpdated
    | RtPong
    | RtError
    | RtSessionEnd
    | RtUnknown
)


def _load_object(text: str | bytes | bytearray) -> dict[str, Any]:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SarvamProtocolError(f"message is not UTF-8: {exc}") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an over-long integer literal
        raise SarvamProtocolError(f"message is not JSON: {exc}: {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise SarvamProtocolError(f"message is not a JSON object: {text[:80]!r}")
    if "\\ud" in text or "\\uD" in text:  # a surrogate escape: paired it is an emoji, alone it is no text
        try:  # (a transcript with one could not be logged, stored or spoken: UnicodeEncodeError)
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise SarvamProtocolError("message holds a lone surrogate escape: not Unicode text") from None
    return obj


def _req(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise SarvamProtocolError(f"{where}: missing field {key!r}")
    return _check(obj[key], typ, f"{where}.{key}")


def _opt(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    v = obj.get(key)
    return None if v is None else _check(v, typ, f"{where}.{key}")


def _check(v: Any, typ: type | tuple[type, ...], where: str) -> Any:
    types = typ if isinstance(typ, tuple) else (typ,)
    # bool is an int in Python; a JSON true is never a valid number here
    if isinstance(v, bool) and bool not in types:
        raise SarvamProtocolError(f"{where}: expected {_type_names(types)}, got a boolean")
    if not isinstance(v, types):
        raise SarvamProtocolError(f"{where}: expected {_type_names(types)}, got {type(v).__name__}")
    if float in types and isinstance(v, int):
        try:
            return float(v)
        except OverflowError:  # a JSON integer literal beyond any float
            raise SarvamProtocolError(f"{where}: number out of range") from None
    return v


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


_NUM = (int, float)


def parse_realtime(text: str | bytes) -> RealtimeMessage:
    """Parse one realtime STT server frame."""
    obj = _load_object(text)
    event = _req(obj, "event", str, "realtime message")
    w = event
    if event == "session.begin":
        cfg = _opt(obj, "config", dict, w) or {}
        return RtSessionBegin(request_id=_req(obj, "request_id", str, w), config=cfg)
    if event in ("vad.speech_start", "vad.speech_end"):
        idx = _req(obj, "utterance_idx", int, w)
        conf = _opt(obj, "confidence", _NUM, w)
        return RtVadSpeechStart(idx, conf) if event == "vad.speech_start" else RtVadSpeechEnd(idx, conf)
    if event in ("transcript.partial", "transcript.final"):
        return RtTranscript(
            utterance_idx=_req(obj, "utterance_idx", int, w),
            text=_req(obj, "text", str, w),
            final=event == "transcript.final",
            language=normalise_language(_opt(obj, "language", str, w)),
            language_confidence=_opt(obj, "language_confidence", _NUM, w),
            start_s=_opt(obj, "start_s", _NUM, w),
            end_s=_opt(obj, "end_s", _NUM, w),
        )
    if event == "config.updated":
        applied = _req(obj, "applied", list, w)
        for i, k in enumerate(applied):
            _check(k, str, f"{w}.applied[{i}]")
        return RtConfigUpdated(tuple(applied))
    if event == "pong":
        return RtPong()
    if event == "error":
        return RtError(
            code=_req(obj, "code", str, w),
            is_fatal=_req(obj, "is_fatal", bool, w),
            message=_req(obj, "message", str, w),
            status_code=_opt(obj, "status_code", int, w),
        )
    if event == "session.end":
        return RtSessionEnd(
            request_id=_req(obj, "request_id", str, w),
            total_duration_s=_opt(obj, "total_duration_s", _NUM, w),
            total_utterances=_opt(obj, "total_utterances", int, w),
            audio_duration_s=_opt(obj, "audio_duration_s", _NUM, w),
        )
    return RtUnknown(event, obj)


# ---------------------------------------------------------------- legacy STT


def legacy_stt_url(
    base_url: str,
    language: str,
    *,
    model: str = DEFAULT_LEGACY_MODEL,
    sample_rate: int = 8000,
    input_audio_codec: str = "pcm_s16le",
    vad_signals: bool = True,
    flush_signal: bool = True,
    high_vad_sensitivity: bool = True,
    mode: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """The legacy socket URL: ``language-code`` with a hyphen; 8 kHz is only possible via this query."""
    params: dict[str, Any] = {
        "language-code": legacy_language(language),
        "model": model,
        "mode": mode,
        "sample_rate": sample_rate,
        "input_audio_codec": input_audio_codec,
        "high_vad_sensitivity": high_vad_sensitivity,
        "vad_signals": vad_signals,
        "flush_signal": flush_signal,
    }
    params.update(extra or {})
    return _with_query(base_url, LEGACY_STT_PATH, params)


def legacy_audio(pcm: bytes, sample_rate: int = 8000) -> str:
    """Headerless PCM s16le under the label the SDK insists on (``audio/wav``)."""
    data = base64.b64encode(pcm).decode("ascii")
    return _dumps({"audio": {"data": data, "sample_rate": sample_rate, "encoding": "audio/wav"}})


def legacy_flush() -> str:
    return _dumps({"type": "flush"})


def legacy_config(prompt: str) -> str:
    return _dumps({"type": "config", "prompt": prompt})


def legacy_end_of_stream() -> str:
    return _dumps(
        {"type": "end_of_stream", "audio": {"data": "", "encoding": "audio/wav", "sample_rate": 16000}}
    )


@dataclass(frozen=True, slots=True)
class LegacyTranscript:
    transcript: str
    language_code: str | None = None  # normalised
    request_id: str | None = None
    language_probability: float | None = None
    audio_duration: float | None = None
    processing_latency: float | None = None


@dataclass(frozen=True, slots=True)
class LegacySignal:
    signal_type: str  # START_SPEECH / END_SPEECH (others passed through)
    occured_at: float | None = None


@dataclass(frozen=True, slots=True)
class LegacyError:
    error: str
    code: str | None = None


LegacyMessage = LegacyTranscript | LegacySignal | LegacyError


def parse_legacy(text: str | bytes) -> LegacyMessage:
    """Parse one legacy (or translate) STT server frame."""
    obj = _load_object(text)
    typ = _req(obj, "type", str, "legacy message")
    data = _req(obj, "data", dict, f"legacy {typ}")
    w = f"legacy {typ}.data"
    if typ == "data":
        metrics = _opt(data, "metrics", dict, w) or {}
        return LegacyTranscript(
            transcript=_req(data, "transcript", str, w),
            language_code=normalise_language(_opt(data, "language_code", str, w)),
            request_id=_opt(data, "request_id", str, w),
            language_probability=_opt(data, "language_probability", _NUM, w),
            audio_duration=_opt(metrics, "audio_duration", _NUM, f"{w}.metrics"),
            processing_latency=_opt(metrics, "processing_latency", _NUM, f"{w}.metrics"),
        )
    if typ in ("events", "event"):  # LiveKit tolerates the singular too
        signal = _opt(data, "signal_type", str, w) or _opt(data, "event_type", str, w)
        if signal is None:
            raise SarvamProtocolError(f"{w}: missing field 'signal_type'")
        return LegacySignal(signal, _opt(data, "occured_at", _NUM, w))
    if typ in ("error", "errors"):
        message = _opt(data, "error", str, w) or _opt(data, "message", str, w) or "unspecified error"
        code = data.get("code")
        return LegacyError(message, None if code is None else str(code))
    raise SarvamProtocolError(f"legacy message: unknown type {typ!r}")


# ---------------------------------------------------------------- TTS websocket


def tts_ws_url(base_url: str, *, model: str = DEFAULT_TTS_MODEL, send_completion_event: bool = True) -> str:
    """Always both keys: the docs contradict themselves on both defaults."""
    return _with_query(
        base_url, TTS_WS_PATH, {"model": model, "send_completion_event": send_completion_event}
    )


def tts_config(
    language: str,
    speaker: str,
    *,
    model: str = DEFAULT_TTS_MODEL,
    sample_rate: int = 8000,
    codec: str = "mulaw",
    pace: float | None = None,
    temperature: float | None = None,
    min_buffer_size: int | None = None,
    max_chunk_length: int | None = None,
) -> str:
    """The first message on a TTS socket. ``speech_sample_rate`` is an int, as the SDK sends it."""
    data: dict[str, Any] = {
        "model": model,
        "language_code": normalise_language(language) or language,
        "speaker": speaker,
        "speech_sample_rate": int(sample_rate),
        "output_audio_codec": codec,
    }
    for k, v in (
        ("pace", pace),
        ("temperature", temperature),
        ("min_buffer_size", min_buffer_size),
        ("max_chunk_length", max_chunk_length),
    ):
        if v is not None:
            data[k] = v
    return _dumps({"type": "config", "data": data})


MAX_TTS_TEXT = 2500


def tts_text(text: str) -> str:
    if not 1 <= len(text) <= MAX_TTS_TEXT:
        raise ValueError(f"TTS text must be 1-{MAX_TTS_TEXT} characters, got {len(text)}")
    return _dumps({"type": "text", "data": {"text": text}})


def tts_flush() -> str:
    return _dumps({"type": "flush"})


def tts_ping() -> str:
    return _dumps({"type": "ping"})


@dataclass(frozen=True, slots=True)
class TtsAudio:
    audio: bytes  # raw bytes in the configured codec (trust the config, not content_type)
    content_type: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TtsFinal:
    message: str | None = None


@dataclass(frozen=True, slots=True)
class TtsError:
    message: str
    code: int | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TtsUnknown:
    type: str
    raw: dict[str, Any]


TtsMessage = TtsAudio | TtsFinal | TtsError | TtsUnknown


def _b64(s: str, where: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SarvamProtocolError(f"{where}: invalid base64: {exc}") from None


def parse_tts(text: str | bytes) -> TtsMessage:
    """Parse one TTS websocket server frame."""
    obj = _load_object(text)
    typ = _req(obj, "type", str, "tts message")
    w = f"tts {typ}"
    if typ == "audio":
        data = _req(obj, "data", dict, w)
        return TtsAudio(
            audio=_b64(_req(data, "audio", str, f"{w}.data"), f"{w}.data.audio"),
            content_type=_opt(data, "content_type", str, f"{w}.data"),
            request_id=_opt(data, "request_id", str, f"{w}.data"),
        )
    if typ == "event":
        data = _req(obj, "data", dict, w)
        event_type = _opt(data, "event_type", str, f"{w}.data") or "final"
        if event_type == "final":
            return TtsFinal(_opt(data, "message", str, f"{w}.data"))
        return TtsUnknown(f"event:{event_type}", obj)
    if typ == "error":
        data = _req(obj, "data", dict, w)
        code = data.get("code")
        if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 9:
            code = int(code)
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            code = None  # documented as an optional integer; anything else is just not a code
        return TtsError(
            message=_opt(data, "message", str, f"{w}.data") or "unspecified error",
            code=code,
            request_id=_opt(data, "request_id", str, f"{w}.data"),
        )
    return TtsUnknown(typ, obj)


# ---------------------------------------------------------------- TTS REST


def tts_rest_url(base_url: str) -> str:
    return base_url.rstrip("/") + TTS_REST_PATH


def tts_rest_body(
    text: str,
    language: str,
    speaker: str,
    *,
    model: str = DEFAULT_TTS_MODEL,
    sample_rate: int = 8000,
    codec: str = "mulaw",
    pace: float | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """JSON body of ``POST /text-to-speech`` with the current field names (``text``, ``language_code``)."""
    if not 1 <= len(text) <= MAX_TTS_TEXT:
        raise ValueError(f"TTS text must be 1-{MAX_TTS_TEXT} characters, got {len(text)}")
    body: dict[str, Any] = {
        "text": text,
        "language_code": normalise_language(language) or language,
        "speaker": speaker,
        "model": model,
        "speech_sample_rate": int(sample_rate),
        "output_audio_codec": codec,
    }
    if pace is not None:
        body["pace"] = pace
    if temperature is not None:
        body["temperature"] = temperature
    return body


@dataclass(frozen=True, slots=True)
class TtsRestResult:
    audio: bytes  # all ``audios`` decoded and concatenated, in the requested codec
    request_id: str | None = None


def parse_tts_rest_response(body: str | bytes) -> TtsRestResult:
    obj = _load_object(body)
    audios = _req(obj, "audios", list, "tts response")
    if not audios:
        raise SarvamProtocolError("tts response: empty 'audios'")
    parts = [_b64(_check(a, str, f"tts response.audios[{i}]"), f"audios[{i}]") for i, a in enumerate(audios)]
    return TtsRestResult(b"".join(parts), _opt(obj, "request_id", str, "tts response"))


def strip_riff(audio: bytes) -> bytes:
    """Drop a RIFF/WAVE header if present (``wav`` payloads; possibly ``linear16``)."""
    if len(audio) >= 12 and audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(audio):
            cid = audio[pos : pos + 4]
            size = int.from_bytes(audio[pos + 4 : pos + 8], "little")
            if cid == b"data":
                return audio[pos + 8 : pos + 8 + size]
            pos += 8 + size + (size & 1)
        return b""
    return audio


@dataclass(frozen=True, slots=True)
class RestError:
    message: str
    code: str | None = None
    request_id: str | None = None


def parse_rest_error(body: str | bytes | bytearray) -> RestError:
    """The REST error envelope ``{"error": {"message", "code", "request_id"}}``; lenient (never raises)."""
    try:
        obj = _load_object(body)
    except SarvamProtocolError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else str(body)
        return RestError(text[:200] or "empty error body")
    err = obj.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        code = err.get("code")
        rid = err.get("request_id")
        return RestError(
            msg if isinstance(msg, str) else json.dumps(err)[:200],
            code if isinstance(code, str) else None,
            rid if isinstance(rid, str) else None,
        )
    if isinstance(err, str):
        return RestError(err)
    detail = obj.get("detail") or obj.get("message")
    return RestError(str(detail)[:200] if detail else json.dumps(obj)[:200])


def fault_kind_for_status(status: int) -> str:
    """HTTP status -> FaultKind (``voxroute.agent.providers.base``)."""
    if status >= 500:
        return "http_500"
    if status == 429:
        return "http_429"
    return "http_error"


def retry_after_seconds(headers: dict[str, str] | Any) -> float | None:
    """``retry-after-ms`` then ``retry-after`` (seconds), as the SDK reads them; None when absent or odd."""
    get = headers.get
    for key, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        v = get(key)
        if v is not None:
            try:
                return max(0.0, float(v) * scale)
            except ValueError:
                continue
    return None
