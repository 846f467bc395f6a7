"""Twilio Media Streams (bidirectional ``<Connect><Stream>``), sans-I/O.

:class:`TwilioStream` is our side of one stream, a :class:`~telephony.mediastream.MediaStreamCodec`
like the other carriers': ``feed(text)`` parses what Twilio sends into the carrier-neutral events,
``media(pcm)``, ``mark(name)`` and ``clear()`` build what we send. No awaits, no sockets: the
websocket link (``telephony/wslink.py``) is a thin loop around it.

:class:`TwilioPeer` is the other end (what Twilio sends, and parsing what we send), for the fake
carrier and for tests.

Wire facts (docs/reference/telephony.md §1.2-1.3): ``sequenceNumber``, ``chunk`` and ``timestamp``
arrive as strings, ``mediaFormat.sampleRate``/``channels`` as numbers, so integers are parsed
leniently from either form. ``streamSid`` format is not validated (old streams used UUIDs).
Unknown event types are ignored for forward compatibility; a known event that is malformed is
a :class:`TwilioProtocolError`. Twilio echoes every pending mark itself when we ``clear``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass

from voxroute.audio import pcm16_to_ulaw
from voxroute.telephony.mediastream import (
    AudioFormat,
    CarrierProtocolError,
    Connected,
    Dtmf,
    MediaStreamCodec,
    StreamEvent,
    StreamStart,
    compact,
    get_b64,
    get_digit,
    get_int,
    get_obj,
    get_params,
    get_str,
    load_message,
    short,
)

MAX_MESSAGE_BYTES = 64 * 1024
INBOUND_TRACKS = frozenset({"inbound", "inbound_track"})
MULAW = "audio/x-mulaw"


# A message from (or to) Twilio that breaks the Media Streams protocol: the error every carrier
# codec raises.
TwilioProtocolError = CarrierProtocolError


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


# ---------------------------------------------------------------- our side


class TwilioStream(MediaStreamCodec):
    """Our end of one Twilio media stream.

    ``connected`` comes first if at all, once; ``start`` must come before media/dtmf/mark, once;
    nothing may follow ``stop``. Inbound-track media of any size is re-framed to exact 20 ms
    ``Audio`` events (160 bytes of mu-law, the remainder kept for the next message, timestamps
    derived from the message's): Twilio sends 20 ms, but a payload of another size is audio, not a
    reason to drop the call. Media of another track (the agent's own audio echoed back) is dropped.
    """

    carrier = "twilio"
    stream_id_field = "streamSid"
    echoes_marks_on_clear = True

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES):
        super().__init__(max_message_bytes=max_message_bytes)
        self.connected = False
        self._sid_json = ""  # '"streamSid":"MZ..."', JSON-quoted once for the hot path

    # Twilio's log lines name no carrier: "call CA1: ...", "media stream from ...".
    @property
    def call_label(self) -> str:
        return "call"

    @property
    def stream_label(self) -> str:
        return "media stream"

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_id if self.start else None

    # -- inbound

    def _connected(self, msg: dict) -> list[StreamEvent]:
        if self.connected or self.start is not None:
            raise TwilioProtocolError("duplicate or late 'connected'")
        self.connected = True
        get_str(msg, "protocol", "connected", required=False)
        return [Connected(get_str(msg, "version", "connected", required=False))]

    def _stream_event(self, event: str, msg: dict) -> list[StreamEvent]:
        get_int(msg, "sequenceNumber", event)
        if event == "media":
            body = get_obj(msg, "media", "message")
            payload = get_b64(body.get("payload"), "media.payload")
            track = get_str(body, "track", "media", required=False)
            get_int(body, "chunk", "media")
            timestamp = get_int(body, "timestamp", "media")
            if track is not None and track not in INBOUND_TRACKS:
                return []  # the agent's own audio echoed back
            return self._audio(payload, timestamp)
        if event == "dtmf":
            body = get_obj(msg, "dtmf", "message")
            get_str(body, "track", "dtmf", required=False)
            return [Dtmf(get_digit(body, "digit", "dtmf"))]
        if event == "mark":
            return self._mark_played(get_str(get_obj(msg, "mark", "message"), "name", "mark"))
        body = get_obj(msg, "stop", "message", required=False)
        get_str(body, "callSid", "stop", required=False)
        get_str(body, "accountSid", "stop", required=False)
        return self._stopped(None)

    def _start(self, msg: dict) -> StreamStart:
        seq = get_int(msg, "sequenceNumber", "start")
        body = get_obj(msg, "start", "message")
        sid = get_str(body, "streamSid", "start", required=False) or get_str(msg, "streamSid", "message")
        top_sid = msg.get("streamSid")
        if top_sid is not None and top_sid != sid:
            raise TwilioProtocolError(f"start.streamSid {sid!r} differs from streamSid {short(top_sid)}")
        call_sid = get_str(body, "callSid", "start")
        account_sid = get_str(body, "accountSid", "start", required=False) or ""
        tracks = body.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise TwilioProtocolError(f"start.tracks must be a list of strings, got {short(tracks)}")
        fmt = get_obj(body, "mediaFormat", "start")
        encoding = get_str(fmt, "encoding", "start.mediaFormat")
        rate = get_int(fmt, "sampleRate", "start.mediaFormat", required=True)
        channels = get_int(fmt, "channels", "start.mediaFormat", required=True)
        if (encoding, rate, channels) != (MULAW, 8000, 1):
            raise TwilioProtocolError(
                f"unsupported mediaFormat {encoding!r} {rate} Hz {channels} channel(s): only {MULAW} 8000 Hz mono"
            )
        start = StreamStart(
            call_id=call_sid,
            stream_id=sid,
            audio=AudioFormat("ulaw", 8000),
            account_id=account_sid,
            parameters=get_params(body.get("customParameters"), "start.customParameters"),
            sequence_number=seq,
        )
        self._started(start)  # empty ids are errors there
        self._sid_json = compact({"streamSid": sid})[1:-1]
        return start

    # -- outbound

    def _media_native(self, native: bytes) -> list[str]:
        return [self.media_ulaw(native)]

    def media_ulaw(self, ulaw: bytes) -> str:
        """Raw mu-law (no WAV header: Twilio would play it as noise) -> one ``media`` message."""
        self._outbound()
        payload = base64.b64encode(ulaw).decode("ascii")
        return f'{{"event":"media",{self._sid_json},"media":{{"payload":"{payload}"}}}}'

    def _mark_texts(self, name: str) -> list[str]:
        return [f'{{"event":"mark",{self._sid_json},"mark":{{"name":{json.dumps(name)}}}}}']

    def _clear_texts(self) -> list[str]:
        return [f'{{"event":"clear",{self._sid_json}}}']


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
        return compact({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return compact(
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
        return compact(
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
        return compact(
            {"event": "dtmf", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, "dtmf": body}
        )

    def mark(self, name: str) -> str:
        body = {"name": name}
        return compact(
            {"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, "mark": body}
        )

    def stop(self) -> str:
        body = {"accountSid": self.account_sid, "callSid": self.call_sid}
        return compact(
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
            payload = get_b64(get_obj(msg, "media", "message").get("payload"), "media.payload")
            if payload[:4] == b"RIFF":
                raise TwilioProtocolError("media.payload starts with a RIFF header: send raw mu-law")
            return [OutboundMedia(payload)]
        if event == "mark":
            return [OutboundMark(get_str(get_obj(msg, "mark", "message"), "name", "mark"))]
        return [OutboundClear()]
