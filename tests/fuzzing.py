"""Fuzz targets for every codec and parser that reads bytes from the network, and their mutator.

Shared by ``tests/test_fuzz.py`` (10,000 inputs per target in CI) and ``bench/fuzz.py`` (1,000,000).

A :class:`Target` drives one parser the way production does (a carrier codec is fed a whole
stream of messages, the SIP user agent whole datagrams, the SSE decoder a byte stream cut at
arbitrary places) and names the errors the parser documents (``CarrierProtocolError``,
``SipParseError``, ``RtpError``, ...). Returning, or raising one of those, is a correct outcome;
any other exception (``IndexError``, ``KeyError``, a bare ``ValueError`` from ``int()``,
``RecursionError``, ...) is a bug.

Inputs are bytes, so a failure reproduces from its hex alone. Stream targets join their
messages with :data:`SEP`; byte-stream targets cut their input into reads with sizes drawn from
an RNG seeded by the input's CRC, so the cut is part of the input too. Generation is structure
aware: valid seed messages (from ``docs/reference`` and the peers' own builders) are mutated
as JSON trees, as header lines or as binary header fields, plus plain byte havoc and random
bytes, all from one ``random.Random(seed)``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import heapq
import json
import logging
import random
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from voxroute.agent.providers import openai_protocol as oai
from voxroute.agent.providers import sarvam_protocol as sarvam
from voxroute.audio import InboundFramer, alaw_to_pcm16, ulaw_to_pcm16
from voxroute.telephony import audiosocket, exotel, plivo, telnyx, twilio, twiml, wsframes
from voxroute.telephony.mediastream import CarrierProtocolError
from voxroute.telephony.routes.edge import parse_form
from voxroute.telephony.routes.exotel import basic_auth_ok
from voxroute.telephony.sip import auth, rtp, sdp
from voxroute.telephony.sip import message as sipmsg
from voxroute.telephony.sip.ua import UserAgent

SEP = b"\n\x00\xfe\x00\n"  # between the messages of one stream input (never inside a valid message)
MAX_INPUT = 96 * 1024  # over the SIP and Twilio message caps (64 kB), so those are exercised too

# ---------------------------------------------------------------- the mutator

INTERESTING_TEXT = [
    "",
    " ",
    "0",
    "-1",
    "1",
    "00",
    "+1",
    "1.5",
    "-0",
    "1e999",
    "NaN",
    "Infinity",
    "0x10",
    "1_0",
    "²",
    "³",
    "١٢٣",
    "٣",
    "߁",
    "𝟗",
    "\u2028",
    "\x00",
    "\r",
    "\n",
    "\r\n",
    "\t",
    "é",
    "ए",
    "\ud800",
    "9" * 20,
    "9" * 4301,
    "A" * 300,
    "=" * 3,
    ",",
    ";",
    ":",
    "<",
    ">",
    '"',
    "\\",
    "[",
    "{",
    "%00",
    "sip:a@[::1]:5060",
    "[::1",
    "]:",
    "@",
    "?",
    "#",
    "*",
    "D",
    "z9hG4bK",
    "audio",
    "RTP/AVP",
]
INTERESTING_JSON: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    8000,
    16000,
    65535,
    2**31,
    2**63,
    2**64 + 1,
    -(2**63),
    10**30,
    1.5,
    -0.0,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    [],
    {},
    [[]],
    {"": {}},
    ["inbound"],
    [1, "x", None],
]
# Raw JSON text that json.dumps cannot make: deep nesting, integers over CPython's 4300-digit limit.
RAW_JSON = ["[" * 5000, '{"a":' * 3000, "9" * 5000, "-" + "9" * 4400, "1" + "0" * 400 + "e5", "1e-99999"]
BYTE_TOKENS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80",
               b"\xe2\x80\xa8", b"\xc2\xb2", b":", b";", b",", b"=", b" ", b"\t", b"\"", b"\\", b"<", b">",
               b"[", b"]", b"{", b"}", b"9" * 5000, b"\r" * 64, b"\n" * 64]  # fmt: skip


def _dumps(obj: object, rng: random.Random) -> bytes:
    return json.dumps(obj, ensure_ascii=rng.random() < 0.3, allow_nan=True).encode("utf-8", "surrogatepass")


def _paths(obj: object, path: tuple = (), out: list | None = None, depth: int = 0) -> list[tuple]:
    out = [] if out is None else out
    out.append(path)
    if depth < 12:
        if isinstance(obj, dict):
            for k, v in obj.items():
                _paths(v, (*path, k), out, depth + 1)
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:20]):
                _paths(v, (*path, i), out, depth + 1)
    return out


def _get(obj: object, path: tuple) -> object:
    for p in path:
        obj = obj[p]  # type: ignore[index]
    return obj


def _set(obj: object, path: tuple, value: object) -> object:
    if not path:
        return value
    _get(obj, path[:-1])[path[-1]] = value  # type: ignore[index]
    return obj


def _variant(rng: random.Random, value: object, keys: list[str]) -> object:
    """A value near ``value`` (same type, a boundary) or of another type."""
    r = rng.random()
    if isinstance(value, str) and r < 0.45:
        choice = rng.randrange(7)
        if choice == 0 and value:  # base64 of something else (payloads)
            return base64.b64encode(
                rng.randbytes(rng.choice([0, 1, 2, 3, 159, 160, 161, 320, 321, 4000]))
            ).decode()
        if choice == 1 and value.isascii() and value.isdigit() and len(value) < 19:
            return str(rng.choice([0, 1, 2**31, 2**63, 10**18, 10**19, int(value) + 1]))
        if choice == 2:
            return value + rng.choice(INTERESTING_TEXT)
        if choice == 3:
            return value[: rng.randrange(len(value) + 1)]
        if choice == 4:
            return rng.choice(INTERESTING_TEXT) + value
        if choice == 5:
            return rng.choice(keys) if keys else value
        return value * rng.randint(2, 50)
    if isinstance(value, int | float) and not isinstance(value, bool) and r < 0.45 and abs(value) < 1e30:
        return rng.choice([value + 1, value - 1, -value, str(value), value * 2**32, float(value)])
    if r < 0.7:
        return copy.deepcopy(rng.choice(INTERESTING_JSON))
    if r < 0.85:
        return rng.choice(INTERESTING_TEXT)
    return rng.choice(keys) if keys else None


def mutate_json(rng: random.Random, data: bytes, keys: list[str]) -> bytes:
    """Structure-aware: change, drop, add or re-type one or more fields of a JSON message."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return havoc(rng, data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = _paths(obj)
        path = rng.choice(paths)
        target = _get(obj, path)
        r = rng.random()
        if r < 0.15 and path and isinstance(_get(obj, path[:-1]), dict):
            del _get(obj, path[:-1])[path[-1]]  # type: ignore[attr-defined]
        elif r < 0.3 and isinstance(target, dict):
            target[rng.choice(keys) if keys and rng.random() < 0.7 else rng.choice(INTERESTING_TEXT)] = (
                _variant(rng, "", keys)
            )
        elif r < 0.38 and isinstance(target, list) and target:
            target.append(copy.deepcopy(rng.choice(target)))
        elif r < 0.45:
            obj = _set(obj, path, [target] if rng.random() < 0.5 else {rng.choice(keys or ["x"]): target})
        else:
            obj = _set(obj, path, _variant(rng, target, keys))
    out = _dumps(obj, rng)
    if rng.random() < 0.08:  # a raw token json.dumps cannot produce, at a value position
        raw = rng.choice(RAW_JSON).encode()
        colon = [i for i in range(len(out)) if out[i : i + 1] == b":"]
        if colon:
            i = rng.choice(colon) + 1
            end = i
            while end < len(out) and out[end : end + 1] not in (b",", b"}"):
                end += 1
            out = out[:i] + raw + out[end:]
    return out


