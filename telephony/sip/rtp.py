"""RTP for one G.711 call (RFC 3550, RFC 3551, RFC 4733), sans-I/O.

- :func:`parse_packet` / :func:`build_packet`: the 12-byte header (CSRCs, extension and padding read).
- :class:`DtmfReceiver`: RFC 4733 telephone-events -> digits, once per event (the end packet is
  sent three times; the event's RTP timestamp tells repeats apart).
- :class:`JitterBuffer`: in-order audio out of packets that arrive reordered or not at all;
  a lost packet is concealed by repeating the previous one once, then by silence. It is driven by
  arrivals, so it can never drift from the sender's clock: as much audio out as was sent. A
  packet's duration is its payload's (G.711: one byte a sample), so 10-60 ms packets all work;
  the link re-frames what comes out to 20 ms (``voxroute.audio.InboundFramer``).
- :class:`RtpSender`: sequence numbers and timestamps of the paced outbound stream.
- :class:`Playout`: what the paced sender plays each 20 ms, with marks that echo when the audio
  queued before them has been sent (the RTP meaning of "played") and ``clear`` for barge-in.
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from dataclasses import dataclass

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
SAMPLES_PER_FRAME = 160  # 20 ms at 8 kHz
PCM_FRAME_BYTES = 320
DTMF_EVENTS = "0123456789*#ABCD"
SILENCE = {"PCMU": 0xFF, "PCMA": 0xD5}


class RtpError(ValueError):
    """Bytes that are not an RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False


def parse_packet(data: bytes) -> RtpPacket:
    if len(data) < 12:
        raise RtpError(f"{len(data)} bytes is shorter than an RTP header")
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}")
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < offset + 4:
            raise RtpError("truncated header extension")
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0 or pad > end - offset:
            raise RtpError("bad padding")
        end -= pad
    if offset > end:
        raise RtpError("header longer than the packet")
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, data[offset:end], bool(b1 & 0x80))


def build_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return HEADER.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


# --------------------------------------------------------------------------- DTMF (RFC 4733)


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return DTMF_EVENTS[self.event] if self.event < len(DTMF_EVENTS) else None


def parse_dtmf(payload: bytes) -> DtmfEvent:
    if len(payload) < 4:
        raise RtpError("telephone-event payload shorter than 4 bytes")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return DtmfEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


def build_dtmf(digit: str, end: bool, duration: int, volume: int = 10) -> bytes:
    return struct.pack("!BBH", DTMF_EVENTS.index(digit.upper()), (0x80 if end else 0) | volume, duration)


