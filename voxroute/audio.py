"""G.711 (mu-law, A-law) and a steady streaming resampler, numpy only.

G.711 uses lookup tables (65,536 entries to encode, 256 to decode) that are bit-exact with
CPython's ``audioop`` (removed in 3.13): a 20 ms frame encodes with one numpy fancy-index and
decodes with two ``bytes.translate`` calls.

:class:`StreamResampler` is a rational polyphase FIR with carried state. Unlike soxr's
streaming modes it never holds audio back: every input chunk yields exactly
``len * rate_out / rate_in`` samples (one 20 ms frame in, one 20 ms frame out), and
chunked output is identical to one-shot output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES * 2  # 320 bytes of PCM16 per 20 ms at 8 kHz
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5
SUPPORTED_RATES = (8000, 16000, 22050, 24000)


def _int16_domain() -> np.ndarray:
    """Every int16 value, indexed by its bit pattern read as uint16."""
    s = np.arange(65536, dtype=np.int32)
    return np.where(s >= 32768, s - 65536, s)


def _segment(mag: np.ndarray, bounds: tuple[int, ...]) -> np.ndarray:
    """How many of ``bounds`` each magnitude exceeds."""
    seg = np.zeros(mag.shape, dtype=np.int32)
    for b in bounds:
        seg += mag > b
    return seg


def _ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    s = _int16_domain() >> 2  # 14 bits
    neg = s < 0
    mag = np.minimum(np.where(neg, -s, s), 8159) + 33
    seg = _segment(mag, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    enc = np.where(neg, code ^ 0x7F, code ^ 0xFF).astype(np.uint8)
    u = np.arange(256, dtype=np.int32) ^ 0xFF
    m = ((((u & 0x0F) << 3) | 0x84) << ((u >> 4) & 7)) - 0x84
    dec = np.where(u & 0x80, -m, m).astype("<i2")
    return enc, dec


def _alaw_tables() -> tuple[np.ndarray, np.ndarray]:
    s = _int16_domain() >> 3  # 13 bits
    neg = s < 0
    mag = np.where(neg, -s - 1, s)  # a 13-bit magnitude never overflows segment 7
    seg = _segment(mag, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF))
    code = np.where(seg < 2, (seg << 4) | ((mag >> 1) & 0x0F), (seg << 4) | ((mag >> seg) & 0x0F))
    enc = np.where(neg, code ^ 0x55, code ^ 0xD5).astype(np.uint8)
    a = np.arange(256, dtype=np.int32) ^ 0x55
    mant = (a & 0x0F) << 4
    exp = (a >> 4) & 7
    m = np.where(exp == 0, mant + 8, (mant + 0x108) << np.maximum(exp - 1, 0))
    dec = np.where(a & 0x80, m, -m).astype("<i2")
    return enc, dec


ULAW_ENC, ULAW_DEC = _ulaw_tables()
ALAW_ENC, ALAW_DEC = _alaw_tables()


def _byte_tables(dec: np.ndarray) -> tuple[bytes, bytes]:
    """A 256-entry decode table as two ``bytes.translate`` tables: the low and the high byte of each
    PCM16 sample."""
    raw = dec.astype("<i2").tobytes()
    return raw[0::2], raw[1::2]


# A short block (a packet or a few frames) decodes with bytes.translate into the even and the odd
# bytes of the output: for a 20 ms frame about 40 % less time than a numpy fancy-index (no array
# objects); from ~100 ms of audio up numpy is faster. Both are bit-exact with the tables.
_ULAW_LO, _ULAW_HI = _byte_tables(ULAW_DEC)
_ALAW_LO, _ALAW_HI = _byte_tables(ALAW_DEC)
TRANSLATE_MAX = 800  # bytes: up to here bytes.translate, above it numpy (measured, 8-16000 bytes)


def _decode(data: bytes, dec: np.ndarray, lo: bytes, hi: bytes) -> bytes:
    if len(data) > TRANSLATE_MAX or not isinstance(data, bytes | bytearray):
        return dec[np.frombuffer(data, np.uint8)].tobytes()
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(lo)
    out[1::2] = data.translate(hi)
    return bytes(out)


def _check_pcm(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """PCM16 little-endian -> G.711 mu-law, one byte per sample."""
    _check_pcm(pcm)
    return ULAW_ENC[np.frombuffer(pcm, "<u2")].tobytes()


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    return _decode(ulaw, ULAW_DEC, _ULAW_LO, _ULAW_HI)


def pcm16_to_alaw(pcm: bytes) -> bytes:
    """PCM16 little-endian -> G.711 A-law, one byte per sample."""
    _check_pcm(pcm)
    return ALAW_ENC[np.frombuffer(pcm, "<u2")].tobytes()


def alaw_to_pcm16(alaw: bytes) -> bytes:
    return _decode(alaw, ALAW_DEC, _ALAW_LO, _ALAW_HI)


def silence_pcm(ms: int, rate: int = SAMPLE_RATE) -> bytes:
    """``ms`` milliseconds of PCM16 silence at ``rate``."""
    return bytes(2 * (rate * ms // 1000))


def frames(pcm: bytes, frame_bytes: int = FRAME_BYTES, *, pad: bool = True) -> Iterator[bytes]:
    """Cut ``pcm`` into ``frame_bytes`` pieces; the last one is padded with silence (or dropped)."""
    if frame_bytes <= 0:
        raise ValueError("frame_bytes must be positive")
    for i in range(0, len(pcm), frame_bytes):
        chunk = pcm[i : i + frame_bytes]
        if len(chunk) < frame_bytes:
            if not pad:
                return
            chunk += bytes(frame_bytes - len(chunk))
        yield chunk


def _kaiser_lowpass(numtaps: int, cutoff: float, beta: float) -> np.ndarray:
    """Windowed-sinc low-pass, ``cutoff`` relative to Nyquist, unity DC gain.

    The same taps as ``scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta))``.
    """
    m = np.arange(numtaps) - (numtaps - 1) / 2.0
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    return h / h.sum()


@lru_cache(maxsize=32)
def _polyphase_bank(up: int, down: int, taps_per_phase: int, beta: float) -> np.ndarray:
    n = taps_per_phase * max(up, down)
    n += (-n) % up
    h = _kaiser_lowpass(n, 0.9 / max(up, down), beta) * up
    poly = h.reshape(n // up, up).T.copy()  # poly[p, k] = h[p + k * up]
    poly.setflags(write=False)  # shared by every resampler with this ratio
    return poly


class StreamResampler:
    """Stateful rational resampler for PCM16 mono: ``process(chunk) -> chunk``.

    Output sample ``j`` sits at ``j * down`` on the upsampled grid; it is emitted as soon as its
    newest input sample exists, so ``n`` samples in always gives ``ceil`` of the exact
    proportion in total, and 20 ms in gives 20 ms out. Group delay is about 1.5 ms.
    Make one per direction per call; make a new one after a gap (stale history would leak in).
    """

    def __init__(self, rate_in: int, rate_out: int, *, taps_per_phase: int = 24, beta: float = 8.0):
        for rate in (rate_in, rate_out):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"unsupported sample rate {rate}; supported: {SUPPORTED_RATES}")
        self.rate_in = rate_in
        self.rate_out = rate_out
        g = math.gcd(rate_in, rate_out)
        self._up = rate_out // g
        self._down = rate_in // g
        self._passthrough = rate_in == rate_out
        self._poly = _polyphase_bank(self._up, self._down, taps_per_phase, beta)
        self._k = self._poly.shape[1]
        self._taps = np.arange(self._k)
        self._hist = np.zeros(self._k - 1)
        self._n_in = 0
        self._n_out = 0

    def process(self, pcm: bytes) -> bytes:
        _check_pcm(pcm)
        if self._passthrough:
            return bytes(pcm)
        x = np.frombuffer(pcm, "<i2").astype(np.float64)
        buf = np.concatenate([self._hist, x])
        total = self._n_in + len(x)
        end = -(-total * self._up // self._down)  # outputs whose newest input sample exists
        pos = np.arange(self._n_out, end) * self._down
        idx = (pos // self._up - (self._n_in - self._k + 1))[:, None] - self._taps
        y = np.einsum("nk,nk->n", self._poly[pos % self._up], buf[idx])
        self._n_in, self._n_out = total, end
        self._hist = buf[len(buf) - (self._k - 1) :]
        return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


WIRE_ENCODINGS = ("ulaw", "alaw", "l16le")
WIRE_PCM_RATES = (8000, 16000, 24000)


@dataclass(frozen=True, slots=True)
class WireFormat:
    """Agent audio as the carrier wants it on the wire, and as the TTS is asked for it: G.711 mu-law
    (``ulaw``) or A-law (``alaw``) at 8 kHz, or PCM16 little-endian (``l16le``) at 8, 16 or 24 kHz.

    A link names its format (``CarrierLink.audio_format``); the session opens the TTS in it, the
    player paces it by :attr:`bytes_per_ms`, and the link sends the bytes as they came: no decode and
    re-encode between the TTS and the caller."""

    encoding: str
    rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.encoding not in WIRE_ENCODINGS:
            raise ValueError(
                f"unsupported wire encoding {self.encoding!r}: one of {', '.join(WIRE_ENCODINGS)}"
            )
        if self.encoding in ("ulaw", "alaw") and self.rate != SAMPLE_RATE:
            raise ValueError(f"G.711 at {self.rate} Hz: G.711 is 8000 Hz only")
        if self.rate not in WIRE_PCM_RATES:
            raise ValueError(f"unsupported wire rate {self.rate}: one of {WIRE_PCM_RATES}")

    @property
    def sample_bytes(self) -> int:
        return 2 if self.encoding == "l16le" else 1

    @property
    def bytes_per_ms(self) -> int:
        """8 for G.711, 16 for PCM16 at 8 kHz, 32 at 16 kHz, 48 at 24 kHz."""
        return self.rate // 1000 * self.sample_bytes

    def silence(self, ms: int) -> bytes:
        fill = {"ulaw": ULAW_SILENCE, "alaw": ALAW_SILENCE}.get(self.encoding, 0)
        return bytes([fill]) * (ms * self.bytes_per_ms)

    def __str__(self) -> str:
        return f"{self.encoding}/{self.rate}"


MULAW_8K = WireFormat("ulaw")
ALAW_8K = WireFormat("alaw")
PCM16_8K = WireFormat("l16le")


class PcmToWire:
    """PCM16 at ``rate_in`` -> ``fmt``, for a provider that makes PCM (Piper) and for the comfort tone:
    resampled (a streaming resampler: make one per utterance) and G.711-encoded once."""

    def __init__(self, fmt: WireFormat, rate_in: int = SAMPLE_RATE) -> None:
        self.fmt = fmt
        self._resampler = StreamResampler(rate_in, fmt.rate) if rate_in != fmt.rate else None

    def encode(self, pcm: bytes) -> bytes:
        _check_pcm(pcm)
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        if self.fmt.encoding == "ulaw":
            return pcm16_to_ulaw(pcm)
        if self.fmt.encoding == "alaw":
            return pcm16_to_alaw(pcm)
        return bytes(pcm)


class WireToPcm:
    """``fmt`` -> PCM16 8 kHz, for what needs to look at agent audio after the fact (the recorder):
    off the outbound path, which sends the wire bytes as they are. One per call (resampler state)."""

    def __init__(self, fmt: WireFormat) -> None:
        self.fmt = fmt
        self._resampler = StreamResampler(fmt.rate, SAMPLE_RATE) if fmt.rate != SAMPLE_RATE else None

    def decode(self, data: bytes) -> bytes:
        if self.fmt.encoding == "ulaw":
            return ulaw_to_pcm16(data)
        if self.fmt.encoding == "alaw":
            return alaw_to_pcm16(data)
        pcm = data[: len(data) // 2 * 2]
        return self._resampler.process(pcm) if self._resampler is not None else bytes(pcm)

    def reset(self) -> None:
        """After a clear: stale filter history must not leak into the next utterance."""
        if self._resampler is not None:
            self._resampler = StreamResampler(self.fmt.rate, SAMPLE_RATE)


def pcm_to_wire(pcm: bytes, fmt: WireFormat, rate_in: int = SAMPLE_RATE) -> bytes:
    """One whole utterance of PCM16 at ``rate_in`` -> ``fmt``."""
    return PcmToWire(fmt, rate_in).encode(pcm)


class Reframer:
    """Packets of any size -> whole frames of ``frame_bytes``, the remainder kept for the next one.

    Sans-I/O. RTP at 10-60 ms and carrier payloads that are not 20 ms come out as the same
    frames. ``feed`` returns every whole frame now buffered as one block (decode it with one
    numpy call, then slice) and the media time of the first of them: the packet's timestamp
    less what was still buffered from before it. A stray byte that does not complete a sample
    (an odd-length PCM16 payload) is dropped, with a debug line: keeping it would shift every
    later sample by a byte and turn the rest of the call into noise.
    """

    __slots__ = ("frame_bytes", "sample_bytes", "bytes_per_ms", "stray_bytes", "_buf")

    def __init__(self, frame_bytes: int = FRAME_BYTES, sample_bytes: int = 2, bytes_per_ms: int = 16) -> None:
        if frame_bytes <= 0 or frame_bytes % sample_bytes:
            raise ValueError(
                f"frame_bytes {frame_bytes} is not a whole number of {sample_bytes}-byte samples"
            )
        self.frame_bytes = frame_bytes
        self.sample_bytes = sample_bytes
        self.bytes_per_ms = bytes_per_ms
        self.stray_bytes = 0
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that are not yet a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes, timestamp_ms: float | None = None) -> tuple[bytes, int | None]:
        """``(whole frames joined, media time in ms of the first)``; ``b""`` when none is complete."""
        stray = len(data) % self.sample_bytes
        if stray:
            if not self.stray_bytes % 1000:  # the first of a run, then every 1000th: not per packet
                log.debug(
                    "payload of %d bytes is not whole %d-byte samples; stray byte dropped",
                    len(data),
                    self.sample_bytes,
                )
            self.stray_bytes += stray
            data = data[: len(data) - stray]
        if not self._buf and len(data) == self.frame_bytes:  # the usual packet: one whole frame, as is
            return bytes(data), None if timestamp_ms is None else round(timestamp_ms)
        first = None if timestamp_ms is None else round(timestamp_ms - len(self._buf) / self.bytes_per_ms)
        self._buf += data
        whole = len(self._buf) - len(self._buf) % self.frame_bytes
        if not whole:
            return b"", first
        block = bytes(self._buf[:whole])
        del self._buf[:whole]
        return block, first


_SAMPLE_BYTES = {"ulaw": 1, "alaw": 1, "l16le": 2, "l16be": 2}


class InboundFramer:
    """A carrier's audio in its own encoding, rate and packet size -> 20 ms PCM16 8 kHz frames.

    ``push(payload, timestamp_ms)`` returns ``[(pcm, ulaw, timestamp_ms)]``, one per 20 ms frame
    now complete: ``ulaw`` is the carrier's own mu-law bytes of that frame when it sends mu-law
    (else None), ``timestamp_ms`` the frame's media time when the packet had one. Decoding and
    resampling run once per packet on the whole block, not per frame.
    """

    def __init__(self, encoding: str = "ulaw", sample_rate: int = SAMPLE_RATE) -> None:
        if encoding not in _SAMPLE_BYTES:
            raise ValueError(f"unsupported encoding {encoding!r}: one of {', '.join(_SAMPLE_BYTES)}")
        if encoding in ("ulaw", "alaw") and sample_rate != SAMPLE_RATE:
            raise ValueError(f"G.711 at {sample_rate} Hz: G.711 is 8000 Hz only")
        if sample_rate not in SUPPORTED_RATES or sample_rate % 1000:
            raise ValueError(f"unsupported sample rate {sample_rate}")
        self.encoding = encoding
        self.sample_rate = sample_rate
        size = _SAMPLE_BYTES[encoding]
        per_ms = sample_rate // 1000 * size
        self.reframer = Reframer(per_ms * FRAME_MS, size, per_ms)
        self._resampler = StreamResampler(sample_rate, SAMPLE_RATE) if sample_rate != SAMPLE_RATE else None

    def push(
        self, payload: bytes, timestamp_ms: float | None = None
    ) -> list[tuple[bytes, bytes | None, int | None]]:
        block, first = self.reframer.feed(payload, timestamp_ms)
        if not block:
            return []
        n = len(block) // self.reframer.frame_bytes
        if n == 1 and self.encoding == "ulaw":  # the hot path: one 20 ms mu-law frame, no slicing
            return [(ulaw_to_pcm16(block), block, first)]
        if self.encoding == "ulaw":
            pcm = ulaw_to_pcm16(block)
        elif self.encoding == "alaw":
            pcm = alaw_to_pcm16(block)
        elif self.encoding == "l16be":
            pcm = np.frombuffer(block, ">i2").astype("<i2").tobytes()
        else:
            pcm = block
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        if len(pcm) < n * FRAME_BYTES:  # the resampler's ceil rounding never shortens a block; be safe
            pcm += bytes(n * FRAME_BYTES - len(pcm))
        ulaw = block if self.encoding == "ulaw" else None
        return [
            (
                pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES],
                ulaw[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] if ulaw is not None else None,
                None if first is None else first + i * FRAME_MS,
            )
            for i in range(n)
        ]
