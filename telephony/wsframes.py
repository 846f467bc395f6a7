"""The server side of RFC 6455 (websocket), sans-I/O: the opening handshake and the frames.

The media port (telephony/wsserver.py) drives this from an ``asyncio.Protocol``; nothing here
reads a socket or a clock. :func:`parse_request` reads the HTTP/1.1 upgrade request (size limits,
the websocket headers) and :func:`accept_response` / :func:`http_response` write the answer.
:class:`FrameParser` turns the bytes that follow into messages and control frames: client frames
must be masked, lengths are 7, 16 or 64 bits, fragments are joined, a text message must be UTF-8,
a message over ``max_size`` is refused (1009). A rule broken raises :class:`WsError` with the
close code to send (1002, 1007, 1009). :func:`frame` writes a server frame (unmasked).

No extension is negotiated (no compression: audio does not compress, and it costs CPU), so
a frame with a reserved bit set is a protocol error. Unmasking uses the ``websockets`` library's
C ``apply_mask`` when it is installed (it is a dependency), else a pure-Python XOR.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from http import HTTPStatus


def xor_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 5.3), as one big integer: the
    pure-Python unmasking, used when the ``websockets`` C speed-ups are missing."""
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


try:
    from websockets.speedups import apply_mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the C speed-ups are part of the websockets wheels
    apply_mask = xor_mask


GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
MAX_HEAD = 16 * 1024  # the upgrade request's request line and headers together
MAX_HEADERS = 128

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# close codes (RFC 6455 7.4.1)
NORMAL, GOING_AWAY, PROTOCOL_ERROR, NO_STATUS, ABNORMAL = 1000, 1001, 1002, 1005, 1006
INVALID_DATA, POLICY, TOO_BIG, INTERNAL_ERROR = 1007, 1008, 1009, 1011
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class HandshakeError(Exception):
    """The upgrade request is not one we serve: answer ``status`` (with ``headers``) and close."""

    def __init__(self, status: HTTPStatus, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status.value} {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers


class WsError(Exception):
    """The peer broke a framing rule: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """An upgrade request: ``path`` with its query, the headers in order as sent (latin-1)."""

    path: str
    headers: tuple[tuple[str, str], ...]
    key: str  # Sec-WebSocket-Key
    _index: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), or None."""
        if not self._index:
            for k, v in reversed(self.headers):
                self._index[k.lower()] = v
        return self._index.get(name.lower())


def parse_request(buffer: bytes | bytearray) -> tuple[Request, int] | None:
    """The upgrade request at the start of ``buffer`` and how many bytes it took; None while its
    head is incomplete. Raises :class:`HandshakeError` for a request that is too large, malformed
    or not a websocket upgrade (version 13)."""
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HandshakeError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head over 16 KiB")
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or not parts[1].startswith("/"):
        raise HandshakeError(HTTPStatus.BAD_REQUEST, "not an HTTP/1.1 request line")
    if parts[0] != "GET":
        raise HandshakeError(HTTPStatus.METHOD_NOT_ALLOWED, "a websocket upgrade is a GET")
    if len(lines) - 1 > MAX_HEADERS:
        raise HandshakeError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"over {MAX_HEADERS} headers")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or any(c in name for c in ' \t"(),/;<=>?@[\\]{}'):
            raise HandshakeError(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers.append((name, value.strip(" \t")))
    request = Request(parts[1], tuple(headers), "")
    upgrade = request.header("Upgrade") or ""
    connection = request.header("Connection") or ""
    if "websocket" not in _tokens(upgrade) or "upgrade" not in _tokens(connection):
        raise HandshakeError(HTTPStatus.UPGRADE_REQUIRED, "not a websocket upgrade",
                             (("Upgrade", "websocket"), ("Connection", "Upgrade")))  # fmt: skip
    if request.header("Sec-WebSocket-Version") != "13":
        raise HandshakeError(HTTPStatus.UPGRADE_REQUIRED, "websocket version 13 only",
                             (("Sec-WebSocket-Version", "13"),))  # fmt: skip
    key = request.header("Sec-WebSocket-Key") or ""
    try:
        raw_key = base64.b64decode(key.encode("latin-1"), validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        raise HandshakeError(HTTPStatus.BAD_REQUEST, "bad Sec-WebSocket-Key")
    return Request(parts[1], tuple(headers), key), end + 4


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a request's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def accept_response(request: Request) -> bytes:
    """The 101 that opens the websocket."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.key)}\r\n\r\n"
    ).encode("ascii")


def http_response(status: int, body: bytes = b"", headers: list[tuple[str, str]] | tuple = ()) -> bytes:
    """A plain HTTP answer to an upgrade request we refuse; the connection closes after it."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("content-length", "connection")]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; codes a peer may not send on the wire (1005, 1006) send an empty body."""
    if code in (NO_STATUS, ABNORMAL):
        return frame(OP_CLOSE, b"")
    return frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int  # 1005 when the frame had no body
    reason: str


Event = str | bytes | Ping | Pong | Close


class FrameParser:
    """Client frames in, whole messages (``str`` for text, ``bytes`` for binary) and control frames
    out, in order. ``feed`` takes whatever the socket read; a frame split over reads waits for its
    remainder. A broken rule sets :attr:`error` (a :class:`WsError`): ``feed`` still returns what
    came before it in that read. After an error or a :class:`Close` the parser takes nothing more."""

    def __init__(self, max_size: int = 1 << 20) -> None:
        self.max_size = max_size
        self._buf = bytearray()  # the start of a frame whose remainder has not arrived
        self._need = 0  # bytes _buf must hold before parsing it again (a frame's whole length once known)
        self._parts: list[bytes] = []  # the fragments of a message in progress
        self._parts_size = 0
        self._part_op = 0  # OP_TEXT or OP_BINARY while a fragmented message is open, else 0
        self._done = False
        self.error: WsError | None = None

    def feed(self, data: bytes) -> list[Event]:
        if self._done:
            return []
        if self._buf:  # a frame in progress: appended to (linear however it trickles in)
            self._buf += data
            if len(self._buf) < self._need:
                return []
            buf, self._buf = bytes(self._buf), bytearray()
        else:
            buf = data
        events: list[Event] = []
        pos, end = 0, len(buf)
        need = 2
        try:
            while end - pos >= 2:
                need = end - pos + 1  # a length field not complete yet: try again with any more
                b0, b1 = buf[pos], buf[pos + 1]
                if not b1 & 0x80:
                    raise WsError(PROTOCOL_ERROR, "client frame not masked")
                if b0 & 0x70:
                    raise WsError(PROTOCOL_ERROR, "reserved bit set (no extension negotiated)")
                opcode, n = b0 & 0x0F, b1 & 0x7F
                head = pos + 2
                if n == 126:
                    if end - head < 2:
                        break
                    n = int.from_bytes(buf[head : head + 2], "big")
                    head += 2
                elif n == 127:
                    if end - head < 8:
                        break
                    n = int.from_bytes(buf[head : head + 8], "big")
                    if n >> 63:
                        raise WsError(PROTOCOL_ERROR, "64-bit length with the top bit set")
                    head += 8
                if opcode >= 8:
                    if n > 125 or not b0 & 0x80:
                        raise WsError(PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
                elif self._parts_size + n > self.max_size:
                    raise WsError(TOO_BIG, f"message over {self.max_size} bytes")
                if end - head < 4 + n:
                    need = head + 4 + n - pos
                    break
                payload = apply_mask(buf[head + 4 : head + 4 + n], buf[head : head + 4])
                pos = head + 4 + n
                event = self._frame(b0 & 0x80, opcode, payload)
                if event is not None:
                    events.append(event)
                    if type(event) is Close:
                        self._done = True
                        break
            else:
                need = 2
        except WsError as exc:
            self._done = True
            self.error = exc
            return events
        if pos < end and not self._done:
            self._buf, self._need = bytearray(buf[pos:]), need
        return events

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._part_op:
                raise WsError(PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                return _text(payload) if opcode == OP_TEXT else payload
            self._part_op, self._parts, self._parts_size = opcode, [payload], len(payload)
            return None
        if opcode == OP_CONT:
            if not self._part_op:
                raise WsError(PROTOCOL_ERROR, "continuation frame outside a message")
            self._parts.append(payload)
            self._parts_size += len(payload)
            if not fin:
                return None
            whole, op = b"".join(self._parts), self._part_op
            self._part_op, self._parts, self._parts_size = 0, [], 0
            return _text(whole) if op == OP_TEXT else whole
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _close(payload)
        raise WsError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WsError(INVALID_DATA, "text message not UTF-8") from None


def _close(payload: bytes) -> Close:
    if not payload:
        return Close(NO_STATUS, "")
    if len(payload) < 2:
        raise WsError(PROTOCOL_ERROR, "close frame with a 1-byte body")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
        raise WsError(PROTOCOL_ERROR, f"close code {code} not allowed on the wire")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WsError(INVALID_DATA, "close reason not UTF-8") from None
    return Close(code, reason)
