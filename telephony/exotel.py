"""Exotel Voicebot applet, bidirectional stream (docs/reference/telephony.md §2.1), sans-I/O.

Exotel is the websocket client. Field names are snake_case; numbers arrive as strings.
Audio is **raw PCM s16le mono, base64**, at 8 kHz unless the stream URL asks for
``?sample-rate=16000`` (or 24000); inbound messages carry about 100 ms. We send ``media``,
``mark`` and ``clear``. Outbound ``media`` must be a multiple of 320 bytes and 3.2 kB to
100 kB long, otherwise a 20 ms stall follows the short packet: :class:`ExotelStream` buffers
audio until a full-size chunk is ready and flushes the rest (padded to 320 bytes) before a mark,
so a reply's tail is never held back. ExoML ``StartStream`` may send mu-law, so
``audio/x-mulaw`` is accepted too (then we answer in mu-law).

:class:`ExotelStream` is our side; :class:`ExotelPeer` is Exotel's (for the fake carrier and tests).
"""

from __future__ import annotations

from collections.abc import Mapping

from voxroute.telephony.mediastream import (
    AudioFormat,
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

CHUNK_QUANTUM = 320  # outbound media must be a multiple of this many bytes
MIN_CHUNK = 3200
MAX_CHUNK = 100_000 // CHUNK_QUANTUM * CHUNK_QUANTUM
PCM_ENCODINGS = frozenset({"audio/x-raw", "raw", "pcm", "audio/x-l16", "audio/l16", "slin", "linear16"})
MULAW_ENCODINGS = frozenset({"audio/x-mulaw", "mulaw", "ulaw", "audio/pcmu"})


def audio_format(encoding: str, sample_rate: int) -> AudioFormat:
    enc = encoding.split(";")[0].strip().lower()
    if enc in PCM_ENCODINGS:
        return AudioFormat("l16le", sample_rate)
    if enc in MULAW_ENCODINGS:
        return AudioFormat("ulaw", sample_rate)
    raise CarrierProtocolError(f"unsupported Exotel media_format.encoding {short(encoding)}")


class ExotelStream(MediaStreamCodec):
    carrier = "exotel"
    stream_id_field = "stream_sid"

    def __init__(self, *, min_chunk: int = MIN_CHUNK, **kw):
        super().__init__(**kw)
        if min_chunk % CHUNK_QUANTUM or not 0 < min_chunk <= MAX_CHUNK:
            raise ValueError(f"min_chunk must be a positive multiple of {CHUNK_QUANTUM} up to {MAX_CHUNK}")
        self.min_chunk = min_chunk
        self._out = bytearray()  # native audio waiting for a full-size chunk
        self._sid_json = ""

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_id if self.start else None

    def _connected(self, msg: dict) -> list[StreamEvent]:
        if self.start is not None:
            raise CarrierProtocolError("'connected' after start")
        return [Connected(get_str(msg, "version", "connected", required=False))]

    def _stream_event(self, event: str, msg: dict) -> list[StreamEvent]:
        if event == "media":
            body = get_obj(msg, "media", "message")
            payload = get_b64(body.get("payload"), "media.payload")
            get_int(body, "chunk", "media")
            return self._audio(payload, get_int(body, "timestamp", "media"))
        if event == "dtmf":
            body = get_obj(msg, "dtmf", "message")
            return [Dtmf(get_digit(body, "digit", "dtmf"), get_int(body, "duration", "dtmf"))]
        if event == "mark":
            name = get_str(get_obj(msg, "mark", "message"), "name", "mark")
            return self._mark_played(name)
        body = get_obj(msg, "stop", "message", required=False)
        return self._stopped(get_str(body, "reason", "stop", required=False))

    def _start(self, msg: dict) -> StreamStart:
        seq = get_int(msg, "sequence_number", "start")
        body = get_obj(msg, "start", "message")
        sid = get_str(body, "stream_sid", "start", required=False) or get_str(msg, "stream_sid", "message")
        top = msg.get("stream_sid")
        if top is not None and top != sid:
            raise CarrierProtocolError(f"start.stream_sid {sid!r} differs from stream_sid {short(top)}")
        fmt = get_obj(body, "media_format", "start")
        encoding = get_str(fmt, "encoding", "start.media_format", required=False) or "audio/x-raw"
        rate = get_int(fmt, "sample_rate", "start.media_format") or 8000
        bits = get_int(fmt, "bit_rate", "start.media_format")
        audio = audio_format(encoding, rate)
        if audio.encoding == "l16le" and bits not in (None, 16):
            raise CarrierProtocolError(f"start.media_format.bit_rate {bits}: only 16-bit PCM")
        start = StreamStart(
            call_id=get_str(body, "call_sid", "start") or "",
            stream_id=sid or "",
            audio=audio,
            account_id=get_str(body, "account_sid", "start", required=False) or "",
            from_number=get_str(body, "from", "start", required=False),
            to_number=get_str(body, "to", "start", required=False),
            parameters=get_params(body.get("custom_parameters"), "start.custom_parameters"),
            sequence_number=seq,
        )
        self._sid_json = compact({"stream_sid": start.stream_id})[1:-1]  # '"stream_sid":"..."'
        return self._started(start)

    # -- outbound

    def _media_text(self, native: bytes) -> str:
        return f'{{"event":"media",{self._sid_json},"media":{{"payload":"{b64(native)}"}}}}'

    def _media_native(self, native: bytes) -> list[str]:
        self._out += native
        texts = []
        while len(self._out) >= self.min_chunk:
            n = min(len(self._out), MAX_CHUNK) // CHUNK_QUANTUM * CHUNK_QUANTUM
            texts.append(self._media_text(bytes(self._out[:n])))
            del self._out[:n]
        return texts

    def flush(self) -> list[str]:
        """Send what is buffered now, padded with silence to a multiple of 320 bytes."""
        if not self._out:
            return []
        silence = b"\xff" if self._outbound().fmt.encoding == "ulaw" else b"\x00"
        self._out += silence * (-len(self._out) % CHUNK_QUANTUM)
        texts = [
            self._media_text(bytes(self._out[i : i + MAX_CHUNK])) for i in range(0, len(self._out), MAX_CHUNK)
        ]
        self._out.clear()
        return texts

    def _mark_texts(self, name: str) -> list[str]:
        return [*self.flush(), f'{{"event":"mark",{self._sid_json},"mark":{compact({"name": name})}}}']

    def _clear_texts(self) -> list[str]:
        self._out.clear()
        return [f'{{"event":"clear",{self._sid_json}}}']


# ---------------------------------------------------------------- Exotel's side


class ExotelPeer:
    """Exotel's end: builds what Exotel sends (string numbers, one sequence counter), parses ours."""

    def __init__(
        self,
        stream_sid: str,
        call_sid: str,
        *,
        account_sid: str = "voxroute1",
        from_number: str = "",
        to_number: str = "",
        custom_parameters: Mapping[str, str] | None = None,
        sample_rate: int = 8000,
        max_message_bytes: int = 1 << 20,
    ):
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.from_number = from_number
        self.to_number = to_number
        self.custom_parameters = dict(custom_parameters or {})
        self.sample_rate = sample_rate
        self.max_message_bytes = max_message_bytes
        self._seq = 0
        self._chunk = 0
        self._ms = 0

    def _head(self, event: str) -> dict:
        self._seq += 1
        return {"event": event, "sequence_number": str(self._seq), "stream_sid": self.stream_sid}

    def connected(self) -> str:
        return compact({"event": "connected"})

    def start(self) -> str:
        body = {
            "stream_sid": self.stream_sid,
            "call_sid": self.call_sid,
            "account_sid": self.account_sid,
            "from": self.from_number,
            "to": self.to_number,
            "custom_parameters": self.custom_parameters,
            "media_format": {
                "encoding": "audio/x-raw",
                "sample_rate": str(self.sample_rate),
                "bit_rate": "16",
            },
        }
        return compact({**self._head("start"), "start": body})

    def media(self, pcm: bytes) -> str:
        """One inbound chunk of s16le at the stream's rate; the timestamp advances by its length."""
        self._chunk += 1
        ts = self._ms
        self._ms += len(pcm) * 1000 // (2 * self.sample_rate)
        body = {"chunk": str(self._chunk), "timestamp": str(ts), "payload": b64(pcm)}
        return compact({**self._head("media"), "media": body})

    def dtmf(self, digit: str, duration_ms: int = 100) -> str:
        return compact({**self._head("dtmf"), "dtmf": {"digit": digit, "duration": str(duration_ms)}})

    def mark(self, name: str) -> str:
        return compact({**self._head("mark"), "mark": {"name": name}})

    def stop(self, reason: str = "callended") -> str:
        body = {"call_sid": self.call_sid, "account_sid": self.account_sid, "reason": reason}
        return compact({**self._head("stop"), "stop": body})

    def parse(self, text: str | bytes) -> tuple[str, bytes | str | None]:
        """What our server sent: ``("media", pcm bytes)``, ``("mark", name)`` or ``("clear", None)``."""
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if event not in ("media", "mark", "clear"):
            raise CarrierProtocolError(f"unexpected event from the server: {short(event)}")
        if msg.get("stream_sid") != self.stream_sid:
            raise CarrierProtocolError(f"{event}: stream_sid {short(msg.get('stream_sid'))} is not ours")
        if event == "media":
            payload = get_b64(get_obj(msg, "media", "message").get("payload"), "media.payload")
            if len(payload) % CHUNK_QUANTUM:
                raise CarrierProtocolError(
                    f"media of {len(payload)} bytes: not a multiple of {CHUNK_QUANTUM}"
                )
            if len(payload) > MAX_CHUNK:
                raise CarrierProtocolError(f"media of {len(payload)} bytes: over 100 kB")
            return "media", payload
        if event == "mark":
            return "mark", get_str(get_obj(msg, "mark", "message"), "name", "mark")
        return "clear", None
