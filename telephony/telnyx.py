"""Telnyx media streaming, bidirectional ``rtp`` mode (docs/reference/telephony.md §2.3), sans-I/O.

Call set-up: a TeXML webhook answered with ``<Connect><Stream bidirectionalMode="rtp">``
(:func:`connect_stream_texml`); TeXML webhooks are signed with Ed25519
(``telnyx-signature-ed25519`` over ``"{telnyx-timestamp}|{body}"``, :func:`verify_webhook`).

From Telnyx: ``connected``, ``start`` (top-level ``stream_id``, ``start.call_control_id``,
``media_format{encoding, sample_rate, channels}``), ``media`` (base64 RTP payload), ``dtmf``,
``mark``, ``stop`` and ``error``. Every event but ``connected`` carries one shared
``sequence_number`` counter, and **frame order is not guaranteed**: :class:`TelnyxStream`
reorders by it, holding at most ``reorder_window`` messages before skipping a gap.
To Telnyx (rtp mode, no stream id needed): ``media``, ``mark``, ``clear``.

Codecs handled: PCMU and PCMA at 8 kHz, and L16 at 8 or 16 kHz (RTP's L16 is network byte
order, RFC 3551; unverified against Telnyx). Our outbound audio uses the inbound codec, which
the TeXML asks for as ``bidirectionalCodec``.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import time
from collections.abc import Mapping
from xml.sax.saxutils import quoteattr

from voxroute.telephony.mediastream import (
    AudioFormat,
    CarrierError,
    CarrierProtocolError,
    Connected,
    Dtmf,
    MediaStreamCodec,
    StreamEvent,
    StreamStart,
    b64,
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

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
SIGNATURE_TOLERANCE_S = 300
MIN_CHUNK_MS = 20  # rtp mode: a media message holds 20 ms to 30 s of audio
REORDER_WINDOW = 5  # messages held while waiting for a missing sequence number (~100 ms of audio)
CODECS = {"PCMU": "ulaw", "PCMA": "alaw", "L16": "l16be"}


def codec_format(encoding: str, sample_rate: int) -> AudioFormat:
    enc = CODECS.get(encoding.upper())
    if enc is None:
        raise CarrierProtocolError(f"unsupported Telnyx codec {short(encoding)}: PCMU, PCMA or L16")
    return AudioFormat(enc, sample_rate)


def connect_stream_texml(
    ws_url: str,
    parameters: Mapping[str, str],
    *,
    codec: str = "PCMU",
    sample_rate: int = 8000,
) -> str:
    """The TeXML answer: a bidirectional rtp-mode stream in ``codec``, per-call ``<Parameter>``s."""
    codec_format(codec, sample_rate)  # refuse what we could not decode
    attrs = {
        "url": ws_url,
        "track": "inbound_track",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": codec,
        "bidirectionalSamplingRate": str(sample_rate),
    }
    head = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
    params = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in parameters.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Connect><Stream {head}>{params}</Stream></Connect></Response>"
    )


def verify_webhook(
    public_key: bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float | None = None,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> str | None:
    """``None`` if the Ed25519 signature over ``"{timestamp}|{body}"`` is good and fresh, else why not.
    ``public_key`` is the raw 32-byte key (the portal shows it base64-encoded)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not signature or not timestamp:
        return "missing signature or timestamp header"
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return f"bad timestamp {short(timestamp)}"
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance_s:
        return f"timestamp {age:.0f} s away from now (tolerance {tolerance_s} s)"
    try:
        sig = base64.b64decode(signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, timestamp.encode() + b"|" + body)
    except (binascii.Error, ValueError, InvalidSignature):
        return "signature does not verify"
    return None


