"""SIP messages (RFC 3261 §7, §20, §25), sans-I/O: bytes in, :class:`SipMessage` out, and back.

``parse(datagram)`` reads one message (UDP); :class:`StreamParser` cuts messages out of a TCP
byte stream by ``Content-Length``. Header names are stored in their canonical long form
(compact forms such as ``v``, ``i``, ``f`` are expanded), values as written. Anything malformed
raises :class:`SipParseError`, never another exception: the parser is fuzzed.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 64 * 1024
MAX_HEADERS = 200
SIP_VERSION = "SIP/2.0"
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7: branches of compliant UAs start with it

COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "r": "Refer-To",
    "b": "Referred-By",
    "o": "Event",
    "u": "Allow-Events",
    "x": "Session-Expires",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "Content-Encoding",
        "Allow",
        "Supported",
        "Require",
        "Route",
        "Record-Route",
        "User-Agent",
        "Server",
        "Expires",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Authorization",
        "Proxy-Authorization",
        "Refer-To",
        "Referred-By",
        "Event",
        "Subscription-State",
        "Allow-Events",
        "Accept",
        "Subject",
        "Session-Expires",
        "Reason",
        "Min-Expires",
        "Warning",
        "Retry-After",
    )
}
# Headers whose values may be comma-joined lists (RFC 3261 §7.3.1); authentication headers are not.
_LIST_HEADERS = frozenset(
    {"Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require", "Accept", "Allow-Events"}
)
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9]{2}) ?(.*)$")
REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
}


class SipParseError(ValueError):
    """Bytes that are not a SIP message we can read; the message says what is wrong."""


def canonical(name: str) -> str:
    low = name.lower()
    if low in COMPACT:
        return COMPACT[low]
    return _CANONICAL.get(low, name)


@dataclass(slots=True)
class SipMessage:
    """A request (``method`` and ``uri`` set) or a response (``status`` set)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        want = canonical(name)
        for key, value in self.headers:
            if key == want:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, list headers split at top-level commas."""
        want = canonical(name)
        out: list[str] = []
        for key, value in self.headers:
            if key == want:
                out += split_list(value) if want in _LIST_HEADERS else [value]
        return out

    def set(self, name: str, value: str) -> None:
        want = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != want]
        self.headers.append((want, value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical(name), value))

    def remove(self, name: str) -> None:
        want = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != want]

    # -- the headers every transaction needs

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None or not value.strip():
            raise SipParseError(f"missing {name} header")
        return value.strip()

    @property
    def call_id(self) -> str:
        return self.require("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        parts = self.require("CSeq").split()
        number_ok = len(parts) == 2 and parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 10
        if not number_ok or not _TOKEN.match(parts[1]):
            raise SipParseError(f"bad CSeq {self.get('CSeq')!r}")
        return int(parts[0]), parts[1].upper()

    @property
    def top_via(self) -> Via:
        vias = self.get_all("Via")
        if not vias:
            raise SipParseError("missing Via header")
        return parse_via(vias[0])

    @property
    def from_addr(self) -> NameAddr:
        return parse_name_addr(self.require("From"))

    @property
    def to_addr(self) -> NameAddr:
        return parse_name_addr(self.require("To"))

    def check_request(self) -> None:
        """The headers RFC 3261 §8.1.1 makes mandatory, readable (raises SipParseError)."""
        _ = (self.call_id, self.cseq, self.top_via, self.from_addr, self.to_addr)
        if self.is_request and self.cseq[1] != self.method and self.method != "ACK":
            raise SipParseError(f"CSeq method {self.cseq[1]} does not match {self.method}")

    def to_bytes(self) -> bytes:
        if self.is_request:
            first = f"{self.method} {self.uri} {SIP_VERSION}"
        else:
            first = f"{SIP_VERSION} {self.status} {self.reason or REASONS.get(self.status or 0, '')}"
        lines = [first]
        lines += [f"{k}: {v}" for k, v in self.headers if k != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __str__(self) -> str:  # for logs: the first line only
        if self.is_request:
            return f"{self.method} {self.uri}"
        return f"{self.status} {self.reason}"


# --------------------------------------------------------------------------- parsing


def parse(data: bytes) -> SipMessage:
    """One whole SIP message (a UDP datagram). Raises :class:`SipParseError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError(f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")  # RFC 3261 §7.5: accept bare LF too
        if not sep:
            raise SipParseError("no blank line after the headers")
    msg = _parse_head(head)
    length = msg.get("Content-Length")
    if length is not None:
        n = _content_length(length)
        if n > len(body):
            raise SipParseError(f"Content-Length {n} but only {len(body)} body bytes")
        body = body[:n]
    msg.body = body
    return msg


def _content_length(value: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 6:  # "²".isdigit() but int("²") fails
        raise SipParseError(f"bad Content-Length {value!r}")
    return int(value)


def _parse_head(head: bytes) -> SipMessage:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"headers are not UTF-8: {exc.reason}") from None
    lines = text.replace("\r\n", "\n").split("\n")
    first = 0
    while first < len(lines) and not lines[first].strip():  # keep-alive CRLFs before a message
        first += 1  # (not lines.pop(0): quadratic on a datagram of blank lines)
    if first == len(lines):
        raise SipParseError("empty message")
    msg = _start_line(lines[first].strip())
    # unfold continuation lines (RFC 3261 §7.3.1); parts joined once, as += would be quadratic
    unfolded: list[list[str]] = []
    for line in lines[first + 1 :]:
        if line[:1] in (" ", "\t"):
            if not unfolded:
                raise SipParseError("continuation line before any header")
            unfolded[-1].append(line.strip())
        elif line.strip():
            unfolded.append([line])
    if len(unfolded) > MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} headers")
    for parts in unfolded:
        line = " ".join(parts)
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not _TOKEN.match(name):
            raise SipParseError(f"bad header line {line[:60]!r}")
        msg.headers.append((canonical(name), value.strip()))
    return msg


def _start_line(line: str) -> SipMessage:
    if line.startswith("SIP/"):
        m = _STATUS_LINE.match(line)
        if not m:
            raise SipParseError(f"bad status line {line[:60]!r}")
        return SipMessage(status=int(m.group(1)), reason=m.group(2))
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != SIP_VERSION:
        raise SipParseError(f"bad request line {line[:60]!r}")
    method, uri = parts[0], parts[1]
    if not _TOKEN.match(method) or not uri or ":" not in uri:
        raise SipParseError(f"bad request line {line[:60]!r}")
    return SipMessage(method=method.upper(), uri=uri)


class StreamParser:
    """Cuts SIP messages out of a TCP byte stream (``Content-Length`` is mandatory there)."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        # Work done on earlier reads is kept, so a message trickling in byte by byte costs linear
        # time: how far the blank line was searched for, and a parsed head waiting for its body.
        self._searched = 0
        self._head: tuple[SipMessage, int, int] | None = None  # (message, body start, total size)

    def feed(self, data: bytes) -> list[SipMessage]:
        self._buf += data
        out: list[SipMessage] = []
        while True:
            if self._head is None:
                while self._buf[:2] == b"\r\n":  # keep-alive pings (RFC 5626 §3.5.1)
                    del self._buf[:2]
                    self._searched = 0
                end = self._buf.find(b"\r\n\r\n", self._searched)
                if end < 0:
                    if len(self._buf) > self._max:
                        raise SipParseError("headers longer than the message limit")
                    self._searched = max(0, len(self._buf) - 3)  # the blank line may straddle reads
                    return out
                msg = _parse_head(bytes(self._buf[:end]))
                length = msg.get("Content-Length")
                if length is None:
                    raise SipParseError("no Content-Length on a stream transport")
                n = _content_length(length)
                total = end + 4 + n
                if total > self._max:
                    raise SipParseError(f"message of {total} bytes is over {self._max}")
                self._head = (msg, end + 4, total)
            msg, body_start, total = self._head
            if len(self._buf) < total:
                return out
            msg.body = bytes(self._buf[body_start:total])
            del self._buf[:total]
            self._head, self._searched = None, 0
            out.append(msg)


# --------------------------------------------------------------------------- header values


def split_list(value: str) -> list[str]:
    """Split at commas outside quotes and angle brackets."""
    out, cur, quoted, angle, escaped = [], [], False, False, False
    for ch in value:
        if escaped:
            cur.append(ch)
            escaped = False
            continue
        if ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        elif ch == "," and not quoted and not angle:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [v for v in out if v]


def parse_params(text: str) -> dict[str, str]:
    """``;a=1;b;c="x"`` -> {"a": "1", "b": "", "c": "x"} (names lower-cased)."""
    params: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return params


def format_params(params: dict[str, str]) -> str:
    return "".join(f";{k}={v}" if v else f";{k}" for k, v in params.items())


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {host_port(self.host, self.port)}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    proto, _, rest = value.strip().partition(" ")
    bits = proto.split("/")
    if len(bits) != 3 or bits[0].upper() != "SIP":
        raise SipParseError(f"bad Via {value[:60]!r}")
    sent_by, _, params = rest.strip().partition(";")
    host, port = split_host_port(sent_by.strip())
    return Via(bits[2].upper(), host, port, parse_params(params))


def host_port(host: str, port: int | None = None) -> str:
    """``host:port`` as SIP writes it: an IPv6 address in brackets (RFC 3261 §25.1, ``[::1]:5060``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def split_host_port(text: str) -> tuple[str, int | None]:
    if not text:
        raise SipParseError("empty host")
    if text.startswith("["):  # IPv6 reference
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise SipParseError(f"empty host in {text[:60]!r}")
    if port_text:
        digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        if not digits or not 0 < int(port_text) < 65536:
            raise SipParseError(f"bad port in {text[:60]!r}")
        return host, int(port_text)
    return host, None


@dataclass(slots=True)
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}:{user}{host_port(self.host, self.port)}{format_params(self.params)}"


def parse_uri(text: str) -> SipUri:
    scheme, colon, rest = text.strip().partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise SipParseError(f"not a sip: URI {text[:60]!r}")
    rest, _, _headers = rest.partition("?")
    hostpart, _, params = rest.partition(";")
    user = None
    if "@" in hostpart:
        user, _, hostpart = hostpart.rpartition("@")
    host, port = split_host_port(hostpart)
    return SipUri(scheme.lower(), user or None, host, port, parse_params(params))


@dataclass(slots=True)
class NameAddr:
    display: str
    uri: str
    params: dict[str, str]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(value: str) -> NameAddr:
    """``"Alice" <sip:a@h>;tag=1`` or ``sip:a@h;tag=1`` (then params after the URI are header params)."""
    value = value.strip()
    if "<" in value:
        display, _, rest = value.partition("<")
        uri, close, params = rest.partition(">")
        if not close or not uri.strip():
            raise SipParseError(f"bad name-addr {value[:60]!r}")
        return NameAddr(display.strip().strip('"'), uri.strip(), parse_params(params))
    uri, _, params = value.partition(";")
    if ":" not in uri:
        raise SipParseError(f"bad addr-spec {value[:60]!r}")
    return NameAddr("", uri.strip(), parse_params(params))


# --------------------------------------------------------------------------- building


def new_branch() -> str:
    return BRANCH_MAGIC + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


def request(method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b"") -> SipMessage:
    return SipMessage(method=method, uri=uri, headers=[(canonical(k), v) for k, v in headers], body=body)


def response(
    req: SipMessage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    body: bytes = b"",
) -> SipMessage:
    """A response to ``req`` (RFC 3261 §8.2.6): Via, From, Call-ID, CSeq copied; To gets our tag."""
    copied = [(k, v) for k, v in req.headers if k in ("Via", "From", "Call-ID", "CSeq")]
    if status != 100:
        copied += [(k, v) for k, v in req.headers if k == "Record-Route"]
    to = req.get("To") or ""
    if to_tag and status != 100 and "tag=" not in to:
        to = f"{to};tag={to_tag}"
    msg = SipMessage(status=status, reason=reason or REASONS.get(status, ""), body=body)
    msg.headers = copied + [("To", to)] + [(canonical(k), v) for k, v in headers]
    return msg