def dtmf_packets(digit: str, duration_ms: int = 100) -> list[tuple[bytes, bool]]:
    """Payloads of one keypress, one per 20 ms and three end packets: [(payload, marker)]."""
    steps = max(1, duration_ms // 20)
    out = [(build_dtmf(digit, False, SAMPLES_PER_FRAME * (i + 1)), i == 0) for i in range(steps)]
    out += [(build_dtmf(digit, True, SAMPLES_PER_FRAME * steps), False)] * 3
    return out


class DtmfReceiver:
    """Reports each keypress once, on its first end packet (repeats share the RTP timestamp)."""

    def __init__(self) -> None:
        self._done: deque[int] = deque(maxlen=8)

    def feed(self, packet: RtpPacket) -> str | None:
        event = parse_dtmf(packet.payload)
        if not event.end or packet.timestamp in self._done or event.digit is None:
            return None
        self._done.append(packet.timestamp)
        return event.digit


# --------------------------------------------------------------------------- jitter buffer


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes  # G.711, one byte a sample: as long as the packet (or the gap) it stands for
    kind: str  # "audio", "repeat" (concealed with the previous packet), "silence"


class JitterBuffer:
    """Reorders within ``depth`` packets; a gap nothing fills after that is concealed.

    ``push(packet)`` returns the frames now ready, in order. A sequence gap means lost packets:
    the first is replaced by a repeat of the last packet, the rest by silence (repeating longer
    sounds like a stuck record). Time is counted in samples from each payload's length, not in
    assumed 20 ms frames: a timestamp beyond where the last packet ended (the sender paused,
    or concealment fell short) becomes that much silence, up to ``max_gap`` 20 ms frames; a
    bigger jump resynchronises.
    """

    def __init__(self, codec: str = "PCMU", depth: int = 3, max_gap: int = 50) -> None:
        self.depth = depth
        self.max_gap = max_gap
        self._silence_byte = bytes([SILENCE.get(codec, 0xFF)])
        self._silence = self._silence_byte * SAMPLES_PER_FRAME
        self._held: dict[int, RtpPacket | None] = {}  # extended sequence -> packet (None: a non-audio packet)
        self._next: int | None = None  # extended sequence of the next frame out
        self._end_ts: int | None = None  # RTP timestamp just after the last audio out
        self._last_payload = self._silence
        self._in_gap = False
        self._max_ext = -1
        self.lost = 0
        self.late = 0
        self.concealed = 0

    def _extend(self, seq: int) -> int:
        if self._max_ext < 0:
            self._max_ext = seq
            return seq
        ref = self._max_ext
        ext = (ref & ~0xFFFF) | seq
        if ext < ref - 0x8000:
            ext += 0x10000
        elif ext > ref + 0x8000:
            ext -= 0x10000
        self._max_ext = max(self._max_ext, ext)
        return ext

    def push(self, packet: RtpPacket) -> list[Frame]:
        ext = self._extend(packet.sequence)
        if self._next is None:
            self._next = ext
        if self._next - ext > self.max_gap:  # far behind: the sender restarted its numbering
            self._held.clear()
            self._next, self._end_ts = ext, None
        if ext < self._next or ext in self._held:
            self.late += 1
            return []
        if ext - self._next > self.max_gap:  # the sender jumped ahead: start again there
            self._held = {k: v for k, v in self._held.items() if k >= ext}
            self._next, self._end_ts = ext, None
        self._held[ext] = packet
        return self._drain()

    def skip(self, packet: RtpPacket) -> list[Frame]:
        """A packet of the same stream that carries no audio frame (a DTMF event shares the
        sequence space): its number is used, not lost."""
        ext = self._extend(packet.sequence)
        if self._next is None or ext < self._next or ext - self._next > self.max_gap:
            return []
        self._held[ext] = None
        return self._drain()

    def _drain(self) -> list[Frame]:
        out: list[Frame] = []
        while self._held:
            if self._next in self._held:
                packet = self._held.pop(self._next)
                if packet is None:
                    self._next += 1
                    continue
                self._emit(packet, out)
            elif len(self._held) > self.depth or max(self._held) - (self._next or 0) >= self.depth:
                self._conceal(out)  # waited long enough: the packet is lost
            else:
                break
        return out

    def _emit(self, packet: RtpPacket, out: list[Frame]) -> None:
        if self._end_ts is not None:
            gap = (packet.timestamp - self._end_ts) & 0xFFFFFFFF  # samples; "negative" is huge
            if 0 < gap <= self.max_gap * SAMPLES_PER_FRAME:  # the sender skipped time (silence suppression)
                out.append(Frame(self._silence_byte * gap, "silence"))
        self._end_ts = (packet.timestamp + len(packet.payload)) & 0xFFFFFFFF
        self._last_payload = packet.payload
        self._in_gap = False
        self._next = (self._next or 0) + 1
        out.append(Frame(packet.payload, "audio"))

    def _conceal(self, out: list[Frame]) -> None:
        self.lost += 1
        self.concealed += 1
        # a lost packet probably lasted as long as the last one (ptime does not change mid-call)
        if not self._in_gap:
            self._in_gap = True
            out.append(Frame(self._last_payload, "repeat"))
        else:
            out.append(Frame(self._silence_byte * len(self._last_payload), "silence"))
        if self._end_ts is not None:
            self._end_ts = (self._end_ts + len(self._last_payload)) & 0xFFFFFFFF
        self._next = (self._next or 0) + 1


# --------------------------------------------------------------------------- sending


class RtpSender:
    """Counters for one outbound stream: random initial sequence, timestamp and SSRC (RFC 3550 §5.1)."""

    def __init__(self, payload_type: int, dtmf_pt: int | None = None, ssrc: int | None = None) -> None:
        self.payload_type = payload_type
        self.dtmf_pt = dtmf_pt
        self.ssrc = ssrc if ssrc is not None else secrets.randbits(32)
        self.sequence = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self._first = True
        self.sent = 0

    def audio(self, payload: bytes) -> bytes:
        """The next 20 ms packet; timestamps advance by the samples sent."""
        data = build_packet(self.payload_type, self.sequence, self.timestamp, self.ssrc, payload, self._first)
        self._first = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(payload)) & 0xFFFFFFFF
        self.sent += 1
        return data

    def dtmf(self, digit: str, duration_ms: int = 100) -> list[bytes]:
        """One keypress (RFC 4733 §2.5): every packet carries the event's start timestamp.

        The timestamp does not advance: the caller keeps sending audio (silence) frames, which
        keep the media clock."""
        if self.dtmf_pt is None:
            raise RtpError("telephone-event was not negotiated")
        out = []
        for payload, marker in dtmf_packets(digit, duration_ms):
            out.append(build_packet(self.dtmf_pt, self.sequence, self.timestamp, self.ssrc, payload, marker))
            self.sequence = (self.sequence + 1) & 0xFFFF
        return out


class Playout:
    """The outbound queue of one call: audio in the link's wire format in any size, one 20 ms frame
    (``frame_bytes``: 320 of PCM16 8 kHz, 160 of G.711) out per tick, a short last one padded with
    ``silence`` (the format's silent byte: 0xFF in mu-law, 0xD5 in A-law, 0 in PCM).

    Marks sit at byte positions in the queue; ``next_frame`` returns the marks whose audio has
    now all been sent. With nothing queued, a mark echoes at once; ``clear`` drops the queue and
    echoes every pending mark (the Twilio semantics the session expects).
    """

    def __init__(self, frame_bytes: int = PCM_FRAME_BYTES, silence: int = 0) -> None:
        self.frame_bytes = frame_bytes
        self._silence = bytes([silence])
        self._buf = bytearray()
        self._start = 0  # absolute position of _buf[0]
        self._marks: deque[tuple[int, str]] = deque()

    @property
    def queued_bytes(self) -> int:
        return len(self._buf)

    def push(self, pcm: bytes) -> None:
        self._buf += pcm

    def mark(self, name: str) -> list[str]:
        if not self._buf and not self._marks:
            return [name]
        self._marks.append((self._start + len(self._buf), name))
        return []

    def clear(self) -> list[str]:
        self._start += len(self._buf)
        self._buf.clear()
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def next_frame(self) -> tuple[bytes | None, list[str]]:
        """(one frame of ``frame_bytes``, or None when idle; marks now played)."""
        frame = None
        if self._buf:
            size = self.frame_bytes
            frame = bytes(self._buf[:size])
            del self._buf[:size]
            self._start += len(frame)
            if len(frame) < size:
                frame += self._silence * (size - len(frame))
        echoed = []
        while self._marks and self._marks[0][0] <= self._start:
            echoed.append(self._marks.popleft()[1])
        return frame, echoed
