"""G.711 tables against stdlib audioop (exhaustive) and the streaming resampler's guarantees."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from voxroute.audio import (
    FRAME_BYTES,
    SUPPORTED_RATES,
    StreamResampler,
    alaw_to_pcm16,
    frames,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    silence_pcm,
    ulaw_to_pcm16,
)

ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))
PAIRS = [(a, b) for a, b in itertools.permutations(SUPPORTED_RATES, 2)]


@pytest.fixture(scope="module")
def audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop as mod  # deprecated in 3.11, gone in 3.13: the reference only
    return mod


def test_ulaw_encode_every_int16_value(audioop):
    assert pcm16_to_ulaw(ALL_PCM) == audioop.lin2ulaw(ALL_PCM, 2)


def test_ulaw_decode_every_code(audioop):
    assert ulaw_to_pcm16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_encode_every_int16_value(audioop):
    assert pcm16_to_alaw(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)


def test_alaw_decode_every_code(audioop):
    assert alaw_to_pcm16(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_silence_codes_and_helpers():
    assert pcm16_to_ulaw(silence_pcm(20)) == b"\xff" * 160
    assert pcm16_to_alaw(silence_pcm(20)) == b"\xd5" * 160
    assert len(silence_pcm(20, 24000)) == 960
    assert list(frames(b"\x01" * 700)) == [b"\x01" * 320, b"\x01" * 320, b"\x01" * 60 + bytes(260)]
    assert list(frames(b"\x01" * 700, pad=False)) == [b"\x01" * 320] * 2
    assert FRAME_BYTES == 320


def test_odd_pcm_length_is_an_error():
    with pytest.raises(ValueError):
        pcm16_to_ulaw(b"\x00\x00\x00")
    with pytest.raises(ValueError):
        StreamResampler(8000, 16000).process(b"\x00")


def test_unsupported_rate():
    with pytest.raises(ValueError):
        StreamResampler(44100, 8000)


def _tone(rate: int, freq: float, seconds: float, amp: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _chunks(pcm: bytes, rate: int, ms: int = 20) -> list[bytes]:
    n = 2 * rate * ms // 1000
    return [pcm[i : i + n] for i in range(0, len(pcm), n)]


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_20ms_in_gives_exactly_20ms_out(rate_in, rate_out):
    r = StreamResampler(rate_in, rate_out)
    out_bytes = 2 * rate_out // 50
    for chunk in _chunks(_tone(rate_in, 440, 1.0), rate_in):
        assert len(r.process(chunk)) == out_bytes


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_chunked_output_identical_to_one_shot(rate_in, rate_out):
    pcm = _tone(rate_in, 700, 0.5) + _tone(rate_in, 2500, 0.3)
    whole = StreamResampler(rate_in, rate_out).process(pcm)
    rng = np.random.default_rng(7)
    r = StreamResampler(rate_in, rate_out)
    pieces, i = [], 0
    while i < len(pcm):
        n = 2 * int(rng.integers(0, 400))  # includes empty and tiny chunks
        pieces.append(r.process(pcm[i : i + n]))
        i += n
    assert b"".join(pieces) == whole


def _rms(pcm: bytes, skip: int) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)[skip:]
    return float(np.sqrt(np.mean(x * x)))


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_passband_tone_keeps_its_level(rate_in, rate_out):
    pcm = _tone(rate_in, 1000, 0.5)
    r = StreamResampler(rate_in, rate_out)
    out = b"".join(r.process(c) for c in _chunks(pcm, rate_in))
    skip = rate_out // 50  # past the filter's start-up transient
    gain_db = 20 * np.log10(_rms(out, skip) / _rms(pcm, rate_in // 50))
    assert abs(gain_db) < 0.5


def test_alias_rejection_24k_to_8k():
    pcm = _tone(24000, 5000, 0.5)  # above the 4 kHz Nyquist of the output: would alias to 3 kHz
    r = StreamResampler(24000, 8000)
    out = b"".join(r.process(c) for c in _chunks(pcm, 24000))
    level_db = 20 * np.log10(max(_rms(out, 160), 1e-9) / _rms(pcm, 480))
    assert level_db < -60


def test_passthrough_when_rates_match():
    pcm = _tone(8000, 1000, 0.1)
    # same rate is allowed and exact (a TTS voice may already be at 8 kHz)
    assert StreamResampler(8000, 8000).process(pcm) == pcm