def mutate_lines(rng: random.Random, data: bytes, lines_pool: list[bytes]) -> bytes:
    """Line-aware (SIP, SDP, SSE): drop, repeat, fold, swap or rewrite lines and their values."""
    lines = data.split(b"\n")
    for _ in range(rng.choice((1, 1, 2, 3))):
        i = rng.randrange(len(lines))
        r = rng.random()
        if r < 0.12:
            del lines[i]
            if not lines:
                lines = [b""]
        elif r < 0.22:
            lines[i:i] = [lines[i]] * rng.choice((1, 2, 10, 300))
        elif r < 0.35 and lines_pool:
            lines.insert(i, rng.choice(lines_pool))
        elif r < 0.42:
            lines[i] = rng.choice((b" ", b"\t", b"  ")) + lines[i]  # a continuation line
        elif r < 0.5:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif r < 0.85:  # rewrite a value: after ':' '=' ' ' '/' ';' '@'
            line = lines[i]
            cuts = [k for k, c in enumerate(line) if c in b":= /;@<>,"]
            if cuts:
                k = rng.choice(cuts) + 1
                end = k + rng.randrange(0, len(line) - k + 1)
                token = rng.choice(INTERESTING_TEXT).encode("utf-8", "surrogatepass")
                if rng.random() < 0.3:
                    token = str(rng.choice([0, 1, 65535, 65536, 2**31, 2**32, 10**6, 10**7, 2**64])).encode()
                lines[i] = line[:k] + token + line[end:]
            else:
                lines[i] = havoc(rng, line)
        else:
            lines[i] = havoc(rng, lines[i])
    return b"\n".join(lines)


def mutate_struct(rng: random.Random, data: bytes) -> bytes:
    """Binary headers (RTP, AudioSocket): set a byte or a 16-bit field to a boundary value."""
    buf = bytearray(data)
    if not buf:
        return bytes(rng.randbytes(rng.randrange(1, 16)))
    for _ in range(rng.choice((1, 1, 2))):
        i = rng.randrange(min(len(buf), 24) if rng.random() < 0.8 else len(buf))
        if rng.random() < 0.5:
            buf[i] = rng.choice((0, 1, 2, 0x0F, 0x10, 0x20, 0x3F, 0x7F, 0x80, 0x8F, 0x90, 0xA0, 0xBF, 0xFF))
        elif i + 2 <= len(buf):
            buf[i : i + 2] = struct.pack("!H", rng.choice((0, 1, 2, 3, 4, 15, 16, 17, 320, 0x7FFF, 0xFFFF)))
    return bytes(buf)


