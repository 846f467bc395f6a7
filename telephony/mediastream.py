"""What the JSON media-stream carriers (Twilio, Exotel, Plivo, Telnyx) share, sans-I/O.

Each carrier module (``telephony/twilio.py``, ``exotel.py``, ``plivo.py``, ``telnyx.py``) is a
subclass of :class:`MediaStreamCodec`: ``feed(text) -> events``, ``media_wire(data) -> texts``
(``media(pcm) -> texts``), ``mark(name) -> texts``, ``clear() -> texts``, no awaits. The events are
carrier-neutral (:class:`StreamStart`, :class:`Audio`, :class:`Dtmf`, :class:`MarkPlayed`, ...), so one
websocket link (``telephony/wslink.py``) and one stream handler (``telephony/routes/edge.py``)
serve all four.

Audio handed out is always 20 ms of PCM16 at 8 kHz, whatever the carrier's native encoding
and rate (:class:`InboundFramer`). Audio taken in by ``media_wire`` is in the stream's wire format
(``MediaStreamCodec.wire_format``: mu-law, A-law, or PCM16 little-endian at the stream's rate),
which the TTS was asked for: it goes out as it is (a big-endian L16 stream only has its bytes
swapped). ``media(pcm8k)`` takes PCM16 8 kHz for callers that hold PCM (the Pipecat serializer) and
encodes it (:class:`OutboundEncoder`).

Marks: a carrier echoes a mark (Plivo: ``playedStream`` after a ``checkpoint``) once the
audio before it has played. What carriers do with pending marks on ``clear`` differs, and the
core expects Twilio's rule (every pending mark comes back at once). So, for the others,
``clear()`` moves the pending marks to :meth:`MediaStreamCodec.take_flushed` for the link to
report right away, and a late echo of a flushed mark from the carrier is dropped; Twilio echoes
them itself (``echoes_marks_on_clear``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, overload

import numpy as np
import orjson

from voxroute import audio
from voxroute.audio import (
    ALAW_8K,
    MULAW_8K,
    PcmToWire,
    WireFormat,
    alaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)

MAX_MESSAGE_BYTES = 256 * 1024  # Exotel allows 100 kB of audio per message: 136 kB of base64
RATE = 8000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2  # 320 bytes of PCM16 8 kHz per 20 ms
DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_PENDING_MARKS = 10_000  # a runtime that never gets echoes must not grow this without bound
_MAX_INT_CHARS = 18


class CarrierProtocolError(ValueError):
    """A message from (or to) a carrier that breaks its media-stream protocol."""


# ---------------------------------------------------------------- carrier-neutral events


@dataclass(frozen=True, slots=True)
class Connected:
    version: str | None = None


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A stream's native audio: ``encoding`` is one of ``ulaw``, ``alaw``, ``l16le``, ``l16be``."""

    encoding: str
    sample_rate: int

    def __post_init__(self) -> None:
        if self.encoding not in ("ulaw", "alaw", "l16le", "l16be"):
            raise CarrierProtocolError(f"unsupported encoding {self.encoding!r}")
        if self.encoding in ("ulaw", "alaw") and self.sample_rate != RATE:
            raise CarrierProtocolError(f"G.711 at {self.sample_rate} Hz: G.711 is 8000 Hz only")
        if self.sample_rate not in (8000, 16000, 24000):
            raise CarrierProtocolError(f"unsupported sample rate {self.sample_rate}: 8000, 16000 or 24000")

    @property
    def bytes_per_ms(self) -> int:
        return self.sample_rate // 1000 * (1 if self.encoding in ("ulaw", "alaw") else 2)

    @property
    def wire(self) -> WireFormat:
        """What the TTS is asked for: this format, but little-endian where the carrier wants L16
        big-endian (Bulbul makes little-endian PCM; the swap is the only conversion left)."""
        if self.encoding == "ulaw":
            return MULAW_8K
        if self.encoding == "alaw":
            return ALAW_8K
        return WireFormat("l16le", self.sample_rate)


@dataclass(frozen=True, slots=True)
class StreamStart:
    call_id: str
    stream_id: str
    audio: AudioFormat
    account_id: str = ""
    from_number: str | None = None
    to_number: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict, hash=False)
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Audio:
    pcm: bytes  # 20 ms of PCM16 8 kHz
    timestamp_ms: int | None = None  # ms since the stream's first media
    ulaw: bytes | None = None  # the carrier's own mu-law bytes when it sends mu-law


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    name: str
    flushed: bool = False  # True: reported by our own clear(), the audio before it was not played


