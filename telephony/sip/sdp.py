"""SDP offer/answer for one audio stream (RFC 4566, RFC 3264): PCMU, PCMA and telephone-event.

We answer with the first G.711 codec of the offer (the offerer's preference) and with
``telephone-event`` at the offerer's payload type when offered (RFC 4733 DTMF). No other media.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from voxroute.telephony.sip.message import SipParseError

STATIC_CODECS = {0: "PCMU", 8: "PCMA"}  # RFC 3551 static payload types we speak
SUPPORTED = ("PCMU", "PCMA")
DEFAULT_DTMF_PT = 101


def _number(text: str) -> bool:
    """A short run of ASCII digits: ``"²".isdigit()`` is true but ``int("²")`` fails, and CPython
    refuses to convert over 4300 digits."""
    return text.isascii() and text.isdigit() and len(text) <= 10


@dataclass(slots=True)
class MediaDescription:
    address: str  # where to send RTP
    port: int
    payload_types: list[int]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # pt -> (encoding, clock rate)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str = "sendrecv"
    ptime: int | None = None

    def codec_name(self, pt: int) -> str | None:
        if pt in self.rtpmap:
            return self.rtpmap[pt][0].upper()
        return STATIC_CODECS.get(pt)


@dataclass(frozen=True, slots=True)
class Negotiated:
    codec: str  # "PCMU" or "PCMA"
    payload_type: int
    dtmf_pt: int | None
    remote_address: str
    remote_port: int


def parse(body: bytes) -> MediaDescription:
    """The first audio m= line of an SDP body (with the session or media c= line)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("SDP is not UTF-8") from None
    session_addr: str | None = None
    media: MediaDescription | None = None
    in_audio = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if media is not None:
                in_audio = False  # only the first audio stream
                continue
            parts = value.split()
            if len(parts) < 4 or parts[0] != "audio":
                in_audio = False
                continue
            if not _number(parts[1].split("/")[0]) or not parts[2].startswith("RTP/"):
                raise SipParseError(f"bad m= line {value[:60]!r}")
            try:
                pts = [int(p) for p in parts[3:]]
            except ValueError:
                raise SipParseError(f"bad payload types in {value[:60]!r}") from None
            port = int(parts[1].split("/")[0])
            if port > 65535 or any(not 0 <= p < 128 for p in pts):
                raise SipParseError(f"bad m= line {value[:60]!r}")
            media = MediaDescription(session_addr or "", port, pts)
            in_audio = True
        elif kind == "c":
            parts = value.split()
            if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SipParseError(f"bad c= line {value[:60]!r}")
            addr = parts[2].split("/")[0]
            if media is None:
                session_addr = addr
            elif in_audio:
                media.address = addr
        elif kind == "a" and media is not None and in_audio:
            name, _, rest = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                media.direction = name
            elif name == "ptime" and _number(rest.strip()):
                media.ptime = int(rest.strip())
            elif name in ("rtpmap", "fmtp"):
                pt_text, _, spec = rest.partition(" ")
                if not _number(pt_text):
                    continue
                pt = int(pt_text)
                if name == "fmtp":
                    media.fmtp[pt] = spec.strip()
                    continue
                enc = spec.strip().split("/")
                if len(enc) >= 2 and _number(enc[1]):
                    media.rtpmap[pt] = (enc[0], int(enc[1]))
    if media is None:
        raise SipParseError("no audio m= line in the SDP")
    if not media.address:
        raise SipParseError("no c= address for the audio stream")
    return media


def negotiate(offer: MediaDescription, prefer: tuple[str, ...] = SUPPORTED) -> Negotiated:
    """Pick the codec (offerer's order, among ``prefer``) and DTMF payload type; SipParseError if none."""
    codec_pt = None
    for pt in offer.payload_types:
        name = offer.codec_name(pt)
        rate = offer.rtpmap.get(pt, (None, 8000))[1]
        if name in prefer and rate == 8000:
            codec_pt = pt
            break
    if codec_pt is None:
        raise SipParseError("no common codec (we speak PCMU and PCMA at 8 kHz)")
    dtmf_pt = None
    for pt in offer.payload_types:
        enc = offer.rtpmap.get(pt)
        if enc and enc[0].lower() == "telephone-event" and enc[1] == 8000:
            dtmf_pt = pt
            break
    return Negotiated(offer.codec_name(codec_pt) or "PCMU", codec_pt, dtmf_pt, offer.address, offer.port)


def build(
    address: str,
    port: int,
    codecs: list[tuple[int, str]],
    dtmf_pt: int | None = DEFAULT_DTMF_PT,
    *,
    session_id: int | None = None,
    direction: str = "sendrecv",
) -> bytes:
    """An SDP body for one audio stream: ``codecs`` is [(payload type, "PCMU"), ...]."""
    sid = session_id if session_id is not None else secrets.randbelow(1 << 31)
    address = address.strip("[]")  # SDP writes an IPv6 address bare: "c=IN IP6 ::1"
    ip = "IP6" if ":" in address else "IP4"
    pts = [pt for pt, _ in codecs] + ([dtmf_pt] if dtmf_pt is not None else [])
    lines = [
        "v=0",
        f"o=voxroute {sid} {sid} IN {ip} {address}",
        "s=voxroute",
        f"c=IN {ip} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(p) for p in pts)}",
    ]
    lines += [f"a=rtpmap:{pt} {name}/8000" for pt, name in codecs]
    if dtmf_pt is not None:
        lines += [f"a=rtpmap:{dtmf_pt} telephone-event/8000", f"a=fmtp:{dtmf_pt} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def answer(offer: MediaDescription, address: str, port: int) -> tuple[bytes, Negotiated]:
    """Our answer to ``offer`` and what it agreed (raises SipParseError when nothing fits)."""
    agreed = negotiate(offer)
    direction = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}.get(
        offer.direction, "sendrecv"
    )
    body = build(address, port, [(agreed.payload_type, agreed.codec)], agreed.dtmf_pt, direction=direction)
    return body, agreed


def offer(address: str, port: int) -> bytes:
    return build(address, port, [(0, "PCMU"), (8, "PCMA")], DEFAULT_DTMF_PT)
