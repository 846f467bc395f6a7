"""Plivo ``<Stream bidirectional="true">`` audio streams (docs/reference/telephony.md §2.2), sans-I/O.

Call set-up: Plivo fetches our answer URL and runs the XML :func:`stream_xml` returns.
``contentType`` picks the audio both ways: ``audio/x-l16;rate=8000`` (Plivo's default),
``audio/x-l16;rate=16000`` or ``audio/x-mulaw;rate=8000``. Per-call data goes in
``extraHeaders`` (``k=v`` pairs, alphanumeric, ≤512 bytes) and comes back as the string
``extra_headers`` with ``start``.

From Plivo: ``start`` (``sequenceNumber`` is a number), ``media`` (``timestamp`` is Unix epoch ms
as a string, ``chunk`` a number), ``dtmf``, ``playedStream`` (a ``checkpoint`` has played) and
``clearedAudio``. **There is no websocket ``stop``**: the stream ends when the socket closes
(the status callback says why). To Plivo: ``playAudio``, ``checkpoint``, ``clearAudio``,
``sendDTMF``. The codec never changes between ``playAudio`` messages: we answer in the
format the stream started with.

Plivo's webhooks carry ``X-Plivo-Signature-V3`` (:func:`signature_v3`, as plivo-python 4.63
``validate_v3_signature`` computes it for POST).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

from voxroute.telephony.mediastream import (
    AudioFormat,
    CarrierProtocolError,
    Cleared,
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
    get_str,
    load_message,
    short,
)

CONTENT_TYPES = ("audio/x-l16;rate=8000", "audio/x-l16;rate=16000", "audio/x-mulaw;rate=8000")
SIGNATURE_HEADER = "X-Plivo-Signature-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
MAX_EXTRA_HEADERS = 512


def content_type_format(content_type: str) -> AudioFormat:
    """``audio/x-l16;rate=16000`` -> AudioFormat."""
    kind, _, rest = content_type.partition(";")
    rate = 8000
    if rest.strip().startswith("rate="):
        value = rest.strip()[5:]
        if not value.isdigit():
            raise CarrierProtocolError(f"bad rate in contentType {short(content_type)}")
        rate = int(value)
    return media_format(kind.strip(), rate)


def media_format(encoding: str, rate: int) -> AudioFormat:
    enc = encoding.lower()
    if enc in ("audio/x-l16", "l16", "audio/l16"):
        return AudioFormat("l16le", rate)
    if enc in ("audio/x-mulaw", "mulaw", "audio/pcmu", "ulaw"):
        return AudioFormat("ulaw", rate)
    raise CarrierProtocolError(f"unsupported Plivo encoding {short(encoding)}")


def content_type_of(fmt: AudioFormat) -> str:
    return "audio/x-mulaw" if fmt.encoding == "ulaw" else "audio/x-l16"


def extra_headers(params: Mapping[str, str]) -> str:
    """``extraHeaders``: ``k=v`` pairs joined by commas, alphanumeric only (Plivo's rule)."""
    for k, v in params.items():
        if not (k.isascii() and k.isalnum() and (v == "" or (v.isascii() and v.isalnum()))):
            raise ValueError(f"extraHeaders must be alphanumeric: {k}={v!r}")
    text = ",".join(f"{k}={v}" for k, v in params.items())
    if len(text) > MAX_EXTRA_HEADERS:
        raise ValueError(f"extraHeaders is {len(text)} bytes; Plivo allows {MAX_EXTRA_HEADERS}")
    return text


def parse_extra_headers(value: object) -> dict[str, str]:
    """The ``extra_headers`` string back: ``k1=v1,k2=v2`` (``;`` separators accepted too).
    Lenient about a JSON object in its place."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items() if isinstance(v, str | int | float)}
    if not isinstance(value, str):
        raise CarrierProtocolError(f"extra_headers must be a string, got {short(value)}")
    out: dict[str, str] = {}
    for part in value.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise CarrierProtocolError(f"extra_headers part {short(part)} is not key=value")
        out[k.strip()] = v.strip()
    return out


def stream_xml(
    ws_url: str,
    *,
    content_type: str = CONTENT_TYPES[0],
    headers: Mapping[str, str] | None = None,
    status_callback_url: str | None = None,
) -> str:
    """The answer XML: one bidirectional stream of the inbound track, the call held while it runs."""
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"contentType must be one of {CONTENT_TYPES}")
    attrs = {
        "bidirectional": "true",
        "keepCallAlive": "true",
        "audioTrack": "inbound",
        "contentType": content_type,
    }
    if headers:
        attrs["extraHeaders"] = extra_headers(headers)
    if status_callback_url:
        attrs["statusCallbackUrl"] = status_callback_url
        attrs["statusCallbackMethod"] = "POST"
    text = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Stream {text}>{escape(ws_url)}</Stream></Response>'


# ---------------------------------------------------------------- signature V3


def _sorted_params(params: Mapping[str, str | list[str]]) -> str:
    parts = []
    for key in sorted(params):
        value = params[key]
        if isinstance(value, list):
            parts.append("".join(f"{key}{v}" for v in sorted(value)))
        else:
            parts.append(f"{key}{value}")
    return "".join(parts)


def _sorted_query(params: Mapping[str, list[str]]) -> str:
    parts = []
    for key in sorted(params):
        parts.append("&".join(f"{key}={v}" for v in sorted(params[key])))
    return "&".join(parts)


def signature_v3(auth_token: str, url: str, nonce: str, params: Mapping[str, str | list[str]]) -> str:
    """``X-Plivo-Signature-V3`` of a POST: base64 HMAC-SHA256 over the URL (query sorted),
    ``?`` (or ``.`` after a query) when there are form params, the params sorted by key as
    ``keyvalue``, then ``.`` and the nonce (plivo-python 4.63 ``construct_post_url``)."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query = _sorted_query(parse_qs(parts.query, keep_blank_values=True))
    if query or params:
        base += "?" + query
    if query and params:
        base += "."
    base += _sorted_params(params) + "." + nonce
    mac = hmac.new(auth_token.encode(), base.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def validate_signature_v3(
    auth_token: str, url: str, nonce: str | None, signature: str | None, params: Mapping[str, str | list[str]]
) -> bool:
    if not nonce or not signature:
        return False
    expected = signature_v3(auth_token, url, nonce, params).encode()
    return any(hmac.compare_digest(expected, s.strip().encode()) for s in signature.split(","))


# ---------------------------------------------------------------- our side


class PlivoStream(MediaStreamCodec):
    carrier = "plivo"
    stream_id_field = "streamId"
    stream_events = frozenset({"media", "dtmf", "playedStream", "clearedAudio", "stop"})
    close_means_stop = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self._sid_json = ""
        self._play_head = ""  # '{"event":"playAudio","media":{"contentType":...,"sampleRate":...,"payload":"'
        self._first_ms: int | None = None

    @property
    def stream_id(self) -> str | None:
        return self.start.stream_id if self.start else None

    def _stream_event(self, event: str, msg: dict) -> list[StreamEvent]:
        if event == "media":
            body = get_obj(msg, "media", "message")
            track = get_str(body, "track", "media", required=False)
            payload = get_b64(body.get("payload"), "media.payload")
            get_int(body, "chunk", "media")
            if track not in (None, "inbound"):
                return []
            epoch_ms = get_int(body, "timestamp", "media")
            ts = None
            if epoch_ms is not None:  # Unix epoch ms: make it ms since the first media, as the core expects
                if self._first_ms is None:
                    self._first_ms = epoch_ms
                ts = max(0, epoch_ms - self._first_ms)
            return self._audio(payload, ts)
        if event == "dtmf":
            body = get_obj(msg, "dtmf", "message")
            return [Dtmf(get_digit(body, "digit", "dtmf"))]
        if event == "playedStream":
            name = msg.get("name")
            if name is None and isinstance(msg.get("playedStream"), dict):
                name = msg["playedStream"].get("name")
            if not isinstance(name, str):
                raise CarrierProtocolError(f"playedStream.name must be a string, got {short(name)}")
            return self._mark_played(name)
        if event == "clearedAudio":
            return [Cleared()]
        return self._stopped("stop")  # not in Plivo's protocol, but honour one if it comes

    def _start(self, msg: dict) -> StreamStart:
        seq = get_int(msg, "sequenceNumber", "start")
        body = get_obj(msg, "start", "message")
        sid = get_str(body, "streamId", "start", required=False) or get_str(msg, "streamId", "message")
        fmt = get_obj(body, "mediaFormat", "start")
        audio = media_format(
            get_str(fmt, "encoding", "start.mediaFormat") or "",
            get_int(fmt, "sampleRate", "start.mediaFormat", required=True) or 0,
        )
        tracks = body.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise CarrierProtocolError(f"start.tracks must be a list of strings, got {short(tracks)}")
        headers = body.get("extra_headers", msg.get("extra_headers"))
        params = parse_extra_headers(headers)
        start = StreamStart(
            call_id=get_str(body, "callId", "start") or "",
            stream_id=sid or "",
            audio=audio,
            account_id=get_str(body, "accountId", "start", required=False) or "",
            from_number=params.get("from") or None,
            to_number=params.get("to") or None,
            parameters=params,
            sequence_number=seq,
        )
        self._sid_json = compact({"streamId": start.stream_id})[1:-1]
        media_head = {"contentType": content_type_of(audio), "sampleRate": audio.sample_rate}
        self._play_head = '{"event":"playAudio","media":' + compact(media_head)[:-1] + ',"payload":"'
        return self._started(start)

    # -- outbound

    def _media_native(self, native: bytes) -> list[str]:
        if not native:
            return []
        return [self._play_head + b64(native) + '"}}']

    def _mark_texts(self, name: str) -> list[str]:
        return [f'{{"event":"checkpoint",{self._sid_json},"name":{json.dumps(name)}}}']

    def _clear_texts(self) -> list[str]:
        return [f'{{"event":"clearAudio",{self._sid_json}}}']

    def send_dtmf(self, digits: str) -> str:
        if not digits or any(d not in "0123456789*#ABCD" for d in digits):
            raise ValueError(f"not DTMF digits: {digits!r}")
        return compact({"event": "sendDTMF", "dtmf": digits})


# ---------------------------------------------------------------- Plivo's side


class PlivoPeer:
    """Plivo's end: builds what Plivo sends (number ``sequenceNumber``, epoch-ms timestamps)."""

    def __init__(
        self,
        stream_id: str,
        call_id: str,
        *,
        account_id: str = "MA00000000000000000000",
        content_type: str = CONTENT_TYPES[0],
        extra_headers: str = "",
        first_epoch_ms: int = 1_767_225_600_000,
        max_message_bytes: int = 1 << 20,
    ):
        self.stream_id = stream_id
        self.call_id = call_id
        self.account_id = account_id
        self.format = content_type_format(content_type)
        self.extra_headers = extra_headers
        self.max_message_bytes = max_message_bytes
        self._seq = 0
        self._chunk = 0
        self._ms = first_epoch_ms

    def _head(self, event: str) -> dict:
        self._seq += 1
        return {"event": event, "sequenceNumber": self._seq, "streamId": self.stream_id}

    def start(self) -> str:
        fmt = {"encoding": content_type_of(self.format), "sampleRate": self.format.sample_rate}
        body = {
            "callId": self.call_id,
            "streamId": self.stream_id,
            "accountId": self.account_id,
            "tracks": ["inbound"],
            "mediaFormat": fmt,
        }
        return compact({**self._head("start"), "start": body, "extra_headers": self.extra_headers})

    def media(self, native: bytes) -> str:
        self._chunk += 1
        ts = self._ms
        self._ms += len(native) // self.format.bytes_per_ms
        body = {"track": "inbound", "timestamp": str(ts), "chunk": self._chunk, "payload": b64(native)}
        return compact({**self._head("media"), "media": body})

    def dtmf(self, digit: str) -> str:
        return compact({**self._head("dtmf"), "dtmf": {"track": "inbound", "digit": digit}})

    def played_stream(self, name: str) -> str:
        return compact({**self._head("playedStream"), "name": name})

    def cleared_audio(self) -> str:
        return compact(self._head("clearedAudio"))

    def parse(self, text: str | bytes) -> tuple[str, bytes | str | None]:
        """What our server sent: ``("media", native bytes)``, ``("mark", name)``, ``("clear", None)``
        or ``("dtmf", digits)``."""
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if event == "playAudio":
            media = get_obj(msg, "media", "message")
            ctype = get_str(media, "contentType", "playAudio.media")
            rate = get_int(media, "sampleRate", "playAudio.media", required=True)
            if media_format(ctype or "", rate or 0) != self.format:
                raise CarrierProtocolError(f"playAudio as {ctype} {rate} Hz: the stream is {self.format}")
            return "media", get_b64(media.get("payload"), "playAudio.media.payload")
        if event in ("checkpoint", "clearAudio"):
            if msg.get("streamId") != self.stream_id:
                raise CarrierProtocolError(f"{event}: streamId {short(msg.get('streamId'))} is not ours")
            if event == "checkpoint":
                return "mark", get_str(msg, "name", "checkpoint")
            return "clear", None
        if event == "sendDTMF":
            return "dtmf", get_str(msg, "dtmf", "sendDTMF")
        raise CarrierProtocolError(f"unexpected event from the server: {short(event)}")