@dataclass(frozen=True, slots=True)
class Cleared:
    """The carrier confirms a clear (Plivo ``clearedAudio``)."""


@dataclass(frozen=True, slots=True)
class CarrierError:
    """The carrier reports an error on the stream (Telnyx ``error``); the call goes on."""

    code: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Stopped:
    reason: str | None = None


StreamEvent = Connected | StreamStart | Audio | Dtmf | MarkPlayed | Cleared | CarrierError | Stopped


# ---------------------------------------------------------------- JSON field helpers


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_message(text: str | bytes, limit: int) -> dict:
    """One JSON object from a text (or UTF-8 binary) frame, or a clear error.

    Parsed with orjson (about 4x the standard library on a media message, 50 of them per call-second):
    it is stricter where the standard library is lenient, which a carrier never relies on: NaN and
    Infinity, integers beyond 64 bits (read as floats, so an integer field refuses them) and lone
    surrogate escapes (``"\\ud800"``: valid JSON, but no Unicode text: an id holding one could never
    be sent back, logged or stored) are errors."""
    if isinstance(text, bytes | bytearray | memoryview):
        if len(text) > limit:
            raise CarrierProtocolError(f"message of {len(text)} bytes exceeds the {limit}-byte limit")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CarrierProtocolError(f"message is not UTF-8: {exc}") from None
    elif not isinstance(text, str):
        raise CarrierProtocolError(f"message must be text, got {type(text).__name__}")
    if len(text) > limit or (not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > limit):
        raise CarrierProtocolError(f"message exceeds the {limit}-byte limit")
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            raise CarrierProtocolError("message holds a lone surrogate escape: not Unicode text") from None
        raise CarrierProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise CarrierProtocolError(f"message must be a JSON object, got {type(msg).__name__}")
    return msg


def get_obj(d: dict, key: str, where: str, *, required: bool = True) -> dict:
    value = d.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise CarrierProtocolError(f"{where}.{key} must be an object, got {short(value)}")
    return value


@overload
def get_str(d: dict, key: str, where: str, *, required: Literal[True] = True) -> str: ...
@overload
def get_str(d: dict, key: str, where: str, *, required: bool) -> str | None: ...
def get_str(d: dict, key: str, where: str, *, required: bool = True) -> str | None:
    value = d.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise CarrierProtocolError(f"{where}.{key} must be a string, got {short(value)}")
    return value


@overload
def get_int(d: dict, key: str, where: str, *, required: Literal[True]) -> int: ...
@overload
def get_int(d: dict, key: str, where: str, *, required: bool = False) -> int | None: ...
def get_int(d: dict, key: str, where: str, *, required: bool = False) -> int | None:
    """An unsigned integer sent as a number or as a string of digits (carriers do both)."""
    value = d.get(key)
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and 0 < len(value) <= _MAX_INT_CHARS and value.isascii() and value.isdigit():
        return int(value)
    raise CarrierProtocolError(f"{where}.{key} must be an unsigned integer, got {short(value)}")