class TelnyxStream(MediaStreamCodec):
    carrier = "telnyx"
    stream_id_field = "stream_id"

    def __init__(self, *, reorder_window: int = REORDER_WINDOW, **kw):
        super().__init__(**kw)
        self.reorder_window = reorder_window
        self._next_seq: int | None = None
        self._held: list[tuple[int, int, str, dict]] = []  # heap of (seq, arrival, event, msg)
        self._arrivals = 0
        self.reordered = 0  # messages that arrived out of order and were put back in place
        self.skipped = 0  # sequence numbers given up on
        self.late = 0  # messages that came after their place was passed (dropped)
        self._out = bytearray()  # outbound audio under 20 ms, waiting for more

    @property
    def stream_id(self) -> str | None:
        return self.start.stream_id if self.start else None

    def _dispatch(self, event: str, msg: dict) -> list[StreamEvent]:
        if event == "connected":
            if self.start is not None:
                raise CarrierProtocolError("'connected' after start")
            return [Connected(get_str(msg, "version", "connected", required=False))]
        if event not in ("start", "media", "dtmf", "mark", "stop", "error"):
            return []
        seq = get_int(msg, "sequence_number", event)
        if seq is None:
            return self._handle(event, msg)  # nothing to order by
        if self._next_seq is None:
            if event == "error":
                return self._handle(event, msg)  # an error before start: report it, order nothing
            if event != "start":
                raise CarrierProtocolError(f"{event!r} before start")
            self._next_seq = seq
        if seq < self._next_seq:
            self.late += 1
            return []  # a duplicate, or too late: its place in the stream has passed
        self._arrivals += 1
        heapq.heappush(self._held, (seq, self._arrivals, event, msg))
        if event == "stop":  # the stream is over: what is held goes out now, gaps no longer matter
            out = []
            while self._held and not self.stopped:
                _, _, ev, m = heapq.heappop(self._held)
                out += self._handle(ev, m)
            self._held.clear()
            return out
        if seq != self._next_seq:
            self.reordered += 1
        out: list[StreamEvent] = []
        while self._held:
            head = self._held[0][0]
            if head != self._next_seq:
                if len(self._held) <= self.reorder_window:
                    break
                self.skipped += head - self._next_seq  # give up on the gap
                self._next_seq = head
            _, _, ev, m = heapq.heappop(self._held)
            self._next_seq += 1
            if self.stopped:
                continue
            out += self._handle(ev, m)
        return out

    def _handle(self, event: str, msg: dict) -> list[StreamEvent]:
        if event == "start":
            return [self._start(msg)]
        if event == "error":
            body = get_obj(msg, "payload", "error", required=False) or get_obj(
                msg, "error", "message", required=False
            )
            code = body.get("code")
            detail = " ".join(str(body.get(k)) for k in ("title", "detail") if body.get(k)) or short(msg)
            return [CarrierError(None if code is None else str(code), detail)]
        self._stream_of(event, msg)
        if event == "media":
            body = get_obj(msg, "media", "message")
            track = get_str(body, "track", "media", required=False)
            payload = get_b64(body.get("payload"), "media.payload")
            get_int(body, "chunk", "media")
            ts = get_int(body, "timestamp", "media")
            if track not in (None, "inbound", "inbound_track"):
                return []
            return self._audio(payload, ts)
        if event == "dtmf":
            return [Dtmf(get_digit(get_obj(msg, "dtmf", "message"), "digit", "dtmf"))]
        if event == "mark":
            return self._mark_played(get_str(get_obj(msg, "mark", "message"), "name", "mark"))
        body = get_obj(msg, "stop", "message", required=False)
        return self._stopped(get_str(body, "reason", "stop", required=False))

    def _start(self, msg: dict) -> StreamStart:
        body = get_obj(msg, "start", "message")
        fmt = get_obj(body, "media_format", "start")
        channels = get_int(fmt, "channels", "start.media_format")
        if channels not in (None, 1):
            raise CarrierProtocolError(f"start.media_format.channels {channels}: mono only")
        audio = codec_format(
            get_str(fmt, "encoding", "start.media_format") or "",
            get_int(fmt, "sample_rate", "start.media_format") or 8000,
        )
        params = get_params(body.get("custom_parameters"), "start.custom_parameters")
        state = get_str(body, "client_state", "start", required=False)
        if state:
            params.setdefault("client_state", state)
        start = StreamStart(
            call_id=get_str(body, "call_control_id", "start") or "",
            stream_id=get_str(msg, "stream_id", "message") or "",
            audio=audio,
            account_id="",
            from_number=get_str(body, "from", "start", required=False),
            to_number=get_str(body, "to", "start", required=False),
            parameters=params,
            sequence_number=get_int(msg, "sequence_number", "start"),
        )
        return self._started(start)

    # -- outbound: rtp mode needs no stream id; a chunk holds at least 20 ms

    def _media_text(self, native: bytes) -> str:
        return f'{{"event":"media","media":{{"payload":"{b64(native)}"}}}}'

    def _media_native(self, native: bytes) -> list[str]:
        self._out += native
        if len(self._out) < self._min_bytes():
            return []  # under 20 ms: wait for more (or the mark that ends the segment)
        native, self._out = bytes(self._out), bytearray()
        return [self._media_text(native)]

    def _min_bytes(self) -> int:
        return MIN_CHUNK_MS * self._outbound().fmt.bytes_per_ms

    def _flush(self) -> list[str]:
        if not self._out:
            return []
        fmt = self._outbound().fmt
        silence = {"ulaw": b"\xff", "alaw": b"\xd5"}.get(fmt.encoding, b"\x00")
        self._out += silence * (self._min_bytes() - len(self._out))  # pad a short tail to 20 ms
        native, self._out = bytes(self._out), bytearray()
        return [self._media_text(native)]

    def _mark_texts(self, name: str) -> list[str]:
        return [*self._flush(), compact({"event": "mark", "mark": {"name": name}})]

    def _clear_texts(self) -> list[str]:
        self._out.clear()
        return ['{"event":"clear"}']