def havoc(rng: random.Random, data: bytes) -> bytes:
    """Plain byte mutations (AFL's havoc, in small)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        n = len(buf)
        r = rng.randrange(9)
        if r == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif r == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif r == 2:
            i = rng.randrange(n + 1)
            buf[i:i] = rng.randbytes(rng.choice((1, 2, 4, 16)))
        elif r == 3 and n:
            i = rng.randrange(n)
            del buf[i : i + rng.choice((1, 2, 8, 64, n))]
        elif r == 4 and n:
            i = rng.randrange(n)
            j = min(n, i + rng.choice((1, 4, 16, 128)))
            buf[j:j] = buf[i:j] * rng.choice((1, 2, 16, 256))
        elif r == 5:
            i = rng.randrange(n + 1)
            buf[i:i] = rng.choice(BYTE_TOKENS)
        elif r == 6 and n:
            del buf[rng.randrange(n) :]
        elif r == 7 and n:  # replace a digit run by a boundary number
            digits = [i for i in range(n) if 0x30 <= buf[i] <= 0x39]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < n and 0x30 <= buf[j] <= 0x39:
                    j += 1
                buf[i:j] = str(
                    rng.choice([0, 1, 255, 256, 65535, 65536, 2**31, 2**32, 2**63, 10**20])
                ).encode()
        else:
            i = rng.randrange(n + 1)
            buf[i:i] = rng.choice(INTERESTING_TEXT).encode("utf-8", "surrogatepass")
    return bytes(buf[:MAX_INPUT])


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    """One parser: ``run(data)`` drives it; raising one of ``expected`` is a correct outcome."""

    name: str
    run: Callable[[bytes], object]
    expected: tuple[type[BaseException], ...]
    seeds: list[bytes]
    kind: str  # "json", "lines" or "binary": how messages are mutated
    stream: bool = False  # the input is several messages joined with SEP
    keys: list[str] = field(default_factory=list)  # JSON field names / header lines seen in the seeds
    pool: list[bytes] = field(default_factory=list)  # single messages, for splicing

    def __post_init__(self) -> None:
        for seed in self.seeds:
            for msg in seed.split(SEP) if self.stream else [seed]:
                self.pool.append(msg)
                if self.kind == "json":
                    try:
                        self.keys += [
                            str(p[-1]) for p in _paths(json.loads(msg)) if p and isinstance(p[-1], str)
                        ]
                    except ValueError:
                        pass
                elif self.kind == "lines":
                    self.keys += [line for line in msg.split(b"\n") if line.strip()]  # type: ignore[misc]
        self.keys = sorted(set(self.keys), key=str)

    def _mutate_one(self, rng: random.Random, msg: bytes) -> bytes:
        r = rng.random()
        if r < 0.6:
            if self.kind == "json":
                return mutate_json(rng, msg, self.keys)  # type: ignore[arg-type]
            if self.kind == "lines":
                return mutate_lines(rng, msg, self.keys)  # type: ignore[arg-type]
            return mutate_struct(rng, msg)
        if r < 0.95:
            return havoc(rng, msg)
        return rng.randbytes(rng.choice((1, 4, 12, 64, 512)))

    def mutate(self, rng: random.Random, data: bytes) -> bytes:
        """A new input from ``data`` (a seed or an earlier input)."""
        if rng.random() < 0.02:
            return rng.randbytes(rng.choice((0, 1, 3, 12, 100, 2000)))
        if not self.stream:
            out = self._mutate_one(rng, data)
            if rng.random() < 0.1:  # splice with another message
                other = rng.choice(self.pool)
                out = out[: rng.randrange(len(out) + 1)] + other[rng.randrange(len(other) + 1) :]
            return out[:MAX_INPUT]
        msgs = data.split(SEP)
        for _ in range(rng.choice((1, 1, 2))):
            r = rng.random()
            i = rng.randrange(len(msgs))
            if r < 0.1 and len(msgs) > 1:
                del msgs[i]
            elif r < 0.2:
                msgs.insert(i, msgs[i] if rng.random() < 0.5 else rng.choice(self.pool))
            elif r < 0.25:
                j = rng.randrange(len(msgs))
                msgs[i], msgs[j] = msgs[j], msgs[i]
            else:
                msgs[i] = self._mutate_one(rng, msgs[i])
        return SEP.join(msgs)[:MAX_INPUT]


def _messages(data: bytes) -> list[bytes]:
    return data.split(SEP)


def _text_or_bytes(msg: bytes) -> str | bytes:
    """A text frame when the bytes are UTF-8 (what a websocket hands out), else a binary frame."""
    try:
        return msg.decode("utf-8")
    except UnicodeDecodeError:
        return msg


def _reads(data: bytes) -> list[bytes]:
    """``data`` cut into socket reads; the cut depends only on ``data``."""
    rng = random.Random(zlib.crc32(data))
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 64, 1000, len(data)))
        out.append(data[i : i + n])
        i += n
    return out


def _unicode(value: object) -> None:
    """What a codec hands out is logged, stored and sent back: it must be Unicode text (a lone
    surrogate from a JSON escape is not, and fails only later, in ``encode``)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _unicode(k)
            _unicode(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _unicode(v)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _unicode(getattr(value, f.name))


def _feed_codec(codec: object, data: bytes) -> None:
    """A carrier stream: messages in order; a protocol error closes the stream, as the link does.
    Whatever came out, and whatever we would send back on the stream, must be Unicode text."""
    error = None
    for msg in _messages(data):
        try:
            for event in codec.feed(_text_or_bytes(msg)):  # type: ignore[attr-defined]
                _unicode(event)
        except CarrierProtocolError as exc:
            error = exc
            break
    if codec.start is not None:  # type: ignore[attr-defined]
        for text in (codec.media(bytes(640)), codec.mark("m"), codec.clear()):  # type: ignore[attr-defined]
            for t in [text] if isinstance(text, str) else text:
                t.encode("utf-8")
    if error is not None:
        raise error


def run_twilio(data: bytes) -> None:
    _feed_codec(twilio.TwilioStream(), data)


def run_exotel(data: bytes) -> None:
    _feed_codec(exotel.ExotelStream(), data)


def run_plivo(data: bytes) -> None:
    _feed_codec(plivo.PlivoStream(), data)


def run_telnyx(data: bytes) -> None:
    _feed_codec(telnyx.TelnyxStream(), data)


def run_carrier_peers(data: bytes) -> None:
    """What the fake carriers parse of ours (the emulators and tests read it)."""
    msg = _text_or_bytes(data)
    for parse in (
        twilio.TwilioPeer("MZ1", "CA1").feed,
        exotel.ExotelPeer("s1", "c1").parse,
        plivo.PlivoPeer("s1", "c1").parse,
        telnyx.TelnyxPeer("s1", "c1").parse,
    ):
        try:
            parse(msg)
        except CarrierProtocolError:
            pass


def run_sip_message(data: bytes) -> None:
    """A datagram through the parser and every header accessor the user agent uses."""
    msg = sipmsg.parse(data)
    for read in (
        lambda: msg.check_request(),
        lambda: [sipmsg.parse_via(v) for v in msg.get_all("Via")],
        lambda: [sipmsg.parse_name_addr(v) for v in msg.get_all("Contact")],
        lambda: sipmsg.parse_uri(msg.uri or ""),
        lambda: sipmsg.parse_uri(msg.from_addr.uri),
        lambda: sipmsg.parse_uri(msg.to_addr.uri),
        lambda: msg.get_all("Record-Route"),
        lambda: auth.parse_challenge(msg.get("WWW-Authenticate") or msg.get("Proxy-Authenticate") or ""),
        lambda: auth.check_authorization(msg.get("Authorization") or "", "INVITE", "r", "n", {"alice": "pw"}),
        lambda: str(msg),
        lambda: sipmsg.response(msg, 400, "Bad Request").to_bytes(),
    ):
        try:
            read()
        except sipmsg.SipParseError:
            pass
    msg.to_bytes()


def run_sip_auth(data: bytes) -> None:
    """Digest header values (RFC 3261 §22.4), as decoded from a message: the registrar's check
    answers a user or None, a challenge parses or is a SipParseError."""
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # the message parser refuses it before any header is read
    for line in value.splitlines()[:20] or [""]:  # one header value a line
        auth.check_authorization(line, "REGISTER", "trunk", "n1", {"alice": "s3cret", "": ""})
        try:
            auth.parse_challenge(line)
        except sipmsg.SipParseError:
            pass


def run_sip_stream(data: bytes) -> None:
    """A TCP byte stream cut into reads."""
    parser = sipmsg.StreamParser()
    for chunk in _reads(data):
        parser.feed(chunk)


def run_sip_ua(data: bytes) -> None:
    """Datagrams into the user agent (sans-I/O): it must answer or drop, never raise."""
    ua = UserAgent(("127.0.0.1", 5070), allow_from=["0.0.0.0/0"])
    for i, datagram in enumerate(_messages(data)):
        ua.receive(datagram, ("10.0.0.1", 5060), 0.1 * i)


def run_sdp(data: bytes) -> None:
    offer = sdp.parse(data)
    negotiated = sdp.negotiate(offer)
    sdp.answer(offer, "127.0.0.1", 40000)
    assert negotiated.codec in sdp.SUPPORTED


def run_rtp(data: bytes) -> None:
    """Datagrams of one stream: header, RFC 4733 events, jitter buffer."""
    jitter, dtmf = rtp.JitterBuffer(), rtp.DtmfReceiver()
    for datagram in _messages(data):
        try:
            packet = rtp.parse_packet(datagram)
            if packet.payload_type == 101:
                dtmf.feed(packet)
                jitter.skip(packet)
            else:
                jitter.push(packet)
        except rtp.RtpError:
            pass


def run_rtp_event(data: bytes) -> None:
    event = rtp.parse_dtmf(data)
    _ = event.digit


def run_audiosocket(data: bytes) -> None:
    parser = audiosocket.AudioSocketParser()
    first = True
    for chunk in _reads(data):
        for msg in parser.feed(chunk):
            if first:  # the parser guarantees a 16-byte UUID first
                uuid.UUID(bytes=msg.payload)
                first = False
            elif msg.kind == audiosocket.KIND_DTMF:
                msg.payload.decode("ascii", "replace")


def run_websocket_upgrade(data: bytes) -> None:
    """The media port's opening handshake: an upgrade request over socket reads."""
    head = b""
    for chunk in _reads(data):
        head += chunk
        parsed = wsframes.parse_request(head)
        if parsed is not None:
            request, used = parsed
            assert wsframes.accept_response(request).startswith(b"HTTP/1.1 101 ")
            _ = request.header("Host"), request.path, head[used:]
            return


def run_websocket_frames(data: bytes) -> None:
    """The media port's client frames after the handshake, over socket reads."""
    parser, closed = wsframes.FrameParser(max_size=64 * 1024), False
    for chunk in _reads(b"".join(_messages(data))):
        for event in parser.feed(chunk):
            assert not closed, "an event after the close frame"
            if isinstance(event, wsframes.Close):
                closed = True
                assert event.code == wsframes.NO_STATUS or 1000 <= event.code <= 4999, event
                event.reason.encode("utf-8")
            elif isinstance(event, str):
                event.encode("utf-8")
        if parser.error is not None:
            assert parser.feed(b"\x81\x80\0\0\0\0") == [], "a failed parser reads on"
            raise parser.error


def run_sarvam_realtime(data: bytes) -> None:
    _unicode(sarvam.parse_realtime(_text_or_bytes(data)))  # transcripts are spoken, logged, stored


def run_sarvam_legacy(data: bytes) -> None:
    _unicode(sarvam.parse_legacy(_text_or_bytes(data)))


def run_sarvam_tts(data: bytes) -> None:
    msg = sarvam.parse_tts(_text_or_bytes(data))
    _unicode(msg)
    if isinstance(msg, sarvam.TtsAudio):
        sarvam.strip_riff(msg.audio)


def run_sarvam_rest(data: bytes) -> None:
    """A REST body: the error envelope and ``Retry-After`` are read leniently (never raise), the
    TTS response strictly."""
    sarvam.parse_rest_error(data)
    header = data[:200].decode("latin-1")
    sarvam.retry_after_seconds({"retry-after": header, "retry-after-ms": header})
    sarvam.strip_riff(data)
    try:
        sarvam.strip_riff(sarvam.parse_tts_rest_response(data).audio)
    except sarvam.SarvamProtocolError:
        pass


def run_openai_stream(data: bytes) -> None:
    decoder = oai.ChatStreamDecoder()
    for chunk in _reads(data):
        for event in decoder.feed(chunk):
            _unicode(event)  # the answer is spoken, logged and stored


def run_openai_bodies(data: bytes) -> None:
    oai.parse_retry_after(data[:200].decode("latin-1"), now=0.0)  # a header: h11 caps its size
    for parse in (oai.parse_completion, oai.parse_error_body):
        try:
            _unicode(parse(data))
        except oai.OpenAIProtocolError:
            pass


_TELNYX_KEY = bytes(range(32))


def run_webhooks(data: bytes) -> None:
    """Signed webhooks: a form body and signature headers from the network; a verdict, never a raise."""
    parts = data.split(SEP)
    body = parts[0]
    header = parts[1].decode("latin-1") if len(parts) > 1 else None
    try:
        params = parse_form(body)
    except (UnicodeDecodeError, ValueError):
        params = {}
    twiml.validate_signature(
        "token", "https://example.com/twilio/voice", params, header, signature_settings=header
    )
    plivo.validate_signature_v3("token", "https://example.com/plivo/answer?a=1", header, header, params)
    telnyx.verify_webhook(_TELNYX_KEY, body, header, header, now=1_767_225_600)
    basic_auth_ok(header, "key:token")


def run_g711(data: bytes) -> None:
    """G.711 decoding of any bytes, and carrier payloads of any size through the inbound framer."""
    ulaw_to_pcm16(data)
    alaw_to_pcm16(data)
    for encoding in ("ulaw", "alaw", "l16be"):
        framer = InboundFramer(encoding)
        for i, packet in enumerate(_reads(data)):
            for pcm, _, _ in framer.push(packet, 20.0 * i):
                assert len(pcm) == 320


# ---------------------------------------------------------------- seeds


def _carrier_seeds() -> dict[str, list[bytes]]:
    ulaw = bytes(range(160))
    tw = twilio.TwilioPeer("MZ00000000000000000000000000000001", "CA00000000000000000000000000000003",
                           custom_parameters={"tenant": "acme"})  # fmt: skip
    twilio_seq = [tw.connected(), tw.start(), tw.media(ulaw), tw.media(ulaw), tw.dtmf("5"), tw.mark("turn7-seg2"),
                  tw.stop()]  # fmt: skip
    ex = exotel.ExotelPeer("a1b2c3", "c9d8", from_number="+919800000000", custom_parameters={"lead": "77"})
    exotel_seq = [
        ex.connected(),
        ex.start(),
        ex.media(bytes(1600)),
        ex.dtmf("5"),
        ex.mark("seg-4"),
        ex.stop(),
    ]
    ex16 = exotel.ExotelPeer("a1", "c1", sample_rate=16000)
    pl = plivo.PlivoPeer("87654321-aaaa", "c2", extra_headers="tenant=acme,from=919800000000")
    plivo_seq = [
        pl.start(),
        pl.media(bytes(320)),
        pl.dtmf("7"),
        pl.played_stream("seg-4"),
        pl.cleared_audio(),
    ]
    plm = plivo.PlivoPeer("s2", "c3", content_type="audio/x-mulaw;rate=8000")
    tx = telnyx.TelnyxPeer("32DE0DEA", "v3:abc", from_number="+15550001", custom_parameters={"t": "1"})
    telnyx_seq = [tx.connected(), tx.start(), tx.media(bytes(160)), tx.media(bytes(160)), tx.dtmf("1"),
                  tx.mark("seg-4"), tx.error(90046, "Media stream error", "bad payload"), tx.stop()]  # fmt: skip
    txl = telnyx.TelnyxPeer("s3", "v3:x", codec="L16", sample_rate=16000)
    enc = [s.encode() for s in twilio_seq]
    return {
        "twilio": [SEP.join(enc), SEP.join(enc[1:3]), SEP.join([*enc[1:2], *enc[2:4] * 3, enc[-1]])],
        "exotel": [SEP.join(s.encode() for s in exotel_seq),
                   SEP.join(s.encode() for s in (ex16.start(), ex16.media(bytes(3200)), ex16.stop()))],
        "plivo": [SEP.join(s.encode() for s in plivo_seq),
                  SEP.join(s.encode() for s in (plm.start(), plm.media(bytes(160)), plm.media(bytes(80))))],
        "telnyx": [SEP.join(s.encode() for s in telnyx_seq),
                   SEP.join(s.encode() for s in (txl.start(), txl.media(bytes(640)), txl.stop())),
                   SEP.join(s.encode() for s in (tx.start(), tx.media(bytes(160)), tx.media(bytes(160))))],
        "peers": [
            b'{"event":"media","streamSid":"MZ1","media":{"payload":"/w=="}}',
            b'{"event":"mark","streamSid":"MZ1","mark":{"name":"turn7-seg2"}}',
            b'{"event":"clear","stream_sid":"s1"}',
            b'{"event":"media","stream_sid":"s1","media":{"payload":"' + base64.b64encode(bytes(320)) + b'"}}',
            b'{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"/w=="}}',
            b'{"event":"checkpoint","streamId":"s1","name":"seg-4"}',
            b'{"event":"clearAudio","streamId":"s1"}',
            b'{"event":"media","media":{"payload":"/w=="}}',
        ],
    }  # fmt: skip


OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
OFFER6 = (
    b"v=0\r\no=- 2 2 IN IP6 ::1\r\ns=-\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n"
    b"m=audio 6000/2 RTP/AVP 0\r\nc=IN IP6 ::1\r\na=ptime:30\r\na=recvonly\r\nm=audio 7000 RTP/AVP 8\r\n"
)


def _invite(body: bytes = OFFER, host: bytes = b"10.0.0.1") -> bytes:
    return (
        b"INVITE sip:agent@127.0.0.1:5070 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP " + host + b":5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b'From: "Alice" <sip:alice@' + host + b">;tag=1928301774\r\n"
        b"To: <sip:agent@127.0.0.1:5070>\r\n"
        b"Call-ID: a84b4c76e66710@pc33\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:alice@" + host + b":5060;transport=udp>\r\n"
        b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def _sip_seeds() -> list[bytes]:
    invite = _invite()
    ack = invite.split(b"\r\n\r\n")[0].replace(b"INVITE", b"ACK").replace(b"Content-Length: " + str(len(OFFER)).encode(),
                                                                         b"Content-Length: 0") + b"\r\n\r\n"  # fmt: skip
    bye = ack.replace(b"ACK", b"BYE").replace(
        b"To: <sip:agent@127.0.0.1:5070>", b"To: <sip:agent@127.0.0.1:5070>;tag=9"
    )
    ok = (
        b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc\r\nf: <sip:voxroute@127.0.0.1>;tag=1\r\n"
        b"t: <sip:bob@10.0.0.2>;tag=2\r\ni: xyz@127.0.0.1\r\nCSeq: 2 INVITE\r\nm: <sip:bob@10.0.0.2:5062>\r\n"
        b'WWW-Authenticate: Digest realm="voxroute", nonce="abc123", qop="auth,auth-int", algorithm=MD5, opaque="o"\r\n'
        b'Authorization: Digest username="alice", realm="r", nonce="n", uri="sip:a@b", response="0123", nc=00000001\r\n'
        b"l: " + str(len(OFFER)).encode() + b"\r\n\r\n" + OFFER
    )
    refer = (
        b"REFER sip:voxroute@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK1\r\n"
        b"From: <sip:bob@[2001:db8::1]>;tag=3\r\nTo: sip:voxroute@127.0.0.1;tag=9\r\nCall-ID: a84b4c76e66710@pc33\r\n"
        b"CSeq: 3 REFER\r\nRefer-To: <sip:+15551234@carrier.example.com?Replaces=x>\r\n"
        b"Subject: a folded\r\n header line\r\nContent-Length: 0\r\n\r\n"
    )
    options = b"OPTIONS sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.9\nFrom: sip:x@y;tag=1\nTo: sip:z@w\ni: 1\nCSeq: 1 OPTIONS\n\n"
    return [invite, ack, bye, ok, refer, options, _invite(OFFER6, b"[::1]")]


def _sip_auth_seeds() -> list[bytes]:
    challenge = auth.Challenge("trunk", "n1", "MD5", ("auth",), "op")
    good = auth.authorization(challenge, "REGISTER", "sip:trunk", "alice", "s3cret", cnonce="c1", nc=1)
    return [
        good.encode(),
        b'Digest realm="trunk", nonce="n1", qop="auth,auth-int", algorithm=SHA-256, opaque="o", stale=TRUE',
        b'Digest username="alice", realm="trunk", nonce="n1", uri="sip:trunk", response="00", nc=0000000f',
    ]


def _rtp_seeds() -> list[bytes]:
    sender = rtp.RtpSender(0, dtmf_pt=101, ssrc=0x1234)
    audio = [sender.audio(bytes([0xFF]) * 160) for _ in range(4)]
    dtmf = sender.dtmf("5", 60)
    ext = bytes([0x90, 0x00, 0, 9, 0, 0, 0, 160, 0, 0, 0x12, 0x34, 0xBE, 0xDE, 0, 1, 1, 2, 3, 4]) + bytes(160)
    padded = bytes([0xA0, 0x08, 0, 10, 0, 0, 1, 64, 0, 0, 0x12, 0x34]) + bytes(160) + bytes([0, 0, 3])
    csrc = bytes([0x82, 0x00, 0, 11, 0, 0, 1, 224, 0, 0, 0x12, 0x34]) + bytes(8) + bytes(160)
    return [
        SEP.join([*audio, *dtmf, *audio[1:]]),
        SEP.join([audio[1], audio[0], audio[3]]),
        ext,
        padded,
        csrc,
    ]


def _audiosocket_seeds() -> list[bytes]:
    head = audiosocket.uuid_frame(uuid.UUID(int=0x1234))
    return [
        head
        + audiosocket.audio_frame(bytes(320)) * 3
        + audiosocket.dtmf_frame("5")
        + audiosocket.hangup_frame(),
        head + audiosocket.audio_frame(bytes(640), 0x12) + audiosocket.frame(0xFF, b"\x01"),
        head + audiosocket.audio_frame(bytes(960), 0x13) + audiosocket.audio_frame(bytes(480), 0x16),
    ]


SARVAM_REALTIME = [
    b'{"event": "session.begin", "request_id": "20260301_9d2a", "config": {"model": "saaras:v3-realtime", "language_code": "hi-IN", "encoding": "mulaw", "sample_rate": 8000, "prompt": null, "threshold": 0.5}}',
    b'{"event": "vad.speech_start", "utterance_idx": 0, "confidence": 0.93}',
    b'{"event": "transcript.partial", "utterance_idx": 0, "text": "mera order"}',
    b'{"event": "vad.speech_end", "utterance_idx": 0, "confidence": 0.88}',
    '{"event": "transcript.final", "utterance_idx": 0, "text": "मेरा ऑर्डर कहाँ है?", "language": "hi", "language_confidence": 0.9, "start_s": 0, "end_s": 1.5}'.encode(),
    b'{"event": "config.updated", "applied": ["language_code"]}',
    b'{"event": "pong"}',
    b'{"event": "error", "code": "invalid_config", "is_fatal": false, "message": "stream_type cannot change", "status_code": 400}',
    b'{"event": "session.end", "request_id": "20260301_9d2a", "total_duration_s": 63.2, "total_utterances": 7, "audio_duration_s": 61.9}',
]  # fmt: skip
SARVAM_LEGACY = [
    b'{"type": "data", "data": {"request_id": "20260301_7b1e", "transcript": "mera order kahan hai", "timestamps": null, "language_code": "hi-IN", "language_probability": null, "metrics": {"audio_duration": 2.14, "processing_latency": 0.18}}}',
    b'{"type": "events", "data": {"signal_type": "START_SPEECH", "occured_at": 1767225600.123}}',
    b'{"type": "event", "data": {"event_type": "END_SPEECH", "occured_at": 1767225602.480}}',
    b'{"type": "error", "data": {"error": "Invalid sample rate", "code": "invalid_request"}}',
]  # fmt: skip
SARVAM_TTS = [
    b'{"type": "audio", "data": {"content_type": "audio/mulaw", "audio": "' + base64.b64encode(bytes(160)) + b'", "request_id": "20260301_1"}}',
    b'{"type": "audio", "data": {"content_type": "audio/wav", "audio": "' + base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(16) + b"data\x04\x00\x00\x00\x01\x02\x03\x04") + b'"}}',
    b'{"type": "event", "data": {"event_type": "final", "message": "done"}}',
    b'{"type": "error", "data": {"message": "Text too long", "code": "422", "request_id": "r1"}}',
    b'{"type": "error", "data": {"message": "Rate limited", "code": 429}}',
]  # fmt: skip
SARVAM_REST = [
    b'{"request_id": "r-1", "audios": ["' + base64.b64encode(bytes(160)) + b'", "/w=="]}',
    b'{"error": {"message": "Invalid API key", "code": "invalid_api_key_error", "request_id": "r-2"}}',
    b'{"detail": "Not found"}',
    b"5",
]  # fmt: skip
SSE = [
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"content":"Your order"},"finish_reason":null}]}\r\n\r\n'
    b'data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\r'
    b'data: {"id":"gen-1","choices":[],"usage":{"prompt_tokens":42,"completion_tokens":5,"total_tokens":47,"cost":0.0001,"completion_tokens_details":{"reasoning_tokens":3}}}\n\n'
    b"data: [DONE]\n\n",
    b'data: {"id":"c2","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning":"think","tool_calls":[{"index":0,"id":"call_ab12","type":"function","function":{"name":"lookup_order","arguments":""}}]},"finish_reason":null}]}\n'
    b'data: {"id":"c2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"order_id\\":"}}]},"finish_reason":null}]}\n'
    b'event: message\nid: 7\nretry: 100\n'
    b'data: {"id":"c2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"A17\\"}"}}]},"finish_reason":null}]}\n'
    b'data: {"id":"c2","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n'
    b"data: [DONE]\n",
    b'data: {"id":"gen-123","model":"openai/gpt-5.4-mini","error":{"code":"server_error","message":"Provider disconnected unexpectedly","metadata":{"raw":"x"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"error","error":{"code":502,"message":"upstream"}}]}\n\n',
]  # fmt: skip
OPENAI_BODIES = [
    b'{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{\\"a\\":1}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    b'{"error":{"code":429,"message":"Rate limit exceeded","metadata":{"provider_name":"x"}}}',
    b'{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}',
    b'{"error":{"message":"x","code":"e","request_id":"r","param":"messages"}}',
    b'{"detail":"Not Found"}',
    b"Wed, 21 Oct 2015 07:28:00 GMT",
    b"120",
]  # fmt: skip


