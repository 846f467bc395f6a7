"""Twilio Media Streams (bidirectional ``<Connect><Stream>``), sans-I/O.

:class:`TwilioStream` is our side of one stream: ``feed(text)`` parses what Twilio sends into
frozen dataclasses, ``media(pcm)``, ``mark(name)`` and ``clear()`` build what we send. No awaits,
no sockets: the websocket layer (``voxroute.telephony.app``) is a thin loop around it.

:class:`TwilioPeer` is the other end (what Twilio sends, and parsing what we send), for the fake
carrier and for tests.

Wire facts (docs/reference/telephony.md §1.2-1.3): ``sequenceNumber``, ``chunk`` and ``timestamp``
arrive as strings, ``mediaFormat.sampleRate``/``channels`` as numbers, so integers are parsed
leniently from either form. ``streamSid`` format is not validated (old streams used UUIDs).
Unknown event types are ignored for forward compatibility; a known event that is malformed is
a :class:`TwilioProtocolError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from voxroute.telephony.mediastream import (
    CarrierProtocolError,
    get_int,
    get_obj,
    get_params,
    get_str,
    load_message,
    short,
)

from voxroute.audio import InboundFramer, pcm16_to_ulaw, ulaw_to_pcm16

MAX_MESSAGE_BYTES = 64 * 1024
INBOUND_FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz = 216 base64 characters (what Twilio sends)
DTMF_DIGITS = frozenset("0123456789*#ABCD")
MULAW = "audio/x-mulaw"


# A message from (or to) Twilio that breaks the Media Streams protocol: the error every carrier
# codec raises, so the field helpers of telephony.mediastream serve Twilio too.
TwilioProtocolError = CarrierProtocolError


# ---------------------------------------------------------------- events Twilio sends us


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    media_format: MediaFormat
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: Mapping[str, str] = field(default_factory=dict, hash=False)
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    payload: bytes  # raw mu-law as received (one 20 ms frame of it on the inbound track)
    pcm: bytes  # the same audio as PCM16 8 kHz
    track: str | None = None
    chunk: int | None = None
    timestamp: int | None = None  # ms since the stream started
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    track: str | None = None
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    call_sid: str | None = None
    account_sid: str | None = None
    sequence_number: int | None = None


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop


# ---------------------------------------------------------------- events we send Twilio


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    payload: bytes  # raw mu-law


@dataclass(frozen=True, slots=True)
class OutboundMark:
    name: str


@dataclass(frozen=True, slots=True)
class OutboundClear:
    pass


OutboundEvent = OutboundMedia | OutboundMark | OutboundClear


# ---------------------------------------------------------------- field helpers


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise TwilioProtocolError(f"{where} must be a base64 string, got {short(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TwilioProtocolError(f"{where} is not valid base64: {exc}") from None


def _compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- our side


class TwilioStream:
    """Our end of one Twilio media stream.

    ``feed`` returns zero or more events per message: zero for unknown event types. The stream
    must ``start`` before media/dtmf/mark, ``start`` comes once, and nothing may follow ``stop``.
    Inbound-track media of any size is re-framed to exact 20 ms ``Media`` events (160 bytes of
    mu-law, the remainder kept for the next message, timestamps derived from the message's):
    Twilio sends 20 ms, but a payload of another size is audio, not a reason to drop the call.
    """

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes
        self._framer = InboundFramer("ulaw")
        self.connected = False
        self.start: Start | None = None
        self.stopped = False
        self._sid_json: str | None = None  # the streamSid, JSON-quoted once for the hot path

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start else None

    # -- inbound

    def feed(self, text: str | bytes) -> list[TwilioEvent]:
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if not isinstance(event, str):
            raise TwilioProtocolError(f"message has no string 'event' field: got {short(event)}")
        parse = self._PARSERS.get(event)
        if parse is None:
            return []  # an event type newer than this code: ignore it
        if self.stopped:
            raise TwilioProtocolError(f"{event!r} after stop")
        if event not in ("connected", "start"):
            if self.start is None:
                raise TwilioProtocolError(f"{event!r} before start")
            sid = msg.get("streamSid")
            if sid is not None and sid != self.start.stream_sid:
                raise TwilioProtocolError(
                    f"{event!r} for stream {short(sid)}, expected {self.start.stream_sid!r}"
                )
        if parse is TwilioStream._media:
            return self._media(msg)
        return [parse(self, msg)]

    def _connected(self, msg: dict) -> Connected:
        if self.connected or self.start is not None:
            raise TwilioProtocolError("duplicate or late 'connected'")
        self.connected = True
        return Connected(
            get_str(msg, "protocol", "connected", required=False),
            get_str(msg, "version", "connected", required=False),
        )

    def _start(self, msg: dict) -> Start:
        if self.start is not None:
            raise TwilioProtocolError("duplicate 'start'")
        seq = get_int(msg, "sequenceNumber", "start")
        body = get_obj(msg, "start", "message")
        sid = get_str(body, "streamSid", "start", required=False) or get_str(msg, "streamSid", "message")
        top_sid = msg.get("streamSid")
        if top_sid is not None and top_sid != sid:
            raise TwilioProtocolError(f"start.streamSid {sid!r} differs from streamSid {short(top_sid)}")
        if not sid:
            raise TwilioProtocolError("start.streamSid is empty")
        call_sid = get_str(body, "callSid", "start")
        if not call_sid:
            raise TwilioProtocolError("start.callSid is empty")
        account_sid = get_str(body, "accountSid", "start", required=False) or ""
        tracks_raw = body.get("tracks", ["inbound"])
        if not isinstance(tracks_raw, list) or not all(isinstance(t, str) for t in tracks_raw):
            raise TwilioProtocolError(f"start.tracks must be a list of strings, got {short(tracks_raw)}")
        fmt = get_obj(body, "mediaFormat", "start")
        media_format = MediaFormat(
            encoding=get_str(fmt, "encoding", "start.mediaFormat"),
            sample_rate=get_int(fmt, "sampleRate", "start.mediaFormat", required=True),
            channels=get_int(fmt, "channels", "start.mediaFormat", required=True),
        )
        if (media_format.encoding, media_format.sample_rate, media_format.channels) != (MULAW, 8000, 1):
            raise TwilioProtocolError(f"unsupported mediaFormat {media_format}: only {MULAW} 8000 Hz mono")
        start = Start(
            stream_sid=sid,
            call_sid=call_sid,
            account_sid=account_sid,
            media_format=media_format,
            tracks=tuple(tracks_raw),
            custom_parameters=get_params(body.get("customParameters"), "start.customParameters"),
            sequence_number=seq,
        )
        self.start = start
        self._sid_json = json.dumps(sid)
        return start

    def _media(self, msg: dict) -> list[TwilioEvent]:
        seq = get_int(msg, "sequenceNumber", "media")
        body = get_obj(msg, "media", "message")
        payload = _b64(body.get("payload"), "media.payload")
        if not payload:
            raise TwilioProtocolError("media.payload is empty")
        track = get_str(body, "track", "media", required=False)
        chunk = get_int(body, "chunk", "media")
        timestamp = get_int(body, "timestamp", "media")
        if track not in (None, "inbound", "inbound_track"):  # the agent's own audio echoed back: as sent
            return [Media(payload, ulaw_to_pcm16(payload), track, chunk, timestamp, seq)]
        return [
            Media(ulaw, pcm, track, chunk, ts, seq)
            for pcm, ulaw, ts in self._framer.push(payload, timestamp)
            if ulaw is not None
        ]

    def _dtmf(self, msg: dict) -> Dtmf:
        seq = get_int(msg, "sequenceNumber", "dtmf")
        body = get_obj(msg, "dtmf", "message")
        digit = get_str(body, "digit", "dtmf")
        if digit not in DTMF_DIGITS:
            raise TwilioProtocolError(f"dtmf.digit {short(digit)} is not a keypad digit")
        return Dtmf(digit=digit, track=get_str(body, "track", "dtmf", required=False), sequence_number=seq)

    def _mark(self, msg: dict) -> Mark:
        seq = get_int(msg, "sequenceNumber", "mark")
        body = get_obj(msg, "mark", "message")
        return Mark(name=get_str(body, "name", "mark"), sequence_number=seq)

    def _stop(self, msg: dict) -> Stop:
        seq = get_int(msg, "sequenceNumber", "stop")
        body = msg.get("stop")
        if body is None:
            body = {}
        elif not isinstance(body, dict):
            raise TwilioProtocolError(f"message.stop must be an object, got {short(body)}")
        self.stopped = True
        return Stop(
            call_sid=get_str(body, "callSid", "stop", required=False),
            account_sid=get_str(body, "accountSid", "stop", required=False),
            sequence_number=seq,
        )

    _PARSERS = {
        "connected": _connected,
        "start": _start,
        "media": _media,
        "dtmf": _dtmf,
        "mark": _mark,
        "stop": _stop,
    }

    # -- outbound

    def _sid(self) -> str:
        if self._sid_json is None:
            raise RuntimeError("no streamSid yet: nothing can be sent before 'start'")
        return self._sid_json

    def media(self, pcm16: bytes) -> str:
        """PCM16 8 kHz (any even length) -> one ``media`` message of raw mu-law."""
        return self.media_ulaw(pcm16_to_ulaw(pcm16))

    def media_ulaw(self, ulaw: bytes) -> str:
        """Raw mu-law (no WAV header: Twilio would play it as noise) -> one ``media`` message."""
        payload = base64.b64encode(ulaw).decode("ascii")
        return f'{{"event":"media","streamSid":{self._sid()},"media":{{"payload":"{payload}"}}}}'

    def mark(self, name: str) -> str:
        if not isinstance(name, str):
            raise TypeError("mark name must be a str")
        return f'{{"event":"mark","streamSid":{self._sid()},"mark":{{"name":{json.dumps(name)}}}}}'

    def clear(self) -> str:
        return f'{{"event":"clear","streamSid":{self._sid()}}}'


# ---------------------------------------------------------------- Twilio's side


class TwilioPeer:
    """The Twilio end of a media stream: builds what Twilio sends, parses what we send.

    Numbers go out as strings the way Twilio sends them, with one ``sequenceNumber`` counter shared
    by all events, ``chunk`` counting from 1, and ``timestamp`` in ms since the stream started.
    """

    def __init__(
        self,
        stream_sid: str,
        call_sid: str,
        *,
        account_sid: str = "AC00000000000000000000000000000000",
        custom_parameters: Mapping[str, str] | None = None,
        first_timestamp_ms: int = 0,
        max_message_bytes: int = 1 << 20,
    ):
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters or {})
        self.max_message_bytes = max_message_bytes
        self._seq = 0
        self._chunk = 0
        self._ms = first_timestamp_ms

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def connected(self) -> str:
        return _compact({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return _compact(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": self.account_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": MULAW, "sampleRate": 8000, "channels": 1},
                },
            }
        )

    def media(self, ulaw: bytes, *, timestamp_ms: int | None = None) -> str:
        """One inbound ``media`` message; the timestamp advances by the payload's duration."""
        self._chunk += 1
        if timestamp_ms is not None:
            self._ms = timestamp_ms
        ts = self._ms
        self._ms += len(ulaw) // 8
        media = {"track": "inbound", "chunk": str(self._chunk), "timestamp": str(ts)}
        media["payload"] = base64.b64encode(ulaw).decode("ascii")
        return _compact(
            {
                "event": "media",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "media": media,
            }
        )

    def media_pcm(self, pcm16: bytes, *, timestamp_ms: int | None = None) -> str:
        return self.media(pcm16_to_ulaw(pcm16), timestamp_ms=timestamp_ms)

    def dtmf(self, digit: str) -> str:
        body = {"track": "inbound_track", "digit": digit}
        return _compact(
            {"event": "dtmf", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, "dtmf": body}
        )

    def mark(self, name: str) -> str:
        body = {"name": name}
        return _compact(
            {"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, "mark": body}
        )

    def stop(self) -> str:
        body = {"accountSid": self.account_sid, "callSid": self.call_sid}
        return _compact(
            {"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, "stop": body}
        )

    def feed(self, text: str | bytes) -> list[OutboundEvent]:
        """Parse one message our server sent (``media``, ``mark``, ``clear``)."""
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if event not in ("media", "mark", "clear"):
            raise TwilioProtocolError(f"unexpected event from the server: {short(event)}")
        if msg.get("streamSid") != self.stream_sid:
            raise TwilioProtocolError(
                f"{event} for stream {short(msg.get('streamSid'))}, expected {self.stream_sid!r}"
            )
        if event == "media":
            payload = _b64(get_obj(msg, "media", "message").get("payload"), "media.payload")
            if payload[:4] == b"RIFF":
                raise TwilioProtocolError("media.payload starts with a RIFF header: send raw mu-law")
            return [OutboundMedia(payload)]
        if event == "mark":
            return [OutboundMark(get_str(get_obj(msg, "mark", "message"), "name", "mark"))]
        return [OutboundClear()]