# ---------------------------------------------------------------- Telnyx's side


class TelnyxPeer:
    """Telnyx's end: builds what Telnyx sends (string numbers, one sequence counter), parses ours."""

    def __init__(
        self,
        stream_id: str,
        call_control_id: str,
        *,
        from_number: str = "",
        to_number: str = "",
        custom_parameters: Mapping[str, str] | None = None,
        codec: str = "PCMU",
        sample_rate: int = 8000,
        max_message_bytes: int = 1 << 20,
    ):
        self.stream_id = stream_id
        self.call_control_id = call_control_id
        self.from_number = from_number
        self.to_number = to_number
        self.custom_parameters = dict(custom_parameters or {})
        self.codec = codec
        self.format = codec_format(codec, sample_rate)
        self.max_message_bytes = max_message_bytes
        self._seq = 0
        self._chunk = 0
        self._ms = 0

    def _head(self, event: str) -> dict:
        self._seq += 1
        return {"event": event, "sequence_number": str(self._seq), "stream_id": self.stream_id}

    def connected(self) -> str:
        return compact({"event": "connected", "version": "1.0.0"})

    def start(self) -> str:
        body = {
            "call_control_id": self.call_control_id,
            "client_state": "",
            "from": self.from_number,
            "to": self.to_number,
            "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": self.codec, "sample_rate": self.format.sample_rate, "channels": 1},
        }
        return compact({**self._head("start"), "start": body})

    def media(self, native: bytes) -> str:
        self._chunk += 1
        ts = self._ms
        self._ms += len(native) // self.format.bytes_per_ms
        body = {"track": "inbound", "chunk": str(self._chunk), "timestamp": str(ts), "payload": b64(native)}
        return compact({**self._head("media"), "media": body})

    def dtmf(self, digit: str) -> str:
        return compact({**self._head("dtmf"), "dtmf": {"digit": digit}})

    def mark(self, name: str) -> str:
        return compact({**self._head("mark"), "mark": {"name": name}})

    def stop(self) -> str:
        return compact({**self._head("stop"), "stop": {"call_control_id": self.call_control_id}})

    def error(self, code: int, title: str, detail: str) -> str:
        return compact({**self._head("error"), "payload": {"code": code, "title": title, "detail": detail}})

    def parse(self, text: str | bytes) -> tuple[str, bytes | str | None]:
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if event == "media":
            payload = get_b64(get_obj(msg, "media", "message").get("payload"), "media.payload")
            ms = len(payload) / self.format.bytes_per_ms
            if not MIN_CHUNK_MS <= ms <= 30_000:
                raise CarrierProtocolError(f"media of {ms:g} ms: rtp mode takes 20 ms to 30 s")
            return "media", payload
        if event == "mark":
            return "mark", get_str(get_obj(msg, "mark", "message"), "name", "mark")
        if event == "clear":
            return "clear", None
        raise CarrierProtocolError(f"unexpected event from the server: {short(event)}")