def _ws_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x12\x34\x56\x78") -> bytes:
    """A masked client frame, as a websocket client sends it (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 * fin | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 * fin | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 * fin | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


WS_UPGRADE = (
    b"GET /twilio/stream?x=1 HTTP/1.1\r\nHost: voice.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nX-Twilio-Signature: abc=\r\n\r\n"
)


def _websocket_seeds() -> list[bytes]:
    """Frame streams, each frame its own message (mutated alone, dropped, repeated, swapped)."""
    media = twilio.TwilioPeer("MZ1", "CA1").media(bytes(160)).encode()
    return [
        SEP.join(
            [_ws_frame(1, media), _ws_frame(1, media), _ws_frame(9, b"hi"), _ws_frame(8, b"\x03\xe8bye")]
        ),
        SEP.join(
            [
                _ws_frame(1, media[:100], fin=False),
                _ws_frame(10, b""),
                _ws_frame(0, media[100:]),
                _ws_frame(2, bytes(300)),
                _ws_frame(2, bytes(60000)),
            ]
        ),  # fmt: skip
        SEP.join([_ws_frame(1, "é€😀".encode(), fin=False), _ws_frame(0, b""), _ws_frame(8, b"")]),
    ]


def _webhook_seeds() -> list[bytes]:
    form = b"CallSid=CA123&From=%2B15550001&To=%2B15550002&AccountSid=AC1&Digits=1%232"
    return [
        form + SEP + b"0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
        form + SEP + b"Basic a2V5OnRva2Vu",
        b"a=1&a=2&b=" + SEP + b"sig1, sig2",
        b'{"data":{"event_type":"call.initiated"}}' + SEP + base64.b64encode(bytes(64)),
    ]


def _g711_seeds() -> list[bytes]:
    return [bytes(range(256)), bytes(160), bytes(1), bytes(321)]


def build_targets() -> list[Target]:
    c = _carrier_seeds()
    sip_seeds = _sip_seeds()
    carrier = (CarrierProtocolError,)
    return [
        Target("twilio", run_twilio, carrier, c["twilio"], "json", stream=True),
        Target("exotel", run_exotel, carrier, c["exotel"], "json", stream=True),
        Target("plivo", run_plivo, carrier, c["plivo"], "json", stream=True),
        Target("telnyx", run_telnyx, carrier, c["telnyx"], "json", stream=True),
        Target("carrier_peers", run_carrier_peers, (), c["peers"], "json"),
        Target("sip_message", run_sip_message, (sipmsg.SipParseError,), sip_seeds, "lines"),
        Target("sip_auth", run_sip_auth, (), _sip_auth_seeds(), "lines"),
        Target("sip_stream", run_sip_stream, (sipmsg.SipParseError,), [b"\r\n".join(sip_seeds[:4])], "lines"),
        Target(
            "sip_ua", run_sip_ua, (), [SEP.join(sip_seeds[:3]), SEP.join(sip_seeds[3:])], "lines", stream=True
        ),
        Target("sdp", run_sdp, (sipmsg.SipParseError,), [OFFER, OFFER6], "lines"),
        Target("rtp", run_rtp, (), _rtp_seeds(), "binary", stream=True),
        Target(
            "rtp_event", run_rtp_event, (rtp.RtpError,), [p for p, _ in rtp.dtmf_packets("#", 40)], "binary"
        ),
        Target(
            "audiosocket", run_audiosocket, (audiosocket.AudioSocketError,), _audiosocket_seeds(), "binary"
        ),
        Target("websocket_upgrade", run_websocket_upgrade, (wsframes.HandshakeError,), [WS_UPGRADE], "lines"),
        Target(
            "websocket_frames",
            run_websocket_frames,
            (wsframes.WsError,),
            _websocket_seeds(),
            "binary",
            stream=True,
        ),
        Target(
            "sarvam_realtime", run_sarvam_realtime, (sarvam.SarvamProtocolError,), SARVAM_REALTIME, "json"
        ),
        Target("sarvam_legacy", run_sarvam_legacy, (sarvam.SarvamProtocolError,), SARVAM_LEGACY, "json"),
        Target("sarvam_tts", run_sarvam_tts, (sarvam.SarvamProtocolError,), SARVAM_TTS, "json"),
        Target("sarvam_rest", run_sarvam_rest, (), SARVAM_REST, "json"),
        Target("openai_stream", run_openai_stream, (oai.OpenAIProtocolError,), SSE, "lines"),
        Target("openai_bodies", run_openai_bodies, (), OPENAI_BODIES, "json"),
        Target("webhooks", run_webhooks, (), _webhook_seeds(), "lines", stream=True),
        Target("g711", run_g711, (), _g711_seeds(), "binary"),
    ]


# ---------------------------------------------------------------- the loop


@dataclass
class Bug:
    target: str
    data: bytes
    error: str

    def report(self) -> str:
        return f"{self.target}: {self.error}\n  reproduce: bytes.fromhex({self.data.hex()!r})"


@dataclass
class Result:
    target: str
    inputs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # "ok" or exception type: count
    bugs: list[Bug] = field(default_factory=list)
    bug_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    slowest_s: float = 0.0
    slowest_input: bytes = b""


_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|\d+|<[^>]*>")


def outcome_of(exc: BaseException) -> str:
    """An error's kind: its type and message with numbers and quoted values blanked out."""
    return f"{type(exc).__name__}: {_VARYING.sub('_', str(exc))[:60]}"