def get_b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise CarrierProtocolError(f"{where} must be a base64 string, got {short(value)}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CarrierProtocolError(f"{where} is not valid base64: {exc}") from None
    if not data:
        raise CarrierProtocolError(f"{where} is empty")
    return data


def get_params(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CarrierProtocolError(f"{where} must be an object, got {short(value)}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = str(v)
        else:
            raise CarrierProtocolError(f"{where}.{k} must be a string, got {short(v)}")
    return out


def get_digit(d: dict, key: str, where: str) -> str:
    digit = get_str(d, key, where)
    if digit not in DTMF_DIGITS:
        raise CarrierProtocolError(f"{where}.{key} {short(digit)} is not a keypad digit")
    return digit


def compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- audio conversion


def native_to_pcm(data: bytes, fmt: AudioFormat) -> bytes:
    """Native bytes -> PCM16 little-endian at the native rate."""
    if fmt.encoding == "ulaw":
        return ulaw_to_pcm16(data)
    if fmt.encoding == "alaw":
        return alaw_to_pcm16(data)
    if fmt.encoding == "l16be":
        return _swap16(data)
    return bytes(data)


def pcm_to_native(pcm: bytes, fmt: AudioFormat) -> bytes:
    """PCM16 little-endian at the native rate -> native bytes."""
    if fmt.encoding == "ulaw":
        return pcm16_to_ulaw(pcm)
    if fmt.encoding == "alaw":
        return pcm16_to_alaw(pcm)
    if fmt.encoding == "l16be":
        return _swap16(pcm)
    return pcm


def _swap16(data: bytes) -> bytes:
    return np.frombuffer(data, "<u2").byteswap().tobytes()


class InboundFramer(audio.InboundFramer):
    """Carrier payloads of any size -> 20 ms PCM16 8 kHz frames (carrying the remainder)."""

    def __init__(self, fmt: AudioFormat):
        super().__init__(fmt.encoding, fmt.sample_rate)
        self.fmt = fmt


class OutboundEncoder:
    """Outbound audio -> the stream's native bytes: ``native(wire)`` for audio already in the wire
    format (as it is, or byte-swapped for L16 big-endian), ``encode(pcm8k)`` for PCM16 8 kHz
    (resampled and encoded: the Pipecat serializer's path; one resampler per call)."""

    def __init__(self, fmt: AudioFormat):
        self.fmt = fmt
        self.wire = fmt.wire
        self._swap = fmt.encoding == "l16be"
        self._from_pcm = PcmToWire(self.wire)

    def native(self, wire: bytes) -> bytes:
        if self.wire.sample_bytes == 2 and len(wire) % 2:
            raise ValueError(f"PCM16 needs an even number of bytes, got {len(wire)}")
        return _swap16(wire) if self._swap else wire

    def encode(self, pcm8k: bytes) -> bytes:
        """PCM16 8 kHz -> native bytes."""
        return self.native(self._from_pcm.encode(pcm8k))

    def reset(self) -> None:
        """After a clear: the next audio is a new utterance, stale filter history must not leak in."""
        self._from_pcm = PcmToWire(self.wire)


# ---------------------------------------------------------------- the shared state machine


class MediaStreamCodec:
    """Our end of one carrier media stream. Subclasses parse and build their carrier's messages.

    ``feed`` returns zero or more events per message (a 100 ms Exotel chunk is five 20 ms
    frames; an unknown event type is none). ``start`` must come before media, once; nothing
    may follow ``stop``. Outbound methods return the texts to send, in order.
    """

    carrier: ClassVar[str] = "?"
    # A carrier without a websocket ``stop`` (Plivo) ends a call by closing the socket: that is
    # the normal end there, not a caller lost mid-stream.
    close_means_stop: ClassVar[bool] = False
    # Twilio echoes every pending mark itself on ``clear``: nothing to flush here, no echo to drop.
    echoes_marks_on_clear: ClassVar[bool] = False
    # The field by which a message after ``start`` names its stream (Twilio ``streamSid``, Exotel
    # ``stream_sid``, Plivo ``streamId``, Telnyx ``stream_id``), and the events of a started stream.
    stream_id_field: ClassVar[str]
    stream_events: ClassVar[frozenset[str]] = frozenset({"media", "dtmf", "mark", "stop"})

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes
        self.start: StreamStart | None = None
        self.stopped = False
        self._framer: InboundFramer | None = None
        self._encoder: OutboundEncoder | None = None
        self._pending_marks: list[str] = []
        self._flushed_marks: set[str] = set()
        self._flushed_report: list[MarkPlayed] = []

    @property
    def call_label(self) -> str:
        """How log lines name a call of this carrier: ``exotel call CA1``."""
        return f"{self.carrier} call"

    @property
    def stream_label(self) -> str:
        """How log lines name a stream of this carrier before its start: ``exotel stream from ...``."""
        return f"{self.carrier} stream"

    # -- inbound

    def feed(self, text: str | bytes) -> list[StreamEvent]:
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if not isinstance(event, str):
            raise CarrierProtocolError(f"message has no string 'event' field: got {short(event)}")
        if self.stopped:
            raise CarrierProtocolError(f"{event!r} after stop")
        return self._dispatch(event, msg)

    def _dispatch(self, event: str, msg: dict) -> list[StreamEvent]:
        if event == "connected":
            return self._connected(msg)
        if event == "start":
            return [self._start(msg)]
        if event not in self.stream_events:
            return []  # an event type newer than this code
        self._stream_of(event, msg)
        return self._stream_event(event, msg)

    def _connected(self, msg: dict) -> list[StreamEvent]:
        return []  # a carrier without a ``connected`` message

    def _start(self, msg: dict) -> StreamStart:
        raise NotImplementedError

    def _stream_event(self, event: str, msg: dict) -> list[StreamEvent]:
        """One of ``stream_events``, of the stream that started."""
        raise NotImplementedError

    def _stream_of(self, event: str, msg: dict) -> StreamStart:
        """The started stream a message after ``start`` belongs to; when it names one, it must be this."""
        start = self._require_start(event)
        sid = msg.get(self.stream_id_field)
        if sid is not None and sid != start.stream_id:
            raise CarrierProtocolError(f"{event!r} for stream {short(sid)}, expected {start.stream_id!r}")
        return start

    def _started(self, start: StreamStart) -> StreamStart:
        if self.start is not None:
            raise CarrierProtocolError("duplicate 'start'")
        if not start.call_id:
            raise CarrierProtocolError("start has an empty call id")
        if not start.stream_id:
            raise CarrierProtocolError("start has an empty stream id")
        self.start = start
        self._framer = InboundFramer(start.audio)
        self._encoder = OutboundEncoder(start.audio)
        return start

    def _require_start(self, event: str) -> StreamStart:
        if self.start is None:
            raise CarrierProtocolError(f"{event!r} before start")
        return self.start

    def _audio(self, payload: bytes, timestamp_ms: int | None) -> list[StreamEvent]:
        assert self._framer is not None
        return [Audio(pcm, ts, ulaw) for pcm, ulaw, ts in self._framer.push(payload, timestamp_ms)]

    def _mark_played(self, name: str) -> list[StreamEvent]:
        if self.echoes_marks_on_clear:
            return [MarkPlayed(name)]
        if name in self._flushed_marks:
            self._flushed_marks.discard(name)  # already reported by clear()
            return []
        try:
            self._pending_marks.remove(name)
        except ValueError:
            pass  # a mark we did not send (or sent twice): report it, the core ignores strangers
        return [MarkPlayed(name)]

    def _stopped(self, reason: str | None) -> list[StreamEvent]:
        self.stopped = True
        return [Stopped(reason)]

    # -- outbound

    def _outbound(self) -> OutboundEncoder:
        if self._encoder is None:
            raise RuntimeError("nothing can be sent before 'start'")
        return self._encoder

    @property
    def wire_format(self) -> WireFormat:
        """What ``media_wire`` takes (known once the stream started)."""
        return self._outbound().wire

    def media_wire(self, data: bytes) -> list[str]:
        """Audio in ``wire_format`` (whole samples) -> the messages that queue it at the carrier."""
        return self._media_native(self._outbound().native(data))

    def media(self, pcm8k: bytes) -> list[str]:
        """PCM16 8 kHz (any even length) -> the messages that queue it at the carrier."""
        return self._media_native(self._outbound().encode(pcm8k))

    def _media_native(self, native: bytes) -> list[str]:
        raise NotImplementedError

    def mark(self, name: str) -> list[str]:
        if not isinstance(name, str):
            raise TypeError("mark name must be a str")
        self._outbound()
        if not self.echoes_marks_on_clear:
            if len(self._pending_marks) >= MAX_PENDING_MARKS:
                del self._pending_marks[0]
            self._pending_marks.append(name)
        return self._mark_texts(name)

    def _mark_texts(self, name: str) -> list[str]:
        raise NotImplementedError

    def clear(self) -> list[str]:
        self._outbound().reset()
        for name in self._pending_marks:
            self._flushed_marks.add(name)
            self._flushed_report.append(MarkPlayed(name, flushed=True))
        self._pending_marks.clear()
        if len(self._flushed_marks) > MAX_PENDING_MARKS:  # a carrier that never echoes them
            self._flushed_marks.clear()
        return self._clear_texts()

    def _clear_texts(self) -> list[str]:
        raise NotImplementedError

    def take_flushed(self) -> list[MarkPlayed]:
        """The marks the last ``clear()`` flushed, to report to the core at once (Twilio's rule)."""
        out, self._flushed_report = self._flushed_report, []
        return out