def check(target: Target, data: bytes) -> str | None:
    """``None`` when ``target`` takes ``data``, the documented error's kind when it raises one;
    any other exception propagates (a bug)."""
    try:
        target.run(data)
    except target.expected as exc:
        return outcome_of(exc)
    return None


class Fuzzer:
    """One target's fuzzing state (RNG, corpus, results), so a run can go on in slices:
    ``bench/fuzz.py`` takes every target a slice at a time and stops at a deadline."""

    def __init__(self, target: Target, seed: int = 0, *, max_bugs: int = 20, timed: bool = False) -> None:
        self.target = target
        self.rng = random.Random(f"{target.name}:{seed}")
        self.corpus = list(target.seeds)
        self.seen: set[str] = set()
        self.max_bugs = max_bugs
        self.timed = timed
        self.result = Result(target.name)
        self.slowest: list[tuple[float, int, bytes]] = []  # heap of the 8 slowest (seconds, index, input)

    def run(self, inputs: int) -> Result:
        """``inputs`` more mutated inputs; every unexpected exception is a :class:`Bug`."""
        target, rng, corpus, res = self.target, self.rng, self.corpus, self.result
        logging.disable(logging.CRITICAL)  # the user agent logs every malformed datagram
        start = time.perf_counter()
        try:
            for _ in range(inputs):
                i = res.inputs
                if i < len(target.seeds):
                    data = target.seeds[i]
                else:
                    data = target.mutate(rng, corpus[rng.randrange(len(corpus))])
                t0 = time.perf_counter() if self.timed else 0.0
                try:
                    outcome = check(target, data) or "ok"
                except Exception as exc:  # noqa: BLE001 - any other exception is what we are looking for
                    res.bug_kinds[type(exc).__name__] = res.bug_kinds.get(type(exc).__name__, 0) + 1
                    outcome = "BUG " + outcome_of(exc)
                    if len(res.bugs) < self.max_bugs:
                        res.bugs.append(Bug(target.name, data, f"{type(exc).__name__}: {str(exc)[:120]}"))
                if self.timed:
                    dt = time.perf_counter() - t0
                    if len(self.slowest) < 8:
                        heapq.heappush(self.slowest, (dt, res.inputs, data))
                    elif dt > self.slowest[0][0]:
                        heapq.heapreplace(self.slowest, (dt, res.inputs, data))
                res.outcomes[outcome] = res.outcomes.get(outcome, 0) + 1
                # keep inputs that reach somewhere new (a new outcome, a new size of clean parse)
                key = outcome if outcome != "ok" else f"ok{len(data).bit_length()}"
                if key not in self.seen or (outcome == "ok" and rng.random() < 0.01):
                    self.seen.add(key)
                    if len(corpus) < 400:
                        corpus.append(data)
                    else:
                        corpus[rng.randrange(len(target.seeds), len(corpus))] = data
                res.inputs += 1
        finally:
            logging.disable(logging.NOTSET)
            res.seconds += time.perf_counter() - start
        return res

    def retime_slowest(self, repeat: int = 3) -> Result:
        """Time the slowest inputs again, best of ``repeat``: on a shared machine a single
        slow run may be the scheduler's doing, a slow input is slow every time."""
        res = self.result
        res.slowest_s, res.slowest_input = 0.0, b""
        logging.disable(logging.CRITICAL)
        try:
            for _, _, data in self.slowest:
                best = float("inf")
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    try:
                        check(self.target, data)
                    except Exception:  # noqa: BLE001, S110 - counted as a bug when it first ran
                        pass
                    best = min(best, time.perf_counter() - t0)
                if best > res.slowest_s:
                    res.slowest_s, res.slowest_input = best, data
        finally:
            logging.disable(logging.NOTSET)
        return res


def fuzz(target: Target, inputs: int, seed: int = 0, *, max_bugs: int = 20, timed: bool = False) -> Result:
    """``inputs`` mutated inputs through ``target`` (seeds first); see :class:`Fuzzer`."""
    return Fuzzer(target, seed, max_bugs=max_bugs, timed=timed).run(inputs)


TARGETS = build_targets()
BY_NAME = {t.name: t for t in TARGETS}
